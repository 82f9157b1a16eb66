"""Metric ``flicker``: temporal change the edit adds of its own."""

from __future__ import annotations

from typing import Any

import numpy as np

import ipfacediff
from ipfacediff.interfaces import Metric
from ipfacediff.runtime.frames import as_frames, check_same_shape


class Flicker(Metric):
    """Mean absolute difference between the edited and the source frame-to-frame change, in [0, 1]
    units: 0 when the edit adds no temporal change of its own. Lower is better."""

    description = "flicker: mean |(edited[t+1] - edited[t]) - (source[t+1] - source[t])| in [0, 1]; lower is better"
    higher_is_better = False
    temporal = True

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, self.name)
        if len(src) < 2:
            return {"value": float("nan"), "note": "needs at least 2 frames"}
        src, ed = src.astype(np.float64) / 255, ed.astype(np.float64) / 255
        per = np.abs(np.diff(ed, axis=0) - np.diff(src, axis=0)).mean(axis=(1, 2, 3))
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


@ipfacediff.hookimpl
def register_metrics(register):
    register(Flicker, name="flicker")
