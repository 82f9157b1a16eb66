"""Metric ``clip-directional``: CLIP direction similarity of the edit to the prompt change."""

from __future__ import annotations

from typing import Any

import torch

import ipfacediff
from ipfacediff.plugins.metrics._bases import ClipMetric
from ipfacediff.runtime.frames import as_frames


class ClipDirectionalMetric(ClipMetric):
    """InstructPix2Pix-style direction similarity: cos(E_I(edited) - E_I(source), E_T(target) - E_T(source prompt))."""

    description = (
        "CLIP direction similarity of (edited - source) images to (target - source) prompts (n/a without CLIP weights)"
    )

    def compute_with_context(self, source, edited, context) -> dict[str, Any]:
        na = self.not_available()
        if na:
            return na
        clip = self.clip()
        with torch.no_grad():
            d_img = self.image_embeddings(as_frames(edited)) - self.image_embeddings(as_frames(source))
            d_txt = clip.encode_texts([context["target_prompt"]]) - clip.encode_texts([context["source_prompt"]])
        per = torch.nn.functional.cosine_similarity(d_img, d_txt.expand_as(d_img), dim=-1).cpu().numpy()
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


@ipfacediff.hookimpl
def register_metrics(register):
    register(ClipDirectionalMetric, name="clip-directional")
