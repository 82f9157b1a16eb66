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

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ipfacediff.errors import InputError, ParameterError
from ipfacediff.interfaces import FaceDetection, FaceProcessor, PropagationInput, Propagator
from ipfacediff.jobs.clip import ClipJob
from ipfacediff.runtime.face import face_from_landmarks, feather_mask
from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.frames import region_psnr
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.video import IMAGE_EXTS, check_output, is_sequence_output, open_writer, read_image

CHANGED_LEVEL = 12  # grey levels: a keyframe pixel differing more than this from the source was edited
OUTSIDE_WARN = 0.002  # fraction of a keyframe's pixels edited outside the face region that is worth a warning
REGION_SIZE = 256  # side of the face processor's crop used as the face region (its shape, not its pixels, matters)
CARRY_RUN = 32  # frames propagated per call (with their keyframes): what memory holds at a time


@dataclass
class PropagateRequest:
    """A propagate run: files (``input``, the ``keyframes`` folder, ``output``), or, for a caller that
    holds the frames (the ComfyUI node), ``frames`` (a reader: ``get``, ``len``, ``batch``) and
    ``keyframe_images`` (frame index -> edited full-size frame) with ``output`` None: the frames then
    go to :meth:`PropagateJob.carry`'s ``on_frames`` and no report file is written."""

    input: Path | None
    keyframes: Path | None
    output: Path | None
    propagator: str | None = None  # default: the pipeline's propagator
    face_processor: str | None = None  # default: the pipeline's face processor
    max_frames: int | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    registry_file: str | Path | None = None
    sequence: bool | None = None  # PNG frames into the folder ``output``; None: when it ends with / or is a folder
    overwrite: bool = False
    show_progress: bool = True
    pipeline: str = (
        "ip-facediff"  # the registry pipeline whose propagator, face processor and settings are the defaults
    )
    report: Path | None = None  # the JSON report (default: OUT.json beside the output)
    cache: bool = True  # keep the face track in the cache (a later edit or propagate of the clip reuses it)
    frames: Any = None  # the clip as a frame reader instead of ``input``
    self_check: bool = True  # leave-one-keyframe-out PSNR and the frames worth one more keyframe
    suggest: int = 3  # how many frames the self-check suggests
    keyframe_images: dict[int, np.ndarray] | None = None  # the keyframes in memory instead of ``keyframes``


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
            raise InputError(
                f"--keyframes {f}: no frame number in the name (name keyframes by the 0-based frame they replace: "
                "8.png, 00008.png)"
            )
        if i in names:
            raise InputError(f"--keyframes {folder}: {names[i].name} and {f.name} both replace frame {i}")
        check_keyframe(i, None, n, size, f"--keyframes {f}")
        img = read_image(f)
        check_keyframe(i, img, n, size, f"--keyframes {f}")
        keys[i], names[i] = img, f
    return dict(sorted(keys.items()))


def check_keyframe(index: int, image: np.ndarray | None, n: int, size: tuple[int, int], where: str) -> None:
    """A keyframe replaces a frame of the clip (``index`` below ``n``) and is a full-size frame of the
    clip's ``size`` (w, h; not checked without an ``image``)."""
    if index < 0 or index >= n:
        raise InputError(f"{where}: frame {index} is past the end of the input ({n} frames, 0 to {n - 1})")
    if image is not None and (image.shape[1], image.shape[0]) != tuple(size):
        raise InputError(
            f"{where}: {image.shape[1]}x{image.shape[0]} does not match the input's {size[0]}x{size[1]} "
            "(keyframes are full-size frames)"
        )


def face_region(processor: FaceProcessor, frame: np.ndarray, det: FaceDetection | None) -> np.ndarray:
    """``float32 [H, W]`` in [0, 1]: the part of ``frame`` the face processor's crop covers, feathered
    (zeros without a face)."""
    h, w = frame.shape[:2]
    if det is None:
        return np.zeros((h, w), np.float32)
    m = processor.align(frame, det, REGION_SIZE).matrix
    inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
    corners = np.float64([[0, 0, 1], [REGION_SIZE, 0, 1], [0, REGION_SIZE, 1], [REGION_SIZE, REGION_SIZE, 1]]) @ inv.T
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int) - 1, 0, [w, h])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 2, 0, [w, h])
    region = np.zeros((h, w), np.float32)
    if x1 > x0 and y1 > y0:  # only the crop's footprint is warped
        inv[:, 2] -= [x0, y0]
        region[y0:y1, x0:x1] = cv2.warpAffine(
            feather_mask(REGION_SIZE, 0.1),
            inv,
            (int(x1 - x0), int(y1 - y0)),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return region


def _window(regions: list[np.ndarray], pad: int = 8) -> tuple[int, int, int, int] | None:
    """The box ``(x0, y0, x1, y1)`` around every region's support, padded."""
    boxes = []
    for r in regions:
        cols, rows = np.flatnonzero(r.max(0) > 0), np.flatnonzero(r.max(1) > 0)
        if len(cols):
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    if not boxes:
        return None
    h, w = regions[0].shape
    b = np.array(boxes)
    return (
        int(max(0, b[:, 0].min() - pad)),
        int(max(0, b[:, 1].min() - pad)),
        int(min(w, b[:, 2].max() + pad)),
        int(min(h, b[:, 3].max() + pad)),
    )


def _in_window(det: FaceDetection | None, x0: int, y0: int, full_frame: bool) -> FaceDetection | None:
    if det is None:
        return None
    lm = None if det.landmarks is None else det.landmarks - [x0, y0]
    if full_frame and lm is not None:  # the box is the frame: a face box from the landmarks instead
        return face_from_landmarks(lm, det.score, det.source)
    return FaceDetection(det.box - [x0, y0, x0, y0], det.score, lm, det.source)


def carry_rows(
    frames: np.ndarray,
    times: list[int],
    keys: dict[int, np.ndarray],
    faces: list[FaceDetection | None],
    processor: FaceProcessor,
    propagator: Propagator,
    full_frame: bool = False,
    in_place: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One call of the propagator: ``frames`` (``uint8 [T, H, W, 3]``, the clip's frames ``times``,
    in order) with the edits ``keys`` (row -> edited full frame) carried to the other rows, cut to one
    window around the face and blended back through each row's face region. Returns the rows and
    their face regions; key rows are the edited frames as given. ``in_place``: the rows are written
    into ``frames`` itself (a clip's run is not copied) and its key rows keep their source frames."""
    regions = [
        np.ones(frames.shape[1:3], np.float32) if full_frame else face_region(processor, f, det)
        for f, det in zip(frames, faces)
    ]
    out = frames if in_place else frames.copy()
    group_keys = sorted(keys)
    win = _window(regions)
    if win is not None:
        x0, y0, x1, y1 = win
        src = np.ascontiguousarray(frames[:, y0:y1, x0:x1])
        edited = np.stack([keys[r][y0:y1, x0:x1] for r in group_keys])
        carried = propagator.propagate(
            PropagationInput(
                key_rows=group_keys,
                frames=list(times),
                source_pixels=src,
                edited_pixels=edited,
                reconstructed_pixels=src[group_keys],
                faces=[_in_window(d, x0, y0, full_frame) for d in faces],
            )
        )
        for r in range(len(frames)):
            if r in keys:
                continue
            m = regions[r][y0:y1, x0:x1, None]
            blended = src[r].astype(np.float32) + m * (carried[r].astype(np.float32) - src[r])
            out[r, y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    for r in [] if in_place else group_keys:
        out[r] = keys[r]
    return out, regions


def carry_edits(
    get: Callable[[list[int]], np.ndarray],
    n: int,
    keys: dict[int, np.ndarray],
    track: list[FaceDetection | None],
    processor: FaceProcessor,
    propagator: Propagator,
    full_frame: bool = False,
    on_frames: Callable[[int, np.ndarray], None] | None = None,
) -> dict[str, Any]:
    """Carry the ``keys`` (frame index -> edited frame) to every frame of a clip of ``n`` frames read by
    ``get`` with a pixel-space ``propagator`` (callers check its space); each finished run of frames
    goes to ``on_frames(first_index, frames)`` in order. Returns the outside-region share of each
    keyframe's edit and the frames left as the source (no face)."""
    key_idx = sorted(keys)
    bounds = sorted(set([0] + key_idx + [n - 1]))
    if len(bounds) == 1:  # a one-frame clip: one interval from its keyframe to itself
        bounds *= 2
    outside: dict[int, float] = {}
    no_face: list[int] = []
    key_source: dict[int, np.ndarray] = {}  # the source frames of the current interval's keyframes
    for a_pos, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = a if a_pos == 0 else a + 1  # frame a was written with the previous run
        idx = list(range(a, b + 1))
        if not any(i in keys for i in idx):  # before the first or after the last keyframe: its nearest keyframe
            idx = [min(key_idx, key=lambda k: abs(k - a) if k < a else abs(k - b))]
        near = [i for i in idx if i in keys] if len(idx) > 1 else idx
        todo = [i for i in range(first, b + 1) if i not in keys]
        # the interval's frames a run of at most CARRY_RUN at a time, each with the keyframes (a frame's
        # result depends only on it and its keyframes): memory stays flat however far apart keyframes are
        runs = [todo[s : s + CARRY_RUN] for s in range(0, len(todo), CARRY_RUN)] or [[]]
        at = first
        for run in runs:
            rows = sorted(set(near) | set(run))
            missing = [i for i in rows if i not in key_source]
            read = dict(zip(missing, get(missing))) if missing else {}
            frames = np.stack([key_source[i] if i in key_source else read[i] for i in rows])
            del read
            group = {r: keys[i] for r, i in enumerate(rows) if i in keys}
            faces = [track[i] for i in rows]
            # in place: the run's frames are carried where they lie (no copy), their key rows left as the source
            out, regions = carry_rows(frames, rows, group, faces, processor, propagator, full_frame, in_place=True)
            key_source = {i: out[rows.index(i)] for i in near}  # the interval's next run reads them again
            ready: dict[int, int] = {}  # the run's frames: their rows in ``out``
            for r, i in enumerate(rows):
                if i in keys and i not in outside:
                    changed = cv2.absdiff(keys[i], out[r]).max(-1) > CHANGED_LEVEL
                    outside[i] = float(np.mean(changed & (regions[r] <= 1e-3)))
                elif i in run:
                    ready[i] = r
                    if track[i] is None and not full_frame:
                        no_face.append(i)
            del frames, regions
            done, start = run[-1] if run else b, at
            while at <= b and (at <= done or at in keys):
                at += 1
            if on_frames is not None:
                pass_on(start, at, keys, out, ready, on_frames)
            del out
    return {"outside_region": outside, "frames_without_face": sorted(set(no_face))}


def pass_on(
    first: int,
    end: int,
    keys: dict[int, np.ndarray],
    out: np.ndarray,
    ready: dict[int, int],
    on_frames: Callable[[int, np.ndarray], None],
) -> None:
    """The clip's frames ``first`` to ``end - 1`` to ``on_frames`` in order: keyframes as given, the
    others rows of ``out`` (``ready``: frame -> row). A run of consecutive rows goes as a view of
    ``out``, not a copy."""
    at = first
    while at < end:
        if at in keys:
            on_frames(at, keys[at][None])
            at += 1
            continue
        stop = at + 1
        while stop < end and stop not in keys and ready.get(stop) == ready[at] + stop - at:
            stop += 1
        on_frames(at, out[ready[at] : ready[at] + stop - at])
        at = stop


def recent_frames(get: Callable[[list[int]], np.ndarray], keep: int) -> Callable[[list[int]], np.ndarray]:
    """``get`` that keeps the last ``keep`` frames it read and reads only the others: a walk over the
    keyframes in order reads each once (a video source asked for a frame behind its decoder decodes
    the clip again from the start)."""
    kept: dict[int, np.ndarray] = {}

    def cached(idx: list[int]) -> np.ndarray:
        missing = [i for i in idx if i not in kept]
        if missing:
            kept.update(zip(missing, get(missing)))
        out = np.stack([kept[i] for i in idx])
        for i in sorted(kept, key=lambda i: (i in idx, i))[: max(0, len(kept) - keep)]:
            del kept[i]
        return out

    return cached


Predicted = dict[tuple[tuple[int, ...], tuple[int, ...]], float]


def _predicted(
    get: Callable[[list[int]], np.ndarray],
    idx: list[int],
    given: list[int],
    keys: dict[int, np.ndarray],
    track: list[FaceDetection | None],
    processor: FaceProcessor,
    propagator: Propagator,
    full_frame: bool,
    memo: Predicted | None,
) -> float:
    """The keyframe among the clip's frames ``idx`` that is not ``given`` predicted by :func:`carry_rows`
    from the keyframes ``given`` (of ``keys``) alone, PSNR (dB) over its face region against its edit.
    Kept in ``memo``: a propagator's result depends only on the frames and keyframes it is given (its
    contract), and both self-checks predict an end keyframe from its one neighbour."""
    name = (tuple(idx), tuple(given))
    if memo is not None and name in memo:
        return memo[name]
    group = {r: keys[i] for r, i in enumerate(idx) if i in given}
    rows, regions = carry_rows(get(idx), idx, group, [track[i] for i in idx], processor, propagator, full_frame)
    r = next(r for r, i in enumerate(idx) if i not in given)
    psnr = region_psnr(rows[r], keys[idx[r]], regions[r])
    if memo is not None:
        memo[name] = psnr
    return psnr


def leave_one_out(
    get: Callable[[list[int]], np.ndarray],
    keys: dict[int, np.ndarray],
    track: list[FaceDetection | None],
    processor: FaceProcessor,
    propagator: Propagator,
    full_frame: bool = False,
    memo: Predicted | None = None,
) -> list[dict[str, Any]]:
    """The self-check of a propagation: each keyframe predicted from the others (its nearest keyframe
    on each side, or the one side it has) and compared with the edit the user gave, PSNR (dB) over the
    face region. Needs two or more keyframes; a low value says the edit does not move the way the
    propagator carries it between those keyframes (an occlusion, a turn, an edit that changes shape).
    A propagator's result for a frame depends on that frame and its keyframes alone (its contract), so
    each prediction propagates only the keyframe and the keyframes it is predicted from. ``memo``
    (shared with :func:`across_intervals`) keeps each prediction for the other check."""
    order = sorted(keys)
    out = []
    for pos, k in enumerate(order):
        near = order[max(pos - 1, 0) : pos] + order[pos + 1 : pos + 2]  # the nearest keyframe on each side
        if not near or (track[k] is None and not full_frame):  # no face there: nothing to compare
            continue
        psnr = _predicted(get, sorted([k, *near]), near, keys, track, processor, propagator, full_frame, memo)
        out.append({"keyframe": k, "from": near, "psnr": psnr})
    return out


def across_intervals(
    get: Callable[[list[int]], np.ndarray],
    keys: dict[int, np.ndarray],
    track: list[FaceDetection | None],
    processor: FaceProcessor,
    propagator: Propagator,
    full_frame: bool = False,
    memo: Predicted | None = None,
) -> list[dict[str, Any]]:
    """The self-check of each keyframe interval on its own: each of its two keyframes predicted from
    the other alone, across the whole interval (twice as far as a frame inside it is from its nearest
    keyframe), PSNR (dB) over the face, the mean of the two. Where :func:`leave_one_out` says how well
    a keyframe is carried from both sides, this says which interval carries the edit worst (on the
    dlib truth its rank correlation with the true PSNR of the frames inside the interval was 0.85;
    benchmarks/README.md). ``edit --set settings.keyframes=adaptive`` splits the intervals it finds
    low. The first and last keyframes' predictions are :func:`leave_one_out`'s (``memo``)."""
    order = sorted(keys)
    out = []
    for a, b in zip(order[:-1], order[1:]):
        if not full_frame and (track[a] is None or track[b] is None):  # no face at one end: nothing to compare
            continue
        scores = [
            _predicted(get, [a, b], [given], keys, track, processor, propagator, full_frame, memo) for given in (a, b)
        ]
        out.append({"from": a, "to": b, "psnr": round(float(np.mean(scores)), 3)})
    return out


SUGGEST_SAMPLES = 48  # at most this many candidates (and sampled frames) per keyframe interval: a long span is strided


def suggest_keyframes(track: list[FaceDetection | None], keys: list[int], count: int = 3) -> list[dict[str, Any]]:
    """The frames where one more edited keyframe would help most, best first, each with its reason. A
    frame's need grows with its distance in frames from the nearest keyframe (the carried edit drifts
    with it) and with how far its pose or expression is from that keyframe's (its five landmarks aligned
    to the keyframe's by a similarity: what is left, in eye distances, is a turn or a changed
    expression): ``frames away x (1 + 10 x pose gap)``. The pick is the frame that, made a keyframe,
    lowers the summed need of the frames around it the most; a frame it would become nearest to takes it
    only where that lowers the frame's need (``layered`` weighs the two keyframes around a frame by how
    well its motion to each explains it), so a turn that lasts gets a keyframe inside it, while a pose
    held for one frame does not outweigh the middle of a long interval. The reason is ``pose or
    expression`` where the pose term at least doubles the picked frame's own need, else ``far from a
    keyframe``. Chosen greedily: each pick counts as a keyframe for the next. An interval longer than
    :data:`SUGGEST_SAMPLES` frames is sampled evenly (its candidates and the frames they are scored on).
    (Picking the frame of largest need alone gained less on the dlib truth at every 8 and every 16
    frames; scaling each frame's need by its interval's measured error, :func:`across_intervals`, picked
    worse frames: benchmarks/README.md.)"""
    faces = {i: d.landmarks for i, d in enumerate(track) if d is not None and d.landmarks is not None}
    chosen = sorted(k for k in keys if k in faces)
    if not chosen:
        return []
    order = sorted(faces)
    gaps: dict[tuple[int, int], float] = {}

    def shape_gap(i: int, k: int) -> float:
        if (i, k) not in gaps:
            a, b = faces[i].astype(np.float32), faces[k].astype(np.float32)
            m, _ = cv2.estimateAffinePartial2D(a, b)
            if m is None:
                gaps[i, k] = 0.0
            else:
                moved = a @ m[:, :2].T + m[:, 2]
                gaps[i, k] = float(np.linalg.norm(moved - b, axis=1).mean() / max(np.linalg.norm(b[1] - b[0]), 1e-6))
        return gaps[i, k]

    def need(i: int, k: int) -> float:
        return abs(i - k) * (1 + 10 * shape_gap(i, k)) if i != k else 0.0

    picks = []
    for _ in range(count):
        have = sorted(chosen)
        best = None
        for lo, hi in zip([None, *have], [*have, None]):  # the spans before, between and after the keyframes
            first = 0 if lo is None else bisect.bisect_right(order, lo)
            span = order[first : len(order) if hi is None else bisect.bisect_left(order, hi)]
            if not span:
                continue
            step = -(-len(span) // SUGGEST_SAMPLES)
            sample = span[::step]
            near = {i: min((k for k in (lo, hi) if k is not None), key=lambda k: (abs(i - k), k)) for i in sample}
            base = {i: need(i, near[i]) for i in sample}
            for c in sample:
                gain = step * sum(
                    base[i] - min(base[i], need(i, c))
                    for i in sample
                    if abs(i - c) < abs(i - near[i]) or (abs(i - c) == abs(i - near[i]) and c < near[i])
                )
                if best is None or gain > best[0]:
                    best = (gain, c, near[c])
        if best is None:
            break
        _, i, near_i = best
        gap = shape_gap(i, near_i)
        picks.append(
            {
                "frame": i,
                "reason": "pose or expression" if 10 * gap >= 1 else "far from a keyframe",
                "nearest_keyframe": near_i,
                "frames_away": abs(i - near_i),
                "pose_gap": round(gap, 4),
            }
        )
        chosen.append(i)
    return picks


class PropagateJob(ClipJob):
    """One ``propagate`` run, its state in one object: the request checked (nothing built or written
    before the keyframes pass), the components built from the pipeline's slots, the face track
    (cached as ``edit`` caches it), the carry, the report."""

    job = "propagate"

    def __init__(self, req: PropagateRequest):
        from ipfacediff.registry import load_registry

        self.req = req
        pipeline = load_registry(req.registry_file).pipeline(req.pipeline)
        super().__init__(
            pipeline,
            req.sets,
            input=req.input,
            frames=req.frames,
            max_frames=req.max_frames,
            cache=req.cache,
            show_progress=req.show_progress,
        )

    def check(self) -> None:
        """``--set``, the settings, the input, the keyframes and the output."""
        req = self.req
        if req.suggest < 0:
            raise ParameterError(f"--suggest {req.suggest}: 0 or more frames")
        unknown = sorted(set(req.sets) - {"propagator", "face_processor", "settings"})
        if unknown:
            raise ParameterError(
                f"--set {unknown[0]}...: propagate takes propagator.*, face_processor.* and "
                "settings.landmark_smoothing"
            )
        for slot in ("propagator", "face_processor"):
            if slot not in self.pipeline.components and getattr(req, slot) is None:
                raise ParameterError(
                    f"pipeline {self.pipeline.name!r} has no {slot}; name one with --{slot.replace('_', '-')}"
                )
        self.check_request(extra_slots=("settings", "propagator", "face_processor"))
        info = self.open_source().info
        size = (info.width, info.height)
        if req.keyframe_images is not None:
            if not req.keyframe_images:
                raise InputError("no keyframes: give at least one edited frame")
            for i, img in req.keyframe_images.items():
                check_keyframe(i, img, self.n, size, f"keyframe {i}")
            self.keys = dict(sorted(req.keyframe_images.items()))
        else:
            self.keys = read_keyframes(req.keyframes, self.n, size)
        if req.output is None:
            self.sequence = False
            return
        self.sequence = req.sequence if req.sequence is not None else is_sequence_output(req.output)
        if not self.sequence and req.output.suffix.lower() in IMAGE_EXTS:
            raise InputError(f"{req.output}: give a video (.mp4) or a folder ending with / for PNG frames")
        check_output(req.output, req.overwrite, [p for p in (req.input, req.keyframes) if p is not None])

    def build(self) -> None:
        """The propagator (pixel space only) and the face processor: the pipeline's, or the ones named
        on the command line with ``--set`` parameters only."""
        from ipfacediff.catalog import get_catalog

        req, replace = self.req, {}
        if req.propagator:
            replace["propagator"] = ("propagator", req.propagator, "--propagator")
        if req.face_processor:
            replace["face_processor"] = ("face_processor", req.face_processor, "--face-processor")
        with self.timer("load_models"):
            self.build_components(["propagator", "face_processor"], replace)
        self.propagator, self.processor = self.components["propagator"], self.components["face_processor"]
        if self.propagator.space != "pixels":
            catalog = get_catalog()
            pixel = [x for x in catalog.names("propagator") if catalog.get("propagator", x).cls.space == "pixels"]
            raise ParameterError(
                f"--propagator {self.propagator.name}: it propagates {self.propagator.space}; propagate carries "
                f"pixels (pixel-space propagators: {', '.join(pixel)})"
            )
        self.full_frame = self.processor.name == "full-frame"

    def detect(self) -> None:
        super().detect(self.processor, require_face=False, passed="as the source")

    def carry(self, on_frames: Callable[[int, np.ndarray], None] | None = None) -> None:
        """Every frame written, keyframe interval by keyframe interval (:func:`carry_edits`); without
        an output file, each run of frames goes to ``on_frames(first_index, frames)`` in order."""
        req = self.req
        if req.output is None:
            with progress_bar("propagate", self.n, self.show_progress) as bar, self.timer("propagate"):

                def hand_over(first: int, frames: np.ndarray) -> None:
                    on_frames(first, frames)
                    bar.advance(len(frames))

                self.found = carry_edits(
                    self.source.get,
                    self.n,
                    self.keys,
                    self.track,
                    self.processor,
                    self.propagator,
                    self.full_frame,
                    hand_over,
                )
            return
        info = self.source.info
        audio = info.path if info.kind == "video" and info.has_audio else None
        inputs = [req.input, req.keyframes]
        with (
            open_writer(
                req.output,
                info,
                self.n,
                overwrite=req.overwrite,
                audio_from=audio,
                inputs=inputs,
                sequence=self.sequence,
                crf=self.settings.video_crf,
                preset=self.settings.video_preset,
            ) as writer,
            progress_bar("propagate", self.n, self.show_progress) as bar,
            self.timer("propagate"),
        ):

            def write(first: int, frames: np.ndarray) -> None:
                writer.write(frames)
                bar.advance(len(frames))

            self.found = carry_edits(
                self.source.get, self.n, self.keys, self.track, self.processor, self.propagator, self.full_frame, write
            )

    def check_result(self) -> None:
        """The self-check (:func:`leave_one_out`, :func:`suggest_keyframes`), or nothing when it is off."""
        self.self_check = None
        if not self.req.self_check:
            return
        with self.timer("self_check"):
            get = recent_frames(self.source.get, 4)  # both checks walk the keyframes in order
            memo: Predicted = {}  # the end keyframes' predictions, made once for both checks
            job = (self.keys, self.track, self.processor, self.propagator, self.full_frame)
            loo = leave_one_out(get, *job, memo=memo)
            self.self_check = {
                "leave_one_out": loo,
                "mean_psnr": round(float(np.mean([x["psnr"] for x in loo])), 2) if loo else None,
                "intervals": across_intervals(get, *job, memo=memo),
                "suggest": suggest_keyframes(self.track, list(self.keys), self.req.suggest),
            }

    def write_report(self) -> dict[str, Any]:
        """The report: what was carried, the warnings, timings and the rest every job reports; written
        as JSON beside the output (or to ``req.report``)."""
        req, found = self.req, self.found
        for i, share in found["outside_region"].items():
            if share > OUTSIDE_WARN:
                self.warnings.append(
                    f"keyframe {i}: {100 * share:.1f}% of the frame was edited outside the face region; that part "
                    "is not carried to other frames (--face-processor full-frame carries whole frames)"
                )
        no_face = found["frames_without_face"]
        if no_face:
            self.warnings.append(f"{len(no_face)} frames have no face and are left as the source: {no_face[:10]}")
        out = req.output
        path = req.report or (out.with_name(out.stem + ".json") if out is not None else None)
        report = {
            "job": "propagate",
            "input": str(req.input) if req.input is not None else "frames in memory",
            "keyframes_dir": str(req.keyframes) if req.keyframes is not None else None,
            "output": str(out) if out is not None else None,
            "output_kind": "frames" if self.sequence else ("video" if out is not None else "memory"),
            "frames": self.n,
            "keyframes": list(self.keys),
            "propagator": self.propagator.name,
            "face_processor": self.processor.name,
            "landmark_model": self.propagator.landmark_model,
            "outside_region": {str(k): round(v, 5) for k, v in found["outside_region"].items()},
            "frames_without_face": no_face,
            "self_check": getattr(self, "self_check", None),
            **self.report_fields(),
            "report": str(path) if path is not None else None,
        }
        report["seconds"] = report["timings_s"]["total"]
        if path is not None:
            write_atomic(path, json.dumps(report, indent=2, default=str))
        return report


def run_propagate(req: PropagateRequest) -> dict[str, Any]:
    """Carry the keyframes in ``req.keyframes`` to every frame of ``req.input``: check, build, detect,
    carry, report."""
    with PropagateJob(req) as job, job.collecting():
        job.check()
        job.build()
        job.detect()
        job.carry()
        job.check_result()
    return job.write_report()


def describe_self_check(check: dict[str, Any] | None) -> str:
    """The self-check in one line (the CLI, the app and the ComfyUI node say it so)."""
    if not check:
        return "self-check off"
    loo = check["leave_one_out"]
    parts = []
    if loo:
        parts.append(
            "leave-one-out PSNR "
            + ", ".join(f"keyframe {x['keyframe']} from {x['from']}: {x['psnr']:.1f} dB" for x in loo)
        )
    else:
        parts.append("one keyframe: no leave-one-out check (give two or more)")
    if check.get("intervals"):
        worst = min(check["intervals"], key=lambda x: x["psnr"])
        parts.append(f"weakest keyframe interval {worst['from']}-{worst['to']}: {worst['psnr']:.1f} dB across it")
    if check["suggest"]:
        parts.append(
            "one more edited keyframe would help most at frame "
            + ", ".join(f"{x['frame']} ({x['reason']})" for x in check["suggest"])
        )
    return "self-check: " + "; ".join(parts)
