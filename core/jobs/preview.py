"""The preview job: an edit's keyframes only, to look at before paying for the whole clip.

Runs what an edit runs up to and including the strategy's clip-wide stage (detection, keyframe
selection, encoding, the keyframe edit: each kept in the cache as the edit keeps it, so a Render
afterwards, or a preview with a new prompt, reuses them), then renders the keyframes alone and writes
one picture: each keyframe's frame with the face box, its source crop and its edited crop.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ipfacediff.jobs.edit import EditRequest, edit_session, plan_edit, write_strip
from ipfacediff.runtime.frames import fade_outside, to_uint8


def run_preview(req: EditRequest, limit: int = 6) -> dict[str, Any]:
    """Preview the edit ``req`` asks for: ``req.output`` is the picture to write (``.png``); at most
    ``limit`` keyframes are shown (the first ones). Returns a report like the edit's, smaller."""
    picture = Path(req.output or Path.cwd() / f"{req.input.stem}-preview.png")
    if picture.suffix.lower() != ".png":
        picture = picture.with_suffix(".png")
    plan = plan_edit(replace(req, output=picture.with_suffix(".mp4"), overwrite=True, sequence=False))
    with edit_session(req, plan) as s:
        run, strategy, processor = s.run, s.comps["strategy"], s.comps["face_processor"]
        keys = run.keys[:limit]
        rows: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        with s.timings("preview_keyframes"):
            for k in keys:
                out = strategy.render(run, [k])
                edited = to_uint8(s.backbone.decode_latents(out.to(s.backbone.device))) if isinstance(out, torch.Tensor) else np.asarray(out)
                frame_index = run.face_frames[k]
                frame = s.source.get([frame_index])[0]
                m = s.matrices[k]
                rows[0].append(_with_box(frame, s.track[frame_index].box))
                rows[1].append(fade_outside(processor.align(frame, s.track[frame_index], s.backbone.resolution).crop, m, frame.shape))
                rows[2].append(fade_outside(edited[0], m, frame.shape))
        picture.parent.mkdir(parents=True, exist_ok=True)
        write_strip(picture, list(rows), s.backbone)
        keyframes = [run.face_frames[k] for k in keys]
        all_keys = [run.face_frames[k] for k in run.keys]
    return {"job": "preview", "input": str(req.input), "prompt": req.prompt, "pipeline": req.pipeline.name, "preview": str(picture),
            "keyframes": all_keys, "keyframes_shown": keyframes, "frames": plan.frames, "reused_stages": list(s.reused),
            "unet_evaluations": dict(s.backbone.unet_evals), "warnings": list(dict.fromkeys(s.warnings)),
            "backbone": {"name": s.backbone.name, "random_weights": s.backbone.is_random},
            "timings_s": {k: round(v, 3) for k, v in {**s.timings, "total": time.perf_counter() - s.t_start}.items()}}


def _with_box(frame: np.ndarray, box) -> np.ndarray:
    """A copy of ``frame`` with the face box drawn (2 px green, scaled to the frame)."""
    out = frame.copy()
    x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box, float)[:4])
    cv2.rectangle(out, (x0, y0), (x1, y1), (0, 220, 0), max(2, frame.shape[0] // 160))
    return out
