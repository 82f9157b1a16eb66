"""Strategy ``per-frame`` (baseline): every frame inverted and edited independently by the pipeline's
editor, no propagation."""

from __future__ import annotations

import torch

import ipfacediff
from ipfacediff.interfaces import EditRun, Strategy
from ipfacediff.runtime.editing import edit_in_batches


class PerFrame(Strategy):
    """Invert and edit every frame of each chunk independently."""

    description = "baseline: every frame inverted and edited independently by the editor (no propagation)"
    requires = ("face_processor", "inverter", "editor")

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        return edit_in_batches(run, run.invert(run.rows(rows)), "edit_frames")


@ipfacediff.hookimpl
def register_strategies(register):
    register(PerFrame, name="per-frame")
