"""The ``propagate`` job: keyframe edits made elsewhere (an image editor, another model) carried to
every frame of the clip. EbSynth's job, for faces.

Stages: read and check the keyframes (nothing is built or written before they pass), track the face
as ``edit`` does, then keyframe interval by keyframe interval: the frames between two keyframes are
cut to one window around the face (frame coordinates: no resampling), the propagator carries the
keyframes' edit into it, and the result is blended into the frame through the face region (the
region ``edit`` edits: the face processor's crop, feathered). The rest of the frame is the source,
byte for byte; keyframes are written as given. Memory holds one keyframe interval at a time.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ipfacediff.errors import InputError, ParameterError
from ipfacediff.interfaces import FaceDetection, FaceProcessor, PropagationInput, Propagator
from ipfacediff.runtime.face import detect_track, face_from_landmarks, feather_mask
from ipfacediff.runtime.video import IMAGE_EXTS, check_output, is_sequence_output, open_frames, open_writer, read_image

CHANGED_LEVEL = 12  # grey levels: a keyframe pixel differing more than this from the source was edited
OUTSIDE_WARN = 0.002  # fraction of a keyframe's pixels edited outside the face region that is worth a warning
REGION_SIZE = 256  # side of the face processor's crop used as the face region (its shape, not its pixels, matters)


@dataclass
class PropagateRequest:
    input: Path
    keyframes: Path
    output: Path
    propagator: str | None = None  # default: the propagator of the registry's ip-facediff pipeline
    face_processor: str | None = None  # default: the face processor of the registry's ip-facediff pipeline
    max_frames: int | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    registry_file: str | Path | None = None
    sequence: bool | None = None  # PNG frames into the folder ``output``; None: when it ends with / or is a folder
    overwrite: bool = False
    show_progress: bool = True


def keyframe_index(path: Path) -> int | None:
    """The frame index a keyframe file replaces: the last number in its name (``8.png``,
    ``00008.png``, ``frame_0008.jpg``)."""
    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else None


def read_keyframes(folder: Path, n: int, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """The keyframes in ``folder`` by frame index, checked: images present, each named by an index
    below ``n``, no index twice, every image readable and of the video's ``size`` (w, h)."""
    if not folder.is_dir():
        raise InputError(f"--keyframes {folder}: no such folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise InputError(f"--keyframes {folder}: the folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    keys: dict[int, np.ndarray] = {}
    names: dict[int, Path] = {}
    for f in files:
        i = keyframe_index(f)
        if i is None:
            raise InputError(f"--keyframes {f}: no frame number in the name (name keyframes by the 0-based frame they replace: 8.png, 00008.png)")
        if i in names:
            raise InputError(f"--keyframes {folder}: {names[i].name} and {f.name} both replace frame {i}")
        if i >= n:
            raise InputError(f"--keyframes {f}: frame {i} is past the end of the input ({n} frames, 0 to {n - 1})")
        img = read_image(f)
        if (img.shape[1], img.shape[0]) != tuple(size):
            raise InputError(f"--keyframes {f}: {img.shape[1]}x{img.shape[0]} does not match the input's {size[0]}x{size[1]} (keyframes are full-size frames)")
        keys[i], names[i] = img, f
    return dict(sorted(keys.items()))


def face_region(processor: FaceProcessor, frame: np.ndarray, det: FaceDetection | None) -> np.ndarray:
    """``float32 [H, W]`` in [0, 1]: the part of ``frame`` the face processor's crop covers, feathered
    (zeros without a face)."""
    h, w = frame.shape[:2]
    if det is None:
        return np.zeros((h, w), np.float32)
    m = processor.align(frame, det, REGION_SIZE).matrix
    inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
    return cv2.warpAffine(feather_mask(REGION_SIZE, 0.1), inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _window(regions: list[np.ndarray], pad: int = 8) -> tuple[int, int, int, int] | None:
    """The box ``(x0, y0, x1, y1)`` around every region's support, padded."""
    support = np.any(np.stack(regions) > 0, 0)
    ys, xs = np.nonzero(support)
    if not len(xs):
        return None
    h, w = support.shape
    return max(0, xs.min() - pad), max(0, ys.min() - pad), min(w, xs.max() + 1 + pad), min(h, ys.max() + 1 + pad)


def _in_window(det: FaceDetection | None, x0: int, y0: int, full_frame: bool) -> FaceDetection | None:
    if det is None:
        return None
    lm = None if det.landmarks is None else det.landmarks - [x0, y0]
    if full_frame and lm is not None:  # the box is the frame: a face box from the landmarks instead
        return face_from_landmarks(lm, det.score, det.source)
    return FaceDetection(det.box - [x0, y0, x0, y0], det.score, lm, det.source)


def carry_edits(get: Callable[[list[int]], np.ndarray], n: int, keys: dict[int, np.ndarray], track: list[FaceDetection | None],
                processor: FaceProcessor, propagator: Propagator, full_frame: bool = False,
                on_frames: Callable[[int, np.ndarray], None] | None = None) -> dict[str, Any]:
    """Carry the ``keys`` (frame index -> edited frame) to every frame of a clip of ``n`` frames read by
    ``get`` with a pixel-space ``propagator`` (callers check its space); each finished run of frames
    goes to ``on_frames(first_index, frames)`` in order. Returns the outside-region share of each
    keyframe's edit and the frames left as the source (no face)."""
    key_idx = sorted(keys)
    bounds = sorted(set([0] + key_idx + [n - 1]))
    outside: dict[int, float] = {}
    no_face: list[int] = []
    for a_pos, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = a if a_pos == 0 else a + 1  # frame a was written with the previous run
        idx = list(range(a, b + 1))
        if not any(i in keys for i in idx):  # before the first or after the last keyframe: its nearest keyframe
            near = min(key_idx, key=lambda k: abs(k - a) if k < a else abs(k - b))
            idx = [near] + idx if near < a else idx + [near]
        frames = get(idx)
        regions = [np.ones(frames.shape[1:3], np.float32) if full_frame else face_region(processor, f, track[i]) for i, f in zip(idx, frames)]
        group_keys = [r for r, i in enumerate(idx) if i in keys]
        for r in group_keys:
            i = idx[r]
            if i not in outside:
                changed = np.abs(keys[i].astype(np.int16) - frames[r]).max(-1) > CHANGED_LEVEL
                outside[i] = float(np.mean(changed & (regions[r] <= 1e-3)))
        out = frames.copy()
        win = _window(regions)
        if win is not None:
            x0, y0, x1, y1 = win
            src = np.ascontiguousarray(frames[:, y0:y1, x0:x1])
            edited = np.stack([keys[idx[r]][y0:y1, x0:x1] for r in group_keys])
            faces = [_in_window(track[i], x0, y0, full_frame) for i in idx]
            carried = propagator.propagate(PropagationInput(key_rows=group_keys, frames=idx, source_pixels=src, edited_pixels=edited,
                                                            reconstructed_pixels=src[group_keys], faces=faces))
            for r in range(len(idx)):
                m = regions[r][y0:y1, x0:x1, None]
                blended = src[r].astype(np.float32) + m * (carried[r].astype(np.float32) - src[r])
                out[r, y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        for r, i in enumerate(idx):
            if i in keys:
                out[r] = keys[i]
            elif track[i] is None and not full_frame:
                no_face.append(i)
        lo = idx.index(first)
        hi = idx.index(b) + 1
        if on_frames is not None:
            on_frames(first, out[lo:hi])
    return {"outside_region": outside, "frames_without_face": sorted(set(no_face))}


def run_propagate(req: PropagateRequest) -> dict[str, Any]:
    from ipfacediff.catalog import get_catalog
    from ipfacediff.params import validate_params
    from ipfacediff.registry import PipelineSettings, load_registry
    from ipfacediff.runtime.progress import progress_bar

    t0 = time.perf_counter()
    if req.max_frames is not None and req.max_frames < 1:
        raise ParameterError(f"--max-frames {req.max_frames}: must be at least 1")
    reg = load_registry(req.registry_file)
    default = reg.pipeline("ip-facediff")
    allowed = {"propagator", "face_processor", "settings"}
    unknown = sorted(set(req.sets) - allowed)
    if unknown:
        raise ParameterError(f"--set {unknown[0]}...: propagate takes propagator.*, face_processor.* and settings.landmark_smoothing")
    source = open_frames(req.input)
    try:
        info = source.info
        n = info.n_frames if req.max_frames is None else min(info.n_frames, req.max_frames)
        keys = read_keyframes(req.keyframes, n, (info.width, info.height))
        sequence = req.sequence if req.sequence is not None else is_sequence_output(req.output)
        if not sequence and req.output.suffix.lower() in IMAGE_EXTS:
            raise InputError(f"{req.output}: give a video (.mp4) or a folder ending with / for PNG frames")
        check_output(req.output, req.overwrite, [req.input, req.keyframes])
        catalog = get_catalog()
        prop_name = req.propagator or default.components["propagator"].name
        prop_params = (default.components["propagator"].raw_params() if req.propagator is None else {}) | req.sets.get("propagator", {})
        propagator = catalog.build("propagator", prop_name, prop_params, "--propagator")
        if propagator.space != "pixels":
            raise ParameterError(f"--propagator {prop_name}: it propagates {propagator.space}; propagate carries pixels "
                                 f"(pixel-space propagators: {', '.join(sorted(x for x in catalog.names('propagator') if catalog.get('propagator', x).cls.space == 'pixels'))})")
        fp_name = req.face_processor or default.components["face_processor"].name
        fp_params = (default.components["face_processor"].raw_params() if req.face_processor is None else {}) | req.sets.get("face_processor", {})
        processor = catalog.build("face_processor", fp_name, fp_params, "--face-processor")
        settings = validate_params(PipelineSettings, {**asdict(default.settings), **req.sets.get("settings", {})}, "--set settings")
        full_frame = fp_name == "full-frame"
        track = detect_track(processor, source, n, settings.landmark_smoothing, req.show_progress)
        audio = info.path if info.kind == "video" and info.has_audio else None
        with open_writer(req.output, info, n, overwrite=req.overwrite, audio_from=audio, inputs=[req.input, req.keyframes], sequence=sequence) as writer, \
                progress_bar("propagate", n, req.show_progress) as bar:
            def write(first: int, frames: np.ndarray) -> None:
                writer.write(frames)
                bar.advance(len(frames))

            found = carry_edits(lambda idx: source.get(idx), n, keys, track, processor, propagator, full_frame, write)
    finally:
        source.close()
    warnings = []
    for i, share in found["outside_region"].items():
        if share > OUTSIDE_WARN:
            warnings.append(f"keyframe {i}: {100 * share:.1f}% of the frame was edited outside the face region; that part is not carried "
                            "to other frames (--face-processor full-frame carries whole frames)")
    if found["frames_without_face"]:
        warnings.append(f"{len(found['frames_without_face'])} frames have no face and are left as the source: {found['frames_without_face'][:10]}")
    return {"input": str(req.input), "keyframes_dir": str(req.keyframes), "output": str(req.output), "output_kind": "frames" if sequence else "video",
            "frames": n, "keyframes": list(keys), "propagator": prop_name, "face_processor": fp_name,
            "landmark_model": propagator.landmark_model, "outside_region": {str(k): round(v, 5) for k, v in found["outside_region"].items()},
            "frames_without_face": found["frames_without_face"], "warnings": warnings, "seconds": round(time.perf_counter() - t0, 3)}
