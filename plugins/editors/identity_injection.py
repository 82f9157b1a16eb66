"""Editor ``identity-injection``: the IP-FaceDiff keyframe edit.

Keyframes are denoised by eps2 (the ``edit`` adapter) with the target prompt and classifier-free
guidance while eps1's (the ``identity`` adapter, empty prompt) decoder self-attention queries/keys
and residual features, computed on the inverted latents of the same frame and timestep, are
injected into eps2's decoder for the first fraction of the steps. Keyframes are edited jointly:
their self-attention shares keys and values across keyframes (extended attention), so they agree
with each other. Ablations are parameters: ``injection: false``, ``edit_adapter: false``,
``identity_adapter: false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.runtime.attention import FeatureController, controlled_unet, decoder_self_attention_layers
from ipfacediff.runtime.diffusion import cfg_combine
from ipfacediff.interfaces import Backbone, Editor, Inversion


class IdentityInjection(Editor):
    """eps2 edits keyframes jointly while eps1's decoder features are injected."""

    description = "eps2 (edit adapter) denoises keyframes jointly with CFG while eps1's (identity adapter) decoder features are injected"

    @dataclass
    class Params:
        guidance_scale: float = field(default=7.5, metadata={"range": (1.0, 50.0), "help": "classifier-free guidance"})
        attn_fraction: float = field(default=0.5, metadata={"range": (0.0, 1.0), "help": "fraction of steps with self-attention q/k injection"})
        residual_fraction: float = field(default=0.8, metadata={"range": (0.0, 1.0), "help": "fraction of steps with residual feature injection"})
        injection: bool = field(default=True, metadata={"help": "ablation: false turns identity injection off"})
        identity_adapter: bool = field(default=True, metadata={"help": "ablation: false makes eps1 the base model"})
        edit_adapter: bool = field(default=True, metadata={"help": "ablation: false makes eps2 the base model"})
        joint: bool = field(default=True, metadata={"help": "extended attention across the keyframes"})
        up_blocks: list[int] | None = field(default=None, metadata={"help": "decoder blocks whose self-attention is injected (null: all)"})
        residual: bool = field(default=True, metadata={"help": "inject the residual features (Plug-and-Play's up_blocks[1].resnets[1])"})

    @property
    def guidance_scale(self) -> float:  # type: ignore[override]
        return self.params.guidance_scale

    def edit(self, backbone: Backbone, inversion: Inversion, prompt_embeds: torch.Tensor, uncond_embeds: torch.Tensor,
             source_embeds: torch.Tensor) -> torch.Tensor:
        from diffusers import DDIMScheduler

        p = self.params
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        sched.set_timesteps(inversion.steps)
        ts = inversion.denoise_timesteps
        x = inversion.trajectory[-1].to(backbone.device, torch.float32)
        k = x.shape[0]
        use_cfg = p.guidance_scale != 1.0
        emb = torch.cat([uncond_embeds.expand(k, -1, -1), prompt_embeds.expand(k, -1, -1)]) if use_cfg else prompt_embeds.expand(k, -1, -1)
        ctrl = FeatureController(attn_layers=set(decoder_self_attention_layers(backbone.unet, p.up_blocks)))
        res_layers = None if p.residual else []
        with controlled_unet(backbone.unet, ctrl, res_layers):
            for i, t in enumerate(ts):
                src = inversion.latent_at(t)
                inject = p.injection and src is not None
                ctrl.inject_attn = inject and i < round(p.attn_fraction * len(ts))
                ctrl.inject_res = inject and p.residual and i < round(p.residual_fraction * len(ts))
                if ctrl.inject_attn or ctrl.inject_res:
                    backbone.set_adapter("identity" if p.identity_adapter else None)
                    ctrl.mode, ctrl.extended = "capture", False
                    backbone.predict_noise(src.to(backbone.device), t, source_embeds, "feature")
                backbone.set_adapter("edit" if p.edit_adapter else None)
                ctrl.mode, ctrl.extended, ctrl.group_size = "inject", p.joint and k > 1, k
                if use_cfg:
                    eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "keyframe-edit"), p.guidance_scale)
                else:
                    eps = backbone.predict_noise(x, t, emb, "keyframe-edit")
                x = sched.step(eps, t, x).prev_sample
        backbone.set_adapter(None)
        return x.float()


@ipfacediff.hookimpl
def register_editors(register):
    register(IdentityInjection, name="identity-injection")
