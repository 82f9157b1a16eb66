"""Attention capture and injection (Plug-and-Play style) through diffusers attention processors.

:class:`FeatureController` and :func:`controlled_unet` install processors and forward hooks that
capture eps1's decoder self-attention queries/keys and the residual branch of a decoder ResNet block
and inject them into eps2's decoder, optionally with extended attention across keyframes. The
UNet's original processors are restored afterwards. (TokenFlow's pivot attention and
nearest-neighbour propagation live in its strategy, ``plugins/strategies/tokenflow.py``.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- feature control
@dataclass
class FeatureController:
    """Shared state of the processors installed by :func:`controlled_unet`.

    ``mode``: ``"off"`` (plain attention), ``"capture"`` (store q/k of the selected self-attention
    layers and the selected residual outputs), ``"inject"`` (replace them by the stored ones when
    ``inject_attn``/``inject_res`` is on).
    ``group_size``: frames per group in the batch (a CFG batch is ``[uncond K, cond K]``: 2 groups of
    K); ``extended``: self-attention keys/values are shared across the frames of a group;
    ``anchors``: instead, each frame attends to its own tokens and those of the group's first
    ``anchors`` frames (refinement: the edited keyframes).
    """

    attn_layers: set[str] = field(default_factory=set)
    res_layers: set[str] = field(default_factory=set)
    mode: str = "off"
    inject_attn: bool = False
    inject_res: bool = False
    extended: bool = False
    group_size: int = 1
    anchors: int = 0
    store: dict[str, Any] = field(default_factory=dict)


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


class ControlledSelfAttention:
    """A self-attention processor (``attn1`` layers) driven by a :class:`FeatureController`."""

    def __init__(self, name: str, ctrl: FeatureController):
        self.name, self.ctrl = name, ctrl

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        ctrl = self.ctrl
        selected = self.name in ctrl.attn_layers
        if ctrl.mode == "capture" and selected:
            ctrl.store[self.name] = (q.detach(), k.detach())
        elif ctrl.mode == "inject" and selected and ctrl.inject_attn and self.name in ctrl.store:
            qs, ks = ctrl.store[self.name]
            reps = q.shape[0] // qs.shape[0]
            q, k = qs.repeat(reps, 1, 1), ks.repeat(reps, 1, 1)
        heads = attn.heads
        if ctrl.anchors and ctrl.group_size > ctrl.anchors:
            g, a = ctrl.group_size, ctrl.anchors
            bsz, n, _ = k.shape
            kk, vv = [
                torch.cat(
                    [
                        t.view(bsz // g, g, n, -1),
                        t.view(bsz // g, g, n, -1)[:, :a].reshape(bsz // g, 1, a * n, -1).expand(-1, g, -1, -1),
                    ],
                    dim=2,
                ).reshape(bsz, (a + 1) * n, -1)
                for t in (k, v)
            ]
            out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(kk, heads), split_heads(vv, heads))
            out = out.transpose(1, 2).reshape(bsz, n, -1)
        elif ctrl.extended and ctrl.group_size > 1:
            g = ctrl.group_size
            bsz, n, _ = k.shape
            kk = k.view(bsz // g, 1, g * n, -1).expand(-1, g, -1, -1).reshape(bsz, g * n, -1)
            vv = v.view(bsz // g, 1, g * n, -1).expand(-1, g, -1, -1).reshape(bsz, g * n, -1)
            out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(kk, heads), split_heads(vv, heads))
            out = out.transpose(1, 2).reshape(bsz, n, -1)
        else:
            out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
            out = out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def pnp_residual_layers(unet: torch.nn.Module) -> list[str]:
    """The ResNet block whose residual branch Plug-and-Play injects: ``resnets[1]`` of the first
    decoder block with attention (``up_blocks.1.resnets.1`` in Stable Diffusion 1.x)."""
    for i, block in enumerate(unet.up_blocks):
        if getattr(block, "attentions", None) and len(block.resnets) > 1:
            return [f"up_blocks.{i}.resnets.1"]
    return [f"up_blocks.0.resnets.{min(1, len(unet.up_blocks[0].resnets) - 1)}"]


def decoder_self_attention_layers(unet: torch.nn.Module, up_blocks: Sequence[int] | None = None) -> list[str]:
    """Processor names of the decoder's self-attention layers (optionally of some up blocks only)."""
    names = []
    for name in unet.attn_processors:
        if name.startswith("up_blocks.") and ".attn1." in name:
            idx = int(name.split(".")[1])
            if up_blocks is None or idx in up_blocks:
                names.append(name)
    return names


def pnp_attention_layers(unet: torch.nn.Module) -> list[str]:
    """The self-attention layers Plug-and-Play injects queries and keys into: every decoder
    self-attention but the first, lowest-resolution one (in Stable Diffusion 1.x
    ``up_blocks.1.attentions.1-2``, ``up_blocks.2.attentions.0-2``, ``up_blocks.3.attentions.0-2``;
    pnp-diffusers' ``res_dict = {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}``)."""
    return decoder_self_attention_layers(unet)[1:]


def skip_path(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A diffusers ``ResnetBlock2D``'s skip connection applied to its input ``x``."""
    if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None:
        raise ValueError("residual injection needs a ResNet block without up- or down-sampling")
    return block.conv_shortcut(x) if getattr(block, "conv_shortcut", None) is not None else x


def residual_hook(name: str, ctrl: FeatureController):
    """A forward hook for a ``ResnetBlock2D``: capture the *residual branch* (the block's output
    before its skip connection is added) and inject it, Plug-and-Play's way: the injected block
    outputs ``(skip(own input) + source residual) / output_scale_factor``, so the target keeps its
    own skip path and only the residual branch is the source's."""

    def hook(module, inputs, output):
        scale = getattr(module, "output_scale_factor", 1.0)
        if ctrl.mode == "capture":
            ctrl.store[name] = (output * scale - skip_path(module, inputs[0])).detach()
        elif ctrl.mode == "inject" and ctrl.inject_res and name in ctrl.store:
            res = ctrl.store[name]
            return (skip_path(module, inputs[0]) + res.repeat(output.shape[0] // res.shape[0], 1, 1, 1)) / scale
        return output

    return hook


@contextlib.contextmanager
def controlled_unet(
    unet: torch.nn.Module, ctrl: FeatureController, residual_layers: Sequence[str] | None = None
) -> Iterator[FeatureController]:
    """Install :class:`ControlledSelfAttention` on every ``attn1`` layer and capture/inject hooks on
    ``residual_layers``; restore the original processors and remove the hooks on exit."""
    original = dict(unet.attn_processors)
    procs = {
        name: (ControlledSelfAttention(name, ctrl) if ".attn1." in name else proc) for name, proc in original.items()
    }
    residual_layers = list(residual_layers if residual_layers is not None else pnp_residual_layers(unet))
    ctrl.res_layers = set(residual_layers)
    modules = dict(unet.named_modules())
    handles = [modules[name].register_forward_hook(residual_hook(name, ctrl)) for name in residual_layers]
    unet.set_attn_processor(procs)
    try:
        yield ctrl
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(original)
        ctrl.store.clear()
