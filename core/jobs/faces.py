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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ipfacediff.errors import NoFaceError, OutputExistsError, ParameterError
from ipfacediff.jobs.common import Timings, build_slot, check_sets
from ipfacediff.params import validate_params
from ipfacediff.registry import PipelineEntry, PipelineSettings
from ipfacediff.runtime.face import arcface_crop, detect_track
from ipfacediff.runtime.frames import draw_detection, make_strip, to_tensor
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.video import VideoWriter, open_frames


@dataclass
class _Pass:
    """What the align / paste-back pass gathers per frame."""

    identity: list[float | None] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    strip: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))
    ref: torch.Tensor | None = None


def _identity_to_first(encoder, frame: np.ndarray, det, acc: _Pass) -> float | None:
    """Identity cosine of this frame's face to the first face's (None without an encoder or landmarks)."""
    if encoder is None or det is None or det.landmarks is None:
        return None
    with torch.no_grad():
        e = encoder.embed(to_tensor(arcface_crop(frame, det.landmarks)[None]))[0]
    acc.ref = e if acc.ref is None else acc.ref
    return float((e * acc.ref).sum())


def _align_pass(source, n: int, track, processor, encoder, metrics, size: int, folder: Path, show: bool) -> _Pass:
    """Align every frame's face (a resized frame where there is none), paste it back, write the
    crops and the round trip, score the round trip and keep a strip of six frames."""
    info = source.info
    audio = info.path if info.kind == "video" and info.has_audio else None
    acc = _Pass(metrics={m.name: [] for m in metrics})
    strip_idx = set(np.linspace(0, n - 1, min(6, n)).round().astype(int).tolist())
    with VideoWriter(folder / "crops.mp4", info.fps_fraction, size, size, audio_from=audio) as wc, \
            VideoWriter(folder / "roundtrip.mp4", info.fps_fraction, info.width, info.height, audio_from=audio) as wr, \
            progress_bar("align", n, show) as bar:
        for start, chunk in source.iter_chunks(16, n):
            back_chunk = np.empty_like(chunk)
            for k, f in enumerate(chunk):
                d = track[start + k]
                if d is None:
                    crop, back_chunk[k] = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA), f
                else:
                    aligned = processor.align(f, d, size)
                    crop, back_chunk[k] = aligned.crop, processor.paste_back(f, aligned.crop, aligned.matrix)
                acc.identity.append(_identity_to_first(encoder, f, d, acc))
                wc.write(crop)
                if start + k in strip_idx:
                    acc.strip[0].append(draw_detection(f, d))
                    acc.strip[1].append(crop)
                bar.advance()
            wr.write(back_chunk)
            for m in metrics:
                acc.metrics[m.name].extend(m.compute(chunk, back_chunk).get("per_frame", []))
    cv2.imwrite(str(folder / "strip.png"), cv2.cvtColor(make_strip(list(acc.strip)), cv2.COLOR_RGB2BGR))
    return acc


def run_face_crops(input_path: str | Path, output_dir: str | Path, pipeline: PipelineEntry, overrides: dict[str, Any] | None = None,
                   max_frames: int | None = None, device: str = "cpu", overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Run the face-crops job: detect and track, align / paste back / write / score, report (also
    written to ``faces.json``). Everything is written into a hidden folder renamed to ``output_dir``."""
    t_start = time.perf_counter()
    timings, warnings = Timings(), []
    out_dir = Path(output_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    if max_frames is not None and max_frames < 1:
        raise ParameterError(f"--max-frames {max_frames}: must be at least 1")
    sets = overrides or {}
    check_sets(sets, pipeline, "pipeline", extra=("settings",))
    settings = validate_params(PipelineSettings, {**asdict(pipeline.settings), **sets.get("settings", {})}, f"pipeline {pipeline.name} settings")
    if "face_processor" not in pipeline.components:
        raise ParameterError(f"pipeline {pipeline.name!r} has no face_processor; the face-crops job needs one")
    processor = build_slot(pipeline, "face_processor", sets, device)
    encoder = build_slot(pipeline, "identity_encoder", sets, device) if "identity_encoder" in pipeline.components else None
    metrics = [m.build().to(device) for m in pipeline.metrics]
    timings["load_models"] = time.perf_counter() - t_start
    source = open_frames(input_path)
    n = len(source) if max_frames is None else min(len(source), max_frames)
    tmp_dir = None
    try:
        with timings("detect"):
            track = detect_track(processor, source, n, settings.landmark_smoothing, show_progress)
        found = sum(d is not None for d in track)
        if found == 0:
            raise NoFaceError(f"no face found in {input_path} (checked {n} frame{'s' if n != 1 else ''} with {processor.name})")
        if found < n:
            warnings.append(f"no face in {n - found} of {n} frames: those frames pass through unchanged")
        if found / n < settings.min_face_frames:
            raise NoFaceError(f"a face was found in only {found} of {n} frames of {input_path} (min_face_frames={settings.min_face_frames})")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        with timings("align_write"):
            acc = _align_pass(source, n, track, processor, encoder, metrics, settings.crop_size, tmp_dir, show_progress)
        report = _faces_report(source.info, n, found, track, pipeline, settings, processor, encoder, metrics, acc, out_dir, timings, warnings, t_start)
        (tmp_dir / "faces.json").write_text(json.dumps(report, indent=2, default=float))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_dir.rename(out_dir)  # the folder appears under its final name complete
    except BaseException:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        source.close()
    return report


def _faces_report(info, n: int, found: int, track, pipeline: PipelineEntry, settings, processor, encoder, metrics, acc: _Pass, out_dir: Path,
                  timings: Timings, warnings: list[str], t_start: float) -> dict[str, Any]:
    metric_values = {}
    for m in metrics:
        vals = [v for v in acc.metrics[m.name] if v is not None]
        metric_values[m.name] = {"value": float(np.mean(vals)) if vals else None, "higher_is_better": m.higher_is_better}
    ids = [v for v in acc.identity if v is not None]
    return {
        "job": "face-crops", "input": info.to_json(), "frames_processed": n, "frames_with_face": found, "pipeline": pipeline.to_json(),
        "settings": asdict(settings), "face_processor": processor.name, "identity_encoder": encoder.name if encoder else None,
        "identity_to_first_frame": {"mean": float(np.mean(ids)) if ids else None, "min": float(np.min(ids)) if ids else None},
        "metrics": metric_values,
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t_start}.items()},
        "warnings": warnings,
        "outputs": {k: str(out_dir / k) for k in ("crops.mp4", "roundtrip.mp4", "faces.json", "strip.png")},
        "frames": [{"index": i, "face": None if d is None else d.to_json(), "identity_to_first": acc.identity[i]} for i, d in enumerate(track)],
    }
