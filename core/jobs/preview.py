"""The preview job: an edit's keyframes only, to look at before paying for the whole clip.

Runs what an edit runs up to and including the strategy's clip-wide stage (detection, keyframe
selection, encoding, the keyframe edit: each kept in the cache as the edit keeps it, so a Render
afterwards, or a preview with a new prompt, reuses them), then renders the keyframes alone and writes
one picture: each keyframe's frame with the face box, its source crop and its edited crop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ipfacediff.jobs.edit import EditJob, EditRequest, plan_edit, write_strip
from ipfacediff.runtime.frames import fade_outside


def run_preview(req: EditRequest, limit: int = 6) -> dict[str, Any]:
    """Preview the edit ``req`` asks for: ``req.output`` is the picture to write (``.png``); at most
    ``limit`` keyframes are shown (the first ones). The edit's own steps up to ``prepare``, then the
    keyframes rendered alone. Returns a report like the edit's, smaller."""
    picture = Path(req.output or Path.cwd() / f"{req.input.stem}-preview.png")
    if picture.suffix.lower() != ".png":
        picture = picture.with_suffix(".png")
    plan = plan_edit(replace(req, output=picture.with_suffix(".mp4"), overwrite=True, sequence=False))
    with EditJob(req, plan) as job, job.collecting():
        job.build()
        job.detect()
        job.encode()
        job.prepare()
        with job.timer("preview_keyframes"):
            rows = _keyframe_rows(job, job.keys[:limit])
        picture.parent.mkdir(parents=True, exist_ok=True)
        write_strip(picture, rows, job.backbone)
    return {
        "job": "preview",
        "input": str(req.input),
        "prompt": req.prompt,
        "pipeline": req.pipeline.name,
        "preview": str(picture),
        "keyframes": [job.face_frames[k] for k in job.keys],
        "keyframes_shown": [job.face_frames[k] for k in job.keys[:limit]],
        "frames": plan.frames,
        "reused_stages": list(job.reused),
        "unet_evaluations": dict(job.backbone.unet_evals),
        "warnings": list(dict.fromkeys(job.warnings)),
        "backbone": {"name": job.backbone.name, "random_weights": job.backbone.is_random},
        "timings_s": job.report_fields()["timings_s"],
    }


def _keyframe_rows(job: EditJob, keys: list[int]) -> list[list[np.ndarray]]:
    """Each keyframe's frame with the face box, its source crop and its edited crop (outside the frame
    shown faded)."""
    rows: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for k in keys:
        edited = job.edited_crops([k])[k]
        frame_index = job.face_frames[k]
        frame = job.source.get([frame_index])[0]
        m = job.matrices[k]
        rows[0].append(_with_box(frame, job.track[frame_index].box))
        rows[1].append(fade_outside(job.crops([k])[0], m, frame.shape))
        rows[2].append(fade_outside(edited, m, frame.shape))
    return list(rows)


def _with_box(frame: np.ndarray, box) -> np.ndarray:
    """A copy of ``frame`` with the face box drawn (2 px green, scaled to the frame)."""
    out = frame.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box, float)[:4])
    cv2.rectangle(out, (x0, y0), (x1, y1), (0, 220, 0), max(2, frame.shape[0] // 160))
    return out
