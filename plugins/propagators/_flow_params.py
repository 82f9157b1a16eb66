"""What the flow-based propagators of this folder share (a helper, not a plugin): the parameters of
the optical flow and of the keyframe blend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class FlowParams:
    flow: Literal["dis", "farneback"] = field(
        default="dis", metadata={"help": "OpenCV optical flow on the source frames"}
    )
    keyframes: Literal["two-nearest", "nearest"] = field(
        default="two-nearest", metadata={"help": "blend the keyframes on both sides, or the nearest"}
    )
    occluded_weight: float = field(
        default=0.05,
        metadata={
            "range": (0.0, 1.0),
            "help": "weight of a keyframe where its motion fails the forward-backward test",
        },
    )
