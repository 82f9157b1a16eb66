"""An example third-party ipfacediff plugin (see docs/plugin-tutorial.md).

Registers a propagator, ``nearest-keyframe`` (every frame takes the edit of the keyframe nearest in
time, or a distance-weighted blend of the two around it) and a metric, ``mean-abs-diff``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import Metric, Propagator


class NearestKeyframe(Propagator):
    """Copy (or blend) the edits of the temporally nearest keyframes."""

    description = "each frame takes the edit of its nearest keyframe in time (or blends the two around it)"

    @dataclass
    class Params:
        mode: Literal["nearest", "blend"] = field(default="nearest", metadata={"help": "copy the nearest keyframe or blend the two around the frame"})

    def propagate(self, source: torch.Tensor, key_indices, edited_keys: torch.Tensor) -> torch.Tensor:
        keys = list(key_indices)
        t = source.shape[0]
        out = edited_keys.new_empty((t, *edited_keys.shape[1:]))
        for i in range(t):
            dist = [abs(i - k) for k in keys]
            if self.params.mode == "nearest" or i in keys:
                out[i] = edited_keys[int(np.argmin(dist))]
                continue
            before = [j for j, k in enumerate(keys) if k < i]
            after = [j for j, k in enumerate(keys) if k > i]
            if not before or not after:
                out[i] = edited_keys[int(np.argmin(dist))]
                continue
            a, b = before[-1], after[0]
            w = (i - keys[a]) / (keys[b] - keys[a])
            out[i] = (1 - w) * edited_keys[a] + w * edited_keys[b]
        return out


class MeanAbsDiff(Metric):
    """Mean absolute pixel difference (0-255) of edited vs source frames."""

    description = "mean absolute pixel difference of edited vs source frames (0-255)"
    higher_is_better = False

    def compute(self, source, edited):
        a = np.asarray(source, dtype=np.float64)
        b = np.asarray(edited, dtype=np.float64)
        if a.ndim == 3:
            a, b = a[None], b[None]
        per = np.abs(a - b).reshape(len(a), -1).mean(1)
        return {"value": float(per.mean()), "per_frame": per.tolist()}


@ipfacediff.hookimpl
def register_propagators(register):
    register(NearestKeyframe, name="nearest-keyframe")


@ipfacediff.hookimpl
def register_metrics(register):
    register(MeanAbsDiff, name="mean-abs-diff")
