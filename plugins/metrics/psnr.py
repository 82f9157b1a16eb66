"""Metric ``psnr``: peak signal-to-noise ratio of edited vs source frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ipfacediff
from ipfacediff.interfaces import Metric
from ipfacediff.runtime.frames import as_frames, check_same_shape, psnr


class PSNR(Metric):
    """Peak signal-to-noise ratio of edited vs source frames, dB (mean over frames)."""

    description = "PSNR (dB) of edited vs source frames; identical frames are capped at 100 dB"
    higher_is_better = True

    @dataclass
    class Params:
        cap: float = field(
            default=100.0, metadata={"range": (1.0, None), "help": "value reported for identical frames"}
        )

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, "psnr")
        per = [min(psnr(a, b), self.params.cap) for a, b in zip(src, ed)]
        return {"value": float(np.mean(per)), "per_frame": per}


@ipfacediff.hookimpl
def register_metrics(register):
    register(PSNR, name="psnr")
