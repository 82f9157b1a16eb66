"""Propagator ``flow-residual``: the edit carried in pixel space by dense optical flow of the source.

Each keyframe's edit residual (edited minus unedited pixels) is warped to every other frame by the
optical flow computed between the *source* frames (OpenCV DIS, no weights), with a forward-backward
consistency test marking the pixels a keyframe cannot see; the keyframes on both sides are blended
by temporal distance times that confidence, and the result is added to the frame's own pixels. Where
nothing was edited the output is the source, byte for byte; non-key frames need no VAE at all.
``carry=pixels`` warps the edited keyframes themselves instead (the benchmark's "flow warp of the
edited frames" row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

import ipfacediff
from ipfacediff.interfaces import PropagationInput, Propagator
from ipfacediff.plugins.propagators._flow_params import FlowParams
from ipfacediff.runtime.flow import carry_keyframes, optical_flow


class FlowResidual(Propagator):
    """Warp each keyframe's edit residual by the source's optical flow; blend the two keyframes."""

    description = (
        "edit residual of the two nearest keyframes warped by the source's optical flow (DIS), occlusions "
        "down-weighted"
    )
    space = "pixels"
    needs = ("source_pixels", "edited_pixels", "reconstructed_pixels")

    @dataclass
    class Params(FlowParams):
        carry: Literal["residual", "pixels"] = field(
            default="residual", metadata={"help": "carry the edit residual, or the edited keyframe's pixels"}
        )

    def propagate(self, inp: PropagationInput) -> np.ndarray:
        src, edited = np.asarray(inp.source_pixels), np.asarray(inp.edited_pixels)
        recon = inp.reconstructed_pixels
        keys, method = list(inp.key_rows), self.params.flow

        def flows(i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
            return optical_flow(src[i], src[keys[j]], method), optical_flow(src[keys[j]], src[i], method)

        try:
            return carry_keyframes(
                src,
                edited,
                recon,
                keys,
                inp.frames,
                flows,
                self.params.keyframes,
                self.params.occluded_weight,
                self.params.carry,
            )
        except ValueError as exc:
            raise ValueError(f"{self.name}: {exc}") from None


@ipfacediff.hookimpl
def register_propagators(register):
    register(FlowResidual, name="flow-residual")
