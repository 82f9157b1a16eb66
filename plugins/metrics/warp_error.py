"""Metric ``warp-error``: flow warping error of the edited video, flow taken from the source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

import ipfacediff
from ipfacediff.interfaces import Metric
from ipfacediff.runtime.flow import optical_flow, valid_mask, warp_back
from ipfacediff.runtime.frames import as_frames, check_same_shape


class WarpError(Metric):
    """Mean squared difference between each edited frame and the next edited frame warped back by the
    optical flow of the *source* (occluded pixels masked), in [0, 1]^2 units. Lower is better."""

    description = (
        "flow warping error of the edited video (flow from the source, OpenCV DIS/Farneback, occlusions masked); "
        "lower is better"
    )
    higher_is_better = False
    temporal = True

    @dataclass
    class Params:
        flow: Literal["dis", "farneback"] = field(
            default="dis", metadata={"help": "OpenCV optical flow (no weights needed)"}
        )

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, self.name)
        if len(src) < 2:
            return {"value": float("nan"), "note": "needs at least 2 frames"}
        per, base, valid_frac = [], [], []
        for t in range(len(src) - 1):
            fwd = optical_flow(src[t], src[t + 1], self.params.flow)
            bwd = optical_flow(src[t + 1], src[t], self.params.flow)
            m = valid_mask(fwd, bwd)
            valid_frac.append(float(m.mean()))
            if not m.any():
                continue
            for vid, acc in ((ed, per), (src, base)):
                warped = warp_back(vid[t + 1], fwd).astype(np.float64) / 255
                err = ((vid[t].astype(np.float64) / 255 - warped) ** 2).mean(-1)
                acc.append(float(err[m].mean()))
        if not per:
            return {"value": float("nan"), "note": "no pixel passed the occlusion test"}
        return {
            "value": float(np.mean(per)),
            "per_frame": per,
            "source_value": float(np.mean(base)),
            "valid_fraction": float(np.mean(valid_frac)),
        }


@ipfacediff.hookimpl
def register_metrics(register):
    register(WarpError, name="warp-error")
