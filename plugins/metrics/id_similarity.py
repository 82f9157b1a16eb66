"""Metric ``id-similarity``: identity cosine of each edited frame to its source frame."""

from __future__ import annotations

from typing import Any

import numpy as np

import ipfacediff
from ipfacediff.plugins.metrics._bases import IdentityMetric
from ipfacediff.runtime.frames import as_frames, check_same_shape


class IdSimilarity(IdentityMetric):
    """Mean cosine between identity embeddings of each edited frame and its source frame."""

    description = "identity cosine of edited vs source frames (face found in the source, same crop in both)"

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, "id-similarity")
        es, ee, lms = self.embeddings(src, ed)
        if len(es) == 0:
            return {"value": float("nan"), "per_frame": [None] * len(src), "note": "no face found in any source frame"}
        cos = iter(np.sum(es * ee, -1).tolist())
        per = [None if lm is None else float(next(cos)) for lm in lms]
        vals = [v for v in per if v is not None]
        return {"value": float(np.mean(vals)), "per_frame": per, "frames_with_face": len(vals)}


@ipfacediff.hookimpl
def register_metrics(register):
    register(IdSimilarity, name="id-similarity")
