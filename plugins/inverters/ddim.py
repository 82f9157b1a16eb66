"""Inverter ``ddim``: deterministic DDIM inversion with diffusers' ``DDIMInverseScheduler``, batched
over frames, the whole trajectory kept (editors inject features at every timestep). A pure function
of its inputs: the edit job caches what it returns. Checkpoints whose scheduler uses a spacing
``DDIMInverseScheduler`` refuses (``timestep_spacing: linspace``) are inverted by the same DDIM
update up the sampler's own timesteps, so the editor finds a latent at every step it samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.interfaces import Backbone, Inversion, Inverter
from ipfacediff.runtime.diffusion import inverse_steps, sampling_timesteps


class DDIMInversion(Inverter):
    """Deterministic DDIM inversion; the whole trajectory is kept."""

    description = "DDIM inversion (DDIMInverseScheduler), batched over frames, whole trajectory kept"

    @dataclass
    class Params:
        batch_size: int = field(default=8, metadata={"range": (1, 1024), "help": "frames per UNet call"})

    def invert(
        self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0
    ) -> Inversion:
        from diffusers import DDIMInverseScheduler

        try:
            inv = DDIMInverseScheduler.from_config(backbone.scheduler_config)
            inv.set_timesteps(steps)
            ts = [int(t) for t in inv.timesteps]

            def step(eps: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
                return inv.step(eps, inv.timesteps[k], x).prev_sample
        except ValueError:  # a timestep spacing it refuses ("linspace")
            ts, step = inverse_steps(backbone.scheduler_config, steps)
        trajectory = [latents.float().cpu()]
        chunks = []
        bs = self.params.batch_size
        for start in range(0, latents.shape[0], bs):
            x = latents[start : start + bs].to(backbone.device, torch.float32)
            emb = prompt_embeds if prompt_embeds.shape[0] == 1 else prompt_embeds[start : start + bs]
            traj = []
            for k, t in enumerate(ts):
                eps = backbone.predict_noise(x, t, emb, "inversion")
                x = step(eps, k, x)
                traj.append(x.float().cpu())
            chunks.append(traj)
        for i in range(len(ts)):
            trajectory.append(torch.cat([c[i] for c in chunks]))
        return Inversion(ts, trajectory, sampling_timesteps(backbone.scheduler_config, steps), steps)


@ipfacediff.hookimpl
def register_inverters(register):
    register(DDIMInversion, name="ddim")
