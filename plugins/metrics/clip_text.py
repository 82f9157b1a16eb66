"""Metric ``clip-text``: CLIP cosine of each edited frame to the target prompt."""

from __future__ import annotations

from typing import Any

import torch

import ipfacediff
from ipfacediff.plugins.metrics._bases import ClipMetric
from ipfacediff.runtime.frames import as_frames


class ClipText(ClipMetric):
    """Mean CLIP cosine of each edited frame to the target prompt."""

    description = "CLIP image-text cosine of edited frames to the target prompt (open_clip; n/a without CLIP weights)"

    def compute_with_context(self, source, edited, context) -> dict[str, Any]:
        na = self.not_available()
        if na:
            return na
        with torch.no_grad():
            img = self.image_embeddings(as_frames(edited))
            txt = self.clip().encode_texts([context["target_prompt"]])
        per = (img @ txt.T)[:, 0].cpu().numpy()
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


@ipfacediff.hookimpl
def register_metrics(register):
    register(ClipText, name="clip-text")
