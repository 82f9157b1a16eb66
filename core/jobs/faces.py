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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ipfacediff.errors import OutputExistsError, ParameterError
from ipfacediff.jobs.clip import ClipJob
from ipfacediff.registry import PipelineEntry
from ipfacediff.runtime.face import arcface_crop
from ipfacediff.runtime.frames import draw_detection, make_strip, to_tensor
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.video import VideoWriter


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


def _align_pass(source, n: int, track, processor, encoder, metrics, settings, folder: Path, show: bool) -> _Pass:
    """Align every frame's face (a resized frame where there is none, in a square of
    ``settings.crop_size``), paste it back, write the crops and the round trip (with the settings'
    x264 preset and CRF), score the round trip and keep a strip of six frames."""
    size = settings.crop_size
    x264 = {"crf": settings.video_crf, "preset": settings.video_preset}
    info = source.info
    audio = info.path if info.kind == "video" and info.has_audio else None
    acc = _Pass(metrics={m.name: [] for m in metrics})
    strip_idx = set(np.linspace(0, n - 1, min(6, n)).round().astype(int).tolist())
    with (
        VideoWriter(folder / "crops.mp4", info.fps_fraction, size, size, audio_from=audio, **x264) as wc,
        VideoWriter(
            folder / "roundtrip.mp4", info.fps_fraction, info.width, info.height, audio_from=audio, **x264
        ) as wr,
        progress_bar("align", n, show) as bar,
    ):
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


def run_face_crops(
    input_path: str | Path,
    output_dir: str | Path,
    pipeline: PipelineEntry,
    overrides: dict[str, Any] | None = None,
    max_frames: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the face-crops job: detect and track, align / paste back / write / score, report (also
    written to ``faces.json``). Everything is written into a hidden folder renamed to ``output_dir``."""
    out_dir = Path(output_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    job = ClipJob(
        pipeline, overrides, input=Path(input_path), max_frames=max_frames, device=device, show_progress=show_progress
    )
    settings = job.check_request(extra_slots=("settings",))
    if "face_processor" not in pipeline.components:
        raise ParameterError(f"pipeline {pipeline.name!r} has no face_processor; the face-crops job needs one")
    tmp_dir = None
    with job, job.collecting():
        with job.timer("load_models"):
            slots = [s for s in ("face_processor", "identity_encoder") if s in pipeline.components]
            job.build_components(slots)
            metrics = [m.build().to(device) for m in pipeline.metrics]
        processor, encoder = job.components["face_processor"], job.components.get("identity_encoder")
        source = job.open_source()
        try:
            found = len(job.detect(processor, passed="unchanged"))
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
            with job.timer("align_write"):
                acc = _align_pass(
                    source, job.n, job.track, processor, encoder, metrics, settings, tmp_dir, show_progress
                )
            report = _faces_report(job, found, metrics, acc, out_dir)
            (tmp_dir / "faces.json").write_text(json.dumps(report, indent=2, default=float))
            if out_dir.exists():
                shutil.rmtree(out_dir)
            tmp_dir.rename(out_dir)  # the folder appears under its final name complete
        except BaseException:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return report


def _faces_report(job: ClipJob, found: int, metrics, acc: _Pass, out_dir: Path) -> dict[str, Any]:
    """The report: per frame detections and identity to the first face, the metrics of the round trip,
    and what every job reports (components, settings, timings, versions, warnings)."""
    encoder = job.components.get("identity_encoder")
    metric_values = {}
    for m in metrics:
        vals = [v for v in acc.metrics[m.name] if v is not None]
        metric_values[m.name] = {
            "value": float(np.mean(vals)) if vals else None,
            "higher_is_better": m.higher_is_better,
        }
    ids = [v for v in acc.identity if v is not None]
    common = job.report_fields()
    return {
        "job": "face-crops",
        "input": job.source.info.to_json(),
        "frames_processed": job.n,
        "frames_with_face": found,
        "pipeline": job.pipeline.to_json(),
        "face_processor": job.components["face_processor"].name,
        "identity_encoder": encoder.name if encoder else None,
        "identity_to_first_frame": {
            "mean": float(np.mean(ids)) if ids else None,
            "min": float(np.min(ids)) if ids else None,
        },
        "metrics": metric_values,
        **{k: v for k, v in common.items() if k != "pipeline"},
        "outputs": {k: str(out_dir / k) for k in ("crops.mp4", "roundtrip.mp4", "faces.json", "strip.png")},
        "frames": [
            {"index": i, "face": None if d is None else d.to_json(), "identity_to_first": acc.identity[i]}
            for i, d in enumerate(job.track)
        ],
    }
