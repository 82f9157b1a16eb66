"""Strategy ``tokenflow`` (baseline, TokenFlow-style): every frame inverted and denoised; the
keyframes share extended self-attention, the other frames take the keyframes' attention outputs at
their nearest tokens. Each chunk is denoised on its own (how TokenFlow's users split long clips);
its keyframes are the clip's keyframes inside the chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.interfaces import Backbone, EditRun, Inversion, Strategy
from ipfacediff.runtime.attention import FeatureController, controlled_unet
from ipfacediff.runtime.diffusion import cfg_combine
from ipfacediff.runtime.progress import progress_bar


def tokenflow_denoise(backbone: Backbone, inv: Inversion, keys: list[int], target: torch.Tensor, uncond: torch.Tensor,
                      guidance: float, show: bool = False) -> torch.Tensor:
    """All frames of ``inv`` denoised together; keyframes (rows ``keys``) share extended attention,
    the others take the keyframes' attention outputs at their nearest tokens."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    sched.set_timesteps(inv.steps)
    x = inv.trajectory[-1].to(backbone.device)
    t_frames = x.shape[0]
    emb = torch.cat([uncond.expand(t_frames, -1, -1), target.expand(t_frames, -1, -1)])
    ctrl = FeatureController(mode="tokenflow", group_size=t_frames, key_positions=list(keys))
    backbone.set_adapter("edit")
    with controlled_unet(backbone.unet, ctrl, []), progress_bar("denoise", len(inv.denoise_timesteps), show) as bar:
        for t in inv.denoise_timesteps:
            eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "denoise"), guidance)
            x = sched.step(eps, t, x).prev_sample
            bar.advance()
    backbone.set_adapter(None)
    return x.cpu()


class TokenFlow(Strategy):
    """Invert every frame; denoise each chunk jointly with keyframe attention propagated."""

    description = "baseline (TokenFlow-style): every frame inverted and denoised, keyframe attention outputs carried to nearest tokens"
    requires = ("face_processor", "inverter")

    @dataclass
    class Params:
        guidance_scale: float | None = field(default=None, metadata={"range": (1.0, 50.0), "help": "classifier-free guidance (null: the editor's, else 7.5)"})

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        inv = run.invert(run.rows(rows))
        keyset = set(run.keys)
        local = [p for p, r in enumerate(rows) if r in keyset] or [len(rows) // 2]
        guidance = self.params.guidance_scale
        if guidance is None:
            guidance = run.components["editor"].guidance_scale if "editor" in run.components else 7.5
        with run.timer("denoise_all"):
            return tokenflow_denoise(run.backbone, inv, local, run.embeds["target"], run.embeds["uncond"], guidance, False).float()


@ipfacediff.hookimpl
def register_strategies(register):
    register(TokenFlow, name="tokenflow")
