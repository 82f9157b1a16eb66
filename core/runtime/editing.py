"""Pieces the built-in edit strategies share: keyframe groups edited jointly, chunks with their border
keyframes, editing frames in batches, and the low-noise refinement of propagated latents."""

from __future__ import annotations

from typing import Sequence

import torch

from ipfacediff.interfaces import EditRun, Inversion
from ipfacediff.runtime.diffusion import cfg_combine


def keyframe_groups(keys: list[int], size: int) -> list[list[int]]:
    """Keyframes in groups of at most ``size`` edited jointly (extended attention within a group:
    memory grows with the group, not the clip). Each group after the first starts with the previous
    group's last keyframe: it is denoised again with the new group as an anchor shared by both
    groups' attention, and keeps its first group's edit."""
    if len(keys) <= size:
        return [list(keys)]
    groups, i = [list(keys[:size])], size
    while i < len(keys):
        groups.append([keys[i - 1], *keys[i:i + size - 1]])
        i += size - 1
    return groups


def chunk_with_borders(rows: list[int], keys: list[int]) -> tuple[list[int], list[int], int]:
    """For a run of consecutive face rows: the rows to hand the propagator (the nearest keyframe
    before the run, the run, the nearest keyframe after it), the positions of the keyframes among
    them, and where the run starts. Every frame of the run sees the same two keyframes it would see
    in the whole clip, so chunked propagation equals whole-clip propagation."""
    keyset = set(keys)
    left = [k for k in keys if k < rows[0]][-1:]
    right = [k for k in keys if k > rows[-1]][:1]
    sub = [*left, *rows, *right]
    return sub, [p for p, r in enumerate(sub) if r in keyset], len(left)


def edit_in_batches(run: EditRun, inv: Inversion, timer: str) -> torch.Tensor:
    """The pipeline's editor on every row of ``inv`` (frames edited independently, ``batch_size`` at
    a time), timed under ``timer``."""
    editor, e, bs = run.components["editor"], run.embeds, run.settings.batch_size
    n = inv.trajectory[0].shape[0]
    outs = []
    with run.timer(timer):
        for s in range(0, n, bs):
            sel = list(range(s, min(n, s + bs)))
            outs.append(editor.edit(run.backbone, inv.select(sel), e["target"], e["uncond"], e["empty"]).float().cpu())
    return torch.cat(outs)


def refine(run: EditRun, x0: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """A few low-noise denoising steps (eps2, target prompt, the editor's guidance) on propagated
    latents; each row's noise comes from its own seed (so the result does not depend on chunking)."""
    from diffusers import DDIMScheduler

    backbone, settings = run.backbone, run.settings
    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    total = max(settings.refine_steps, round(settings.refine_steps / max(settings.refine_strength, 1e-3)))
    sched.set_timesteps(total)
    ts = [int(t) for t in sched.timesteps][-settings.refine_steps:]
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = sched.add_noise(x0.float(), noise, torch.tensor([ts[0]])).to(backbone.device)
    guidance = run.components["editor"].guidance_scale
    backbone.set_adapter("edit")
    k = x.shape[0]
    emb = torch.cat([run.embeds["uncond"].expand(k, -1, -1), run.embeds["target"].expand(k, -1, -1)])
    for t in ts:
        eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "propagation"), guidance)
        x = sched.step(eps, t, x).prev_sample
    backbone.set_adapter(None)
    return x.cpu()
