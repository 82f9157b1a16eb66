"""Propagator ``flow-residual``: the edit carried in pixel space by dense optical flow of the source.

Each keyframe's edit residual (edited minus unedited pixels) is warped to every other frame by the
optical flow computed between the *source* crops (OpenCV DIS, no weights), with a forward-backward
consistency test marking the pixels a keyframe cannot see; the keyframes on both sides are blended
by temporal distance times that confidence, and the result is added to the frame's own pixels. Where
nothing was edited the output is the source, byte for byte; non-key frames need no VAE at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

import ipfacediff
from ipfacediff.interfaces import PropagationInput, Propagator
from ipfacediff.runtime.flow import optical_flow, valid_mask, warp_back
from ipfacediff.runtime.tokens import neighbour_keys


class FlowResidual(Propagator):
    """Warp each keyframe's edit residual by the source's optical flow; blend the two keyframes."""

    description = "edit residual of the two nearest keyframes warped by the source's optical flow (DIS), occlusions down-weighted"
    space = "pixels"
    needs = ("source_pixels", "edited_pixels", "reconstructed_pixels")

    @dataclass
    class Params:
        flow: Literal["dis", "farneback"] = field(default="dis", metadata={"help": "OpenCV optical flow on the source crops"})
        keyframes: Literal["two-nearest", "nearest"] = field(default="two-nearest", metadata={"help": "blend the keyframes on both sides, or the nearest"})
        occluded_weight: float = field(default=0.05, metadata={"range": (0.0, 1.0), "help": "weight of a keyframe where its flow fails the forward-backward test"})

    def propagate(self, inp: PropagationInput) -> np.ndarray:
        src, edited = np.asarray(inp.source_pixels), np.asarray(inp.edited_pixels)
        recon = np.asarray(inp.reconstructed_pixels) if inp.reconstructed_pixels is not None else src[inp.key_rows]
        keys, at = list(inp.key_rows), list(inp.frames)
        if edited.shape != (len(keys), *src.shape[1:]) or recon.shape != edited.shape:
            raise ValueError(f"{self.name}: edited {edited.shape} / reconstructed {recon.shape} keyframes do not fit source crops {src.shape} "
                             f"at rows {keys}")
        residual = edited.astype(np.float32) - recon.astype(np.float32)
        out = src.copy()
        out[keys] = edited
        key_times = [at[k] for k in keys]
        for i in range(len(src)):
            if i in keys:
                continue
            acc = np.zeros(src.shape[1:], np.float32)
            wsum = np.zeros(src.shape[1:3], np.float32)
            for j, wt in neighbour_keys(at[i], key_times, self.params.keyframes):
                k = keys[j]
                fwd = optical_flow(src[i], src[k], self.params.flow)  # frame i -> keyframe k: where each pixel of i is in k
                bwd = optical_flow(src[k], src[i], self.params.flow)
                conf = np.where(valid_mask(fwd, bwd), 1.0, self.params.occluded_weight).astype(np.float32) * wt
                acc += conf[..., None] * warp_back(residual[j], fwd)
                wsum += conf
            carried = acc / np.maximum(wsum, 1e-6)[..., None]
            out[i] = np.clip(np.rint(src[i].astype(np.float32) + carried), 0, 255).astype(np.uint8)
        return out


@ipfacediff.hookimpl
def register_propagators(register):
    register(FlowResidual, name="flow-residual")
