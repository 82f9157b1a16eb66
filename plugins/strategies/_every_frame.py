"""What the ``per-frame`` and ``sdedit`` strategies share (a helper of this folder, not a plugin):
every frame of each chunk inverted by the pipeline's inverter and edited by its editor, no
propagation. The two differ by the inverter their pipelines give them (``ddim`` / ``ddpm-noise``)."""

from __future__ import annotations

import torch

from ipfacediff.interfaces import EditRun, Strategy
from ipfacediff.runtime.editing import edit_in_batches


class EveryFrame(Strategy):
    """Invert and edit every frame of each chunk independently."""

    requires = ("face_processor", "inverter", "editor")

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        return edit_in_batches(run, run.invert(run.rows(rows)), "edit_frames")
