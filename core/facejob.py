"""The face-crops job: detect, track and align the face of every frame, paste the crops back, and
report. It is the first half of every edit (the crops an editor sees) and runs without any
diffusion model, so it doubles as a preview of how a clip will be processed.

Outputs (in the output folder, written under a temporary name and renamed when complete):
``crops.mp4`` (aligned crops, input fps and audio), ``roundtrip.mp4`` (crops pasted back into the
frames: same size, fps, frame count and audio as the input), ``faces.json`` (report) and
``strip.png`` (sampled frames with detections above their crops).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .catalog import get_catalog
from .errors import NoFaceError, OutputExistsError, ParameterError
from .face import arcface_crop
from .interfaces import FaceDetection
from .progress import progress_bar
from .registry import PipelineEntry
from .edit import detect_track
from .video import VideoWriter, open_frames


def _overrides(pipeline: PipelineEntry, overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split ``--set`` values by slot: ``face_processor.threshold=0.8`` -> {face_processor: {...}}."""
    out: dict[str, dict[str, Any]] = {}
    for slot, values in overrides.items():
        if slot not in pipeline.components and slot != "settings":
            raise ParameterError(f"--set {slot}...: the pipeline {pipeline.name!r} has no {slot!r} (has: {', '.join([*pipeline.components, 'settings'])})")
        if not isinstance(values, dict):
            raise ParameterError(f"--set {slot}={values!r}: give a parameter, e.g. {slot}.NAME=VALUE")
        out[slot] = values
    return out


def draw_detection(frame: np.ndarray, det: FaceDetection | None) -> np.ndarray:
    img = frame.copy()
    if det is None:
        cv2.putText(img, "no face", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 64, 64), 2)
        return img
    t = max(1, round(min(img.shape[:2]) / 200))
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    cv2.rectangle(img, (x0, y0), (x1, y1), (64, 255, 64), t)
    if det.landmarks is not None:
        for x, y in det.landmarks:
            cv2.circle(img, (int(round(x)), int(round(y))), 2 * t, (255, 64, 64), -1)
    return img


def make_strip(rows: list[list[np.ndarray]], height: int = 160) -> np.ndarray:
    """Tile rows of images (each resized to ``height``) into one picture."""
    out_rows = []
    for row in rows:
        tiles = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height), interpolation=cv2.INTER_AREA) for im in row]
        out_rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in out_rows)
    out_rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in out_rows]
    return np.concatenate(out_rows, 0)


def run_face_crops(input_path: str | Path, output_dir: str | Path, pipeline: PipelineEntry, overrides: dict[str, Any] | None = None,
                   max_frames: int | None = None, device: str = "cpu", overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run the face-crops job; returns the report (also written to ``faces.json``)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    out_dir = Path(output_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    if max_frames is not None and max_frames < 1:
        raise ParameterError(f"--max-frames {max_frames}: must be at least 1")
    sets = _overrides(pipeline, overrides or {})
    catalog = get_catalog()
    from .params import validate_params
    from .registry import PipelineSettings

    settings = validate_params(PipelineSettings, {**asdict(pipeline.settings), **sets.get("settings", {})}, f"pipeline {pipeline.name} settings")
    if "face_processor" not in pipeline.components:
        raise ParameterError(f"pipeline {pipeline.name!r} has no face_processor; the face-crops job needs one")
    fp_ref = pipeline.components["face_processor"]
    processor = catalog.build("face_processor", fp_ref.name, {**fp_ref.raw_params(), **sets.get("face_processor", {})}, fp_ref.where).to(device)
    encoder = None
    if "identity_encoder" in pipeline.components:
        ref = pipeline.components["identity_encoder"]
        encoder = catalog.build("identity_encoder", ref.name, {**ref.raw_params(), **sets.get("identity_encoder", {})}, ref.where).to(device)
    metrics = [m.build(catalog).to(device) for m in pipeline.metrics]
    timings["load_models"] = time.perf_counter() - t_start

    source = open_frames(input_path)
    info = source.info
    n = len(source) if max_frames is None else min(len(source), max_frames)
    size = settings.crop_size

    # pass 1: detect and track
    t0 = time.perf_counter()
    track = detect_track(processor, source, n, settings.landmark_smoothing, show_progress)
    found = sum(d is not None for d in track)
    timings["detect"] = time.perf_counter() - t0
    if found == 0:
        raise NoFaceError(f"no face found in {input_path} (checked {n} frame{'s' if n != 1 else ''} with {fp_ref.name})")
    if found < n:
        warnings.append(f"no face in {n - found} of {n} frames: those frames pass through unchanged")
    if found / n < settings.min_face_frames:
        raise NoFaceError(f"a face was found in only {found} of {n} frames of {input_path} (min_face_frames={settings.min_face_frames})")

    # pass 2: align, paste back, write, score
    t0 = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    audio = info.path if info.kind == "video" and info.has_audio else None
    per_frame_metrics: dict[str, list[Any]] = {m.name: [] for m in metrics}
    identity: list[float | None] = []
    ref_emb = None
    strip_idx = set(np.linspace(0, n - 1, min(6, n)).round().astype(int).tolist())
    strip_top, strip_bottom = [], []
    try:
        with VideoWriter(tmp_dir / "crops.mp4", info.fps_fraction, size, size, audio_from=audio) as wc, \
                VideoWriter(tmp_dir / "roundtrip.mp4", info.fps_fraction, info.width, info.height, audio_from=audio) as wr, \
                progress_bar("align", n, show_progress) as bar:
            for start, chunk in source.iter_chunks(16, n):
                back_chunk = np.empty_like(chunk)
                for k, f in enumerate(chunk):
                    i = start + k
                    d = track[i]
                    if d is None:
                        crop = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                        back = f
                        identity.append(None)
                    else:
                        aligned = processor.align(f, d, size)
                        crop = aligned.crop
                        back = processor.paste_back(f, crop, aligned.matrix)
                        if encoder is not None and d.landmarks is not None:
                            x = arcface_crop(f, d.landmarks)
                            import torch

                            with torch.no_grad():
                                e = encoder.embed(torch.from_numpy(x[None]).permute(0, 3, 1, 2).float() / 255.0)[0]
                            ref_emb = e if ref_emb is None else ref_emb
                            identity.append(float((e * ref_emb).sum()))
                        else:
                            identity.append(None)
                    wc.write(crop)
                    back_chunk[k] = back
                    if i in strip_idx:
                        strip_top.append(draw_detection(f, d))
                        strip_bottom.append(crop)
                    bar.advance()
                wr.write(back_chunk)
                for m in metrics:
                    per_frame_metrics[m.name].extend(m.compute(chunk, back_chunk).get("per_frame", []))
        cv2.imwrite(str(tmp_dir / "strip.png"), cv2.cvtColor(make_strip([strip_top, strip_bottom]), cv2.COLOR_RGB2BGR))
        timings["align_write"] = time.perf_counter() - t0
        metric_values = {}
        for m in metrics:
            vals = [v for v in per_frame_metrics[m.name] if v is not None]
            metric_values[m.name] = {"value": float(np.mean(vals)) if vals else None, "higher_is_better": m.higher_is_better}
        ids = [v for v in identity if v is not None]
        report = {
            "job": "face-crops",
            "input": info.to_json(),
            "frames_processed": n,
            "frames_with_face": found,
            "pipeline": pipeline.to_json(),
            "settings": asdict(settings),
            "face_processor": fp_ref.name,
            "identity_encoder": encoder.name if encoder else None,
            "identity_to_first_frame": {"mean": float(np.mean(ids)) if ids else None, "min": float(np.min(ids)) if ids else None},
            "metrics": metric_values,
            "timings_s": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t_start}.items()},
            "warnings": warnings,
            "outputs": {k: str(out_dir / k) for k in ("crops.mp4", "roundtrip.mp4", "faces.json", "strip.png")},
            "frames": [{"index": i, "face": None if d is None else d.to_json(), "identity_to_first": identity[i]} for i, d in enumerate(track)],
        }
        (tmp_dir / "faces.json").write_text(json.dumps(report, indent=2, default=float))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        source.close()
    return report
