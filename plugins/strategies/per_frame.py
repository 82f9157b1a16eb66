"""Strategy ``per-frame`` (baseline): every frame inverted and edited independently by the pipeline's
editor, no propagation."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.strategies._every_frame import EveryFrame


class PerFrame(EveryFrame):
    """Invert and edit every frame of each chunk independently."""

    description = "baseline: every frame inverted and edited independently by the editor (no propagation)"


@ipfacediff.hookimpl
def register_strategies(register):
    register(PerFrame, name="per-frame")
