"""Inverter ``ddpm-noise``: SDEdit-style noising of the clean latents to one level in a single step
(seeded Gaussian noise, no UNet calls); the editor denoises from there."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.interfaces import Backbone, Inversion, Inverter
from ipfacediff.runtime.diffusion import sampling_timesteps


class DDPMNoise(Inverter):
    """SDEdit: noise the clean latents to ``strength`` of the schedule with seeded Gaussian noise."""

    description = "SDEdit-style noising to a strength (no UNet calls); the editor denoises from there"

    @dataclass
    class Params:
        strength: float = field(
            default=0.6, metadata={"range": (0.01, 1.0), "help": "fraction of the schedule to noise to"}
        )

    def invert(
        self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0
    ) -> Inversion:
        from diffusers import DDIMScheduler

        ts = sampling_timesteps(backbone.scheduler_config, steps)
        n = max(1, min(len(ts), round(self.params.strength * len(ts))))
        run = ts[len(ts) - n :]
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
        xt = sched.add_noise(latents.float().cpu(), noise, torch.tensor([run[0]]))
        return Inversion([run[0]], [latents.float().cpu(), xt], run, steps, {"strength": self.params.strength})


@ipfacediff.hookimpl
def register_inverters(register):
    register(DDPMNoise, name="ddpm-noise")
