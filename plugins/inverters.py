"""Inverters: ``ddim`` (DDIM inversion with diffusers' DDIMInverseScheduler, batched over frames,
trajectory kept per timestep, cached on disk) and ``ddpm-noise`` (SDEdit-style: noise the clean
latents to one level in a single step, no UNet calls)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.diffusion import hash_tensor
from ipfacediff.interfaces import Backbone, Inversion, Inverter
from ipfacediff.models import cache_dir


def _timesteps(backbone: Backbone, steps: int) -> list[int]:
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(backbone.scheduler_config)
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]  # descending


class DDIMInversion(Inverter):
    """Deterministic DDIM inversion; the whole trajectory is kept (and cached on disk)."""

    description = "DDIM inversion (DDIMInverseScheduler), batched over frames, trajectory cached on disk"

    @dataclass
    class Params:
        batch_size: int = field(default=8, metadata={"range": (1, 1024), "help": "frames per UNet call"})
        cache: bool = field(default=True, metadata={"help": "cache trajectories on disk (keyed by content, backbone, adapter, steps)"})

    def invert(self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0) -> Inversion:
        from diffusers import DDIMInverseScheduler

        key = self._key(backbone, latents, prompt_embeds, steps)
        path = cache_dir() / "inversions" / f"{key}.pt"
        if self.params.cache and path.is_file():
            try:
                data = torch.load(path, map_location="cpu", weights_only=True)
                os.utime(path)  # last use, for the cache's least-recently-used eviction
                return Inversion(data["timesteps"], list(data["trajectory"].unbind(0)), data["denoise_timesteps"], {"cached": True, "cache_file": str(path), "steps": steps})
            except Exception:  # noqa: BLE001 - a damaged cache entry is recomputed
                path.unlink(missing_ok=True)
        inv = DDIMInverseScheduler.from_config(backbone.scheduler_config)
        inv.set_timesteps(steps)
        trajectory = [latents.float().cpu()]
        chunks = []
        for start in range(0, latents.shape[0], self.params.batch_size):
            x = latents[start:start + self.params.batch_size].to(backbone.device, torch.float32)
            emb = prompt_embeds if prompt_embeds.shape[0] == 1 else prompt_embeds[start:start + self.params.batch_size]
            traj = []
            for t in inv.timesteps:
                eps = backbone.predict_noise(x, t, emb, "inversion")
                x = inv.step(eps, t, x).prev_sample
                traj.append(x.float().cpu())
            chunks.append(traj)
        for i in range(len(inv.timesteps)):
            trajectory.append(torch.cat([c[i] for c in chunks]))
        timesteps = [int(t) for t in inv.timesteps]
        result = Inversion(timesteps, trajectory, _timesteps(backbone, steps), {"cached": False, "steps": steps})
        if self.params.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            torch.save({"timesteps": timesteps, "denoise_timesteps": result.denoise_timesteps, "trajectory": torch.stack(trajectory)}, tmp)
            os.replace(tmp, path)  # atomic: concurrent runs never see a partial file
            result.extras["cache_file"] = str(path)
        return result

    @staticmethod
    def _key(backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int) -> str:
        ident = json.dumps({"backbone": backbone.identity(), "adapter": backbone.active_adapter, "steps": steps,
                            "latents": hash_tensor(latents), "prompt": hash_tensor(prompt_embeds), "v": 1}, sort_keys=True, default=str)
        return hashlib.sha256(ident.encode()).hexdigest()[:32]


class DDPMNoise(Inverter):
    """SDEdit: noise the clean latents to ``strength`` of the schedule with seeded Gaussian noise."""

    description = "SDEdit-style noising to a strength (no UNet calls); the editor denoises from there"

    @dataclass
    class Params:
        strength: float = field(default=0.6, metadata={"range": (0.01, 1.0), "help": "fraction of the schedule to noise to"})

    def invert(self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0) -> Inversion:
        from diffusers import DDIMScheduler

        ts = _timesteps(backbone, steps)
        n = max(1, min(len(ts), round(self.params.strength * len(ts))))
        run = ts[len(ts) - n:]
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(latents.shape, generator=g)
        xt = sched.add_noise(latents.float().cpu(), noise, torch.tensor([run[0]]))
        return Inversion([run[0]], [latents.float().cpu(), xt], run, {"cached": False, "strength": self.params.strength, "steps": steps})


@ipfacediff.hookimpl
def register_inverters(register):
    register(DDIMInversion, name="ddim")
    register(DDPMNoise, name="ddpm-noise")
