"""Propagator ``latent-flow``: the edit carried in latent space by the source's optical flow.

For strategies that work on latents after propagation (``settings.refine_steps`` denoises the
propagated latents): each keyframe's latent edit residual (edited minus source latents) is warped to
every other frame by the dense optical flow computed between the *source* crops at full resolution
(OpenCV DIS, the motion ``flow-residual`` uses) and averaged down to the latent grid, with the
forward-backward occlusion confidence averaged the same way; the keyframes on both sides are blended
by temporal distance times that confidence, and the blend is added to the frame's own source
latents. Where nothing was edited the output equals the source latents. Unlike ``flow-residual`` it
needs every frame's latents (a VAE encode and decode of every frame).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import PropagationInput, Propagator
from ipfacediff.plugins.propagators._flow_params import FlowParams
from ipfacediff.runtime.flow import optical_flow, valid_mask, warp_back
from ipfacediff.runtime.tokens import neighbour_keys


def to_grid(flow: np.ndarray, conf: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A pixel flow ``[H, W, 2]`` and its confidence ``[H, W]`` averaged down to an ``h x w`` grid
    (the flow in grid cells)."""
    sx, sy = flow.shape[1] / w, flow.shape[0] / h
    small = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) / np.array([sx, sy], np.float32)
    return small.astype(np.float32), cv2.resize(conf, (w, h), interpolation=cv2.INTER_AREA)


def warp_channels(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """:func:`warp_back` for any number of channels ``[h, w, C]`` (OpenCV remaps at most 4 at once)."""
    return np.concatenate(
        [
            warp_back(np.ascontiguousarray(values[..., c : c + 4]), flow).reshape(*values.shape[:2], -1)
            for c in range(0, values.shape[-1], 4)
        ],
        -1,
    )


class LatentFlow(Propagator):
    """Warp each keyframe's latent edit residual by the source's optical flow (on the latent grid);
    blend the two keyframes."""

    description = (
        "latent edit residual of the two nearest keyframes warped by the source's optical flow averaged to the latent "
        "grid"
    )
    space = "latents"
    needs = ("source_pixels", "source_latents", "edited_latents")

    Params = FlowParams

    def propagate(self, inp: PropagationInput) -> torch.Tensor:
        src, lat, edited = np.asarray(inp.source_pixels), inp.source_latents.float(), inp.edited_latents.float()
        keys, (t, _, h, w) = list(inp.key_rows), lat.shape
        if src.shape[0] != t or edited.shape != (len(keys), *lat.shape[1:]):
            raise ValueError(
                f"{self.name}: source pixels {src.shape} / edited latents {tuple(edited.shape)} do not fit "
                f"source latents {tuple(lat.shape)} at rows {keys}"
            )
        residual = (edited - lat[keys]).permute(0, 2, 3, 1).numpy()
        out = lat.clone()
        out[keys] = edited
        key_times = [inp.frames[k] for k in keys]
        for i in range(t):
            if i in keys:
                continue
            acc, wsum = np.zeros(residual.shape[1:], np.float32), np.zeros((h, w), np.float32)
            for j, wt in neighbour_keys(inp.frames[i], key_times, self.params.keyframes):
                fwd = optical_flow(src[i], src[keys[j]], self.params.flow)
                bwd = optical_flow(src[keys[j]], src[i], self.params.flow)
                conf = np.where(valid_mask(fwd, bwd), 1.0, self.params.occluded_weight).astype(np.float32)
                flow, conf = to_grid(fwd, conf, h, w)
                acc += (conf * wt)[..., None] * warp_channels(residual[j], flow)
                wsum += conf * wt
            out[i] = lat[i] + torch.from_numpy(acc / np.maximum(wsum, 1e-6)[..., None]).permute(2, 0, 1)
        return out


@ipfacediff.hookimpl
def register_propagators(register):
    register(LatentFlow, name="latent-flow")
