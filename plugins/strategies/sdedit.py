"""Strategy ``sdedit`` (baseline, SDEdit): every frame noised part-way by the pipeline's inverter
(``ddpm-noise``) and denoised by its editor with the target prompt."""

from __future__ import annotations

import torch

import ipfacediff
from ipfacediff.interfaces import EditRun, Strategy
from ipfacediff.runtime.editing import edit_in_batches


class SDEdit(Strategy):
    """Noise every frame of each chunk part-way, denoise it with the target prompt."""

    description = "baseline (SDEdit): every frame noised part-way and denoised with the target prompt"
    requires = ("face_processor", "inverter", "editor")

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        return edit_in_batches(run, run.invert(run.rows(rows)), "edit_frames")


@ipfacediff.hookimpl
def register_strategies(register):
    register(SDEdit, name="sdedit")
