"""Editor ``identity-injection``: the IP-FaceDiff keyframe edit.

Keyframes are denoised by eps2 (the ``edit`` adapter) with the target prompt and classifier-free
guidance while eps1's (the ``identity`` adapter, empty prompt) decoder features, computed on the
inverted latents of the same frame and timestep, are injected into eps2's decoder for the first
fraction of the steps, as Plug-and-Play injects them: the self-attention queries and keys of the
layers PnP takes (every decoder self-attention but the first) and the *residual branch* of
``up_blocks[1].resnets[1]`` (its output before the skip connection; eps2 keeps its own skip path).
Whatever turns this off without being asked (an adapter not loaded, an inversion without a latent
for a sampling timestep) is said as an :class:`~ipfacediff.errors.EditWarning`. Keyframes are edited jointly:
their self-attention shares keys and values across keyframes (extended attention), so they agree
with each other. Ablations are parameters: ``injection: false``, ``edit_adapter: false``,
``identity_adapter: false``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

import ipfacediff
from ipfacediff.errors import EditWarning
from ipfacediff.interfaces import Backbone, Editor, Inversion
from ipfacediff.runtime.attention import (
    FeatureController,
    controlled_unet,
    decoder_self_attention_layers,
    pnp_attention_layers,
)
from ipfacediff.runtime.diffusion import cfg_combine


class IdentityInjection(Editor):
    """eps2 edits keyframes jointly while eps1's decoder features are injected."""

    description = (
        "eps2 (edit adapter) denoises keyframes jointly with CFG while eps1's (identity adapter) decoder features are "
        "injected"
    )

    @dataclass
    class Params:
        guidance_scale: float = field(default=7.5, metadata={"range": (1.0, 50.0), "help": "classifier-free guidance"})
        attn_fraction: float = field(
            default=0.5, metadata={"range": (0.0, 1.0), "help": "fraction of steps with self-attention q/k injection"}
        )
        residual_fraction: float = field(
            default=0.8, metadata={"range": (0.0, 1.0), "help": "fraction of steps with residual feature injection"}
        )
        injection: bool = field(default=True, metadata={"help": "ablation: false turns identity injection off"})
        identity_adapter: bool = field(default=True, metadata={"help": "ablation: false makes eps1 the base model"})
        edit_adapter: bool = field(default=True, metadata={"help": "ablation: false makes eps2 the base model"})
        joint: bool = field(default=True, metadata={"help": "extended attention across the keyframes"})
        up_blocks: list[int] | None = field(
            default=None,
            metadata={
                "help": (
                    "decoder blocks whose self-attention q/k are injected (null: Plug-and-Play's layers, every "
                    "decoder self-attention but the first)"
                )
            },
        )
        residual: bool = field(
            default=True, metadata={"help": "inject the residual branch of Plug-and-Play's up_blocks[1].resnets[1]"}
        )
        thresholds: Literal["round", "int"] = field(
            default="round",
            metadata={
                "help": "steps injected: round(fraction * steps) (default) or int(fraction * steps), as "
                "Plug-and-Play's and TokenFlow's code count them (the two differ at e.g. 10 steps and 0.35 / 0.75)"
            },
        )

    def injected_steps(self, fraction: float, steps: int) -> int:
        """How many of the first steps a fraction injects (see ``thresholds``)."""
        return int(fraction * steps) if self.params.thresholds == "int" else round(fraction * steps)

    @property
    def guidance_scale(self) -> float:  # type: ignore[override]
        return self.params.guidance_scale

    def edit(
        self,
        backbone: Backbone,
        inversion: Inversion,
        prompt_embeds: torch.Tensor,
        uncond_embeds: torch.Tensor,
        source_embeds: torch.Tensor,
    ) -> torch.Tensor:
        from diffusers import DDIMScheduler

        p = self.params
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        sched.set_timesteps(inversion.steps)
        ts = inversion.denoise_timesteps
        n = len(ts)
        x = inversion.start_latent.to(backbone.device, torch.float32)
        k = x.shape[0]
        use_cfg = p.guidance_scale != 1.0
        emb = (
            torch.cat([uncond_embeds.expand(k, -1, -1), prompt_embeds.expand(k, -1, -1)])
            if use_cfg
            else prompt_embeds.expand(k, -1, -1)
        )
        layers = (
            pnp_attention_layers(backbone.unet)
            if p.up_blocks is None
            else decoder_self_attention_layers(backbone.unet, p.up_blocks)
        )
        ctrl = FeatureController(attn_layers=set(layers))
        res_layers = None if p.residual else []
        self.check(backbone)
        missing = []
        with controlled_unet(backbone.unet, ctrl, res_layers):
            for i, t in enumerate(ts):
                src = inversion.latent_at(t)
                if (
                    src is None
                    and p.injection
                    and i < self.injected_steps(max(p.attn_fraction, p.residual_fraction), n)
                ):
                    missing.append(int(t))
                inject = p.injection and src is not None
                ctrl.inject_attn = inject and i < self.injected_steps(p.attn_fraction, n)
                ctrl.inject_res = inject and p.residual and i < self.injected_steps(p.residual_fraction, n)
                if ctrl.inject_attn or ctrl.inject_res:
                    backbone.set_adapter("identity" if p.identity_adapter else None)
                    ctrl.mode, ctrl.extended = "capture", False
                    backbone.predict_noise(src.to(backbone.device), t, source_embeds, "feature")
                backbone.set_adapter("edit" if p.edit_adapter else None)
                ctrl.mode, ctrl.extended, ctrl.group_size = "inject", p.joint and k > 1, k
                if use_cfg:
                    eps = cfg_combine(
                        backbone.predict_noise(torch.cat([x, x]), t, emb, "keyframe-edit"), p.guidance_scale
                    )
                else:
                    eps = backbone.predict_noise(x, t, emb, "keyframe-edit")
                x = sched.step(eps, t, x).prev_sample
        backbone.set_adapter(None)
        if missing:
            warnings.warn(
                f"identity injection was off at {len(missing)} of {len(ts)} steps (timesteps "
                f"{missing[:4]}{'...' if len(missing) > 4 else ''}): "
                f"the inversion has no latent there (its timesteps {inversion.timesteps[:3]}... do not match the "
                "sampler's)",
                EditWarning,
                stacklevel=2,
            )
        return x.float()

    def check(self, backbone: Backbone) -> None:
        """Say so when eps1 or eps2 will be the base model because its adapter is not loaded."""
        p, loaded = self.params, set(backbone.adapters)
        absent = [
            n
            for n, on in (("identity", p.identity_adapter and p.injection), ("edit", p.edit_adapter))
            if on and n not in loaded
        ]
        if absent:
            what = {"identity": "eps1 (identity features)", "edit": "eps2 (the edit)"}
            warnings.warn(
                f"no {' or '.join(repr(a) for a in absent)} adapter loaded: {' and '.join(what[a] for a in absent)} "
                f"{'is' if len(absent) == 1 else 'are'} the base model; train with `ipfacediff finetune {absent[0]} "
                "...` "
                f"and load with --set backbone.adapters.{absent[0]}=DIR",
                EditWarning,
                stacklevel=2,
            )


@ipfacediff.hookimpl
def register_editors(register):
    register(IdentityInjection, name="identity-injection")
