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
from ipfacediff.interfaces import Metric, PropagationInput, Propagator


class NearestKeyframe(Propagator):
    """Copy (or blend) the edits of the temporally nearest keyframes."""

    description = "each frame takes the edit of its nearest keyframe in time (or blends the two around it)"

    @dataclass
    class Params:
        mode: Literal["nearest", "blend"] = field(
            default="nearest", metadata={"help": "copy the nearest keyframe or blend the two around the frame"}
        )

    space = "latents"
    needs = ("edited_latents",)

    def propagate(self, inp: PropagationInput) -> torch.Tensor:
        # times come from inp.frames (clip frame indices), not row positions: the edit calls this
        # chunk by chunk, with the keyframes on both sides of the chunk as extra rows
        edited, at = inp.edited_latents, inp.frames
        keys = [at[r] for r in inp.key_rows]
        out = edited.new_empty((len(at), *edited.shape[1:]))
        for i, time in enumerate(at):
            dist = [abs(time - k) for k in keys]
            if self.params.mode == "nearest" or time in keys:
                out[i] = edited[int(np.argmin(dist))]
                continue
            before = [j for j, k in enumerate(keys) if k < time]
            after = [j for j, k in enumerate(keys) if k > time]
            if not before or not after:
                out[i] = edited[int(np.argmin(dist))]
                continue
            a, b = before[-1], after[0]
            w = (time - keys[a]) / (keys[b] - keys[a])
            out[i] = (1 - w) * edited[a] + w * edited[b]
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
