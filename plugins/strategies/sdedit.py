"""Strategy ``sdedit`` (baseline, SDEdit): every frame noised part-way by the pipeline's inverter
(``ddpm-noise``) and denoised by its editor with the target prompt."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.strategies._every_frame import EveryFrame


class SDEdit(EveryFrame):
    """Noise every frame of each chunk part-way, denoise it with the target prompt."""

    description = "baseline (SDEdit): every frame noised part-way and denoised with the target prompt"


@ipfacediff.hookimpl
def register_strategies(register):
    register(SDEdit, name="sdedit")
