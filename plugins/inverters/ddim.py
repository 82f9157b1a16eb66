"""Inverter ``ddim``: deterministic DDIM inversion with diffusers' ``DDIMInverseScheduler``, batched
over frames, the trajectory kept (editors inject features at every timestep). A pure function of its
inputs: the edit job caches what it returns. Checkpoints whose scheduler uses a spacing
``DDIMInverseScheduler`` refuses (``timestep_spacing: linspace``) are inverted by the same DDIM
update up the sampler's own timesteps, so the editor finds a latent at every step it samples.

By default the inversion runs the sampler's step count with the empty prompt and the sampler starts
from its last latent. TokenFlow's published preprocessing differs in three ways, each a parameter
(the ``tokenflow-published`` pipeline sets all three): ``steps`` inverts with more steps than the
sampler runs (TokenFlow: 500 for 50 sampling steps) and keeps the latents at the sampling timesteps
(and the last one); ``start: tokenflow`` starts the sampler from ``add_noise(z0, eps, t0)``, with
``eps`` the noise the last inverted latent implies, ``(x_T - sqrt(a_T) z0) / sqrt(1 - a_T)``, and
``t0`` the sampler's first timestep; ``prompt`` conditions the inversion (TokenFlow's
``--inversion_prompt``; strategies that run a source branch condition it on the same prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

import ipfacediff
from ipfacediff.interfaces import Backbone, Inversion, Inverter
from ipfacediff.runtime.diffusion import inverse_steps, sampling_timesteps


class DDIMInversion(Inverter):
    """Deterministic DDIM inversion; the trajectory at the sampler's timesteps is kept."""

    description = "DDIM inversion (DDIMInverseScheduler), batched over frames, trajectory kept"

    @dataclass
    class Params:
        batch_size: int = field(default=8, metadata={"range": (1, 1024), "help": "frames per UNet call"})
        steps: int | None = field(
            default=None,
            metadata={
                "range": (1, 1000),
                "help": "inversion steps (null: the sampler's; TokenFlow as published: 500); the latents at the "
                "sampler's timesteps are kept",
            },
        )
        start: Literal["inverted", "tokenflow"] = field(
            default="inverted",
            metadata={
                "help": "inverted: sample from the last inverted latent; tokenflow: from add_noise(z0, eps of the "
                "last inverted latent, first sampling timestep), as TokenFlow's code does"
            },
        )
        prompt: str = field(
            default="",
            metadata={"help": "the prompt the inversion (and a strategy's source branch) is conditioned on"},
        )

    def invert(
        self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0
    ) -> Inversion:
        p = self.params
        n_inv = p.steps or steps
        ts, step = self._steps(backbone, n_inv)
        sampled = sampling_timesteps(backbone.scheduler_config, steps)
        keep = set(ts) if n_inv == steps else {*sampled, ts[-1]}
        if p.prompt:
            prompt_embeds = backbone.encode_prompt([p.prompt])
        chunks = []
        for start in range(0, latents.shape[0], p.batch_size):
            x = latents[start : start + p.batch_size].to(backbone.device, torch.float32)
            emb = prompt_embeds if prompt_embeds.shape[0] == 1 else prompt_embeds[start : start + p.batch_size]
            traj = []
            for k, t in enumerate(ts):
                eps = backbone.predict_noise(x, t, emb, "inversion")
                x = step(eps, k, x)
                if t in keep:
                    traj.append(x.float().cpu())
            chunks.append(traj)
        kept = [t for t in ts if t in keep]
        trajectory = [latents.float().cpu()] + [torch.cat([c[i] for c in chunks]) for i in range(len(kept))]
        start_latent = None
        if p.start == "tokenflow":
            start_latent = renoise(backbone.scheduler_config, trajectory[0], trajectory[-1], kept[-1], sampled[0])
        extras = {"inversion_steps": n_inv, "prompt": p.prompt, "start": p.start}
        return Inversion(kept, trajectory, sampled, steps, extras, start_latent)

    @staticmethod
    def _steps(backbone: Backbone, n: int):
        from diffusers import DDIMInverseScheduler

        try:
            inv = DDIMInverseScheduler.from_config(backbone.scheduler_config)
            inv.set_timesteps(n)
        except ValueError:  # a timestep spacing it refuses ("linspace")
            return inverse_steps(backbone.scheduler_config, n)

        def step(eps: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
            return inv.step(eps, inv.timesteps[k], x).prev_sample

        return [int(t) for t in inv.timesteps], step


def renoise(scheduler_config, z0: torch.Tensor, x_last: torch.Tensor, t_last: int, t0: int) -> torch.Tensor:
    """TokenFlow's start latent: ``z0`` noised to ``t0`` by the noise that the inverted latent
    ``x_last`` at ``t_last`` implies (``scheduler.add_noise(z0, eps, t0)``)."""
    from diffusers import DDIMScheduler

    ac = DDIMScheduler.from_config(scheduler_config).alphas_cumprod
    a_last, a0 = float(ac[t_last]), float(ac[t0])
    eps = (x_last - a_last**0.5 * z0) / (1 - a_last) ** 0.5
    return a0**0.5 * z0 + (1 - a0) ** 0.5 * eps


@ipfacediff.hookimpl
def register_inverters(register):
    register(DDIMInversion, name="ddim")
