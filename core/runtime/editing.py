"""Pieces the built-in edit strategies share: keyframe groups edited jointly, chunks with their border
keyframes, editing frames in batches, and the low-noise refinement of propagated latents."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ipfacediff.interfaces import EditRun, Inversion
from ipfacediff.runtime.diffusion import cfg_combine, inverse_steps


def keyframe_groups(keys: list[int], size: int) -> list[list[int]]:
    """Keyframes in groups of at most ``size`` edited jointly (extended attention within a group:
    memory grows with the group, not the clip). Each group after the first starts with the previous
    group's last keyframe: it is denoised again with the new group as an anchor shared by both
    groups' attention, and keeps its first group's edit."""
    if len(keys) <= size:
        return [list(keys)]
    groups, i = [list(keys[:size])], size
    while i < len(keys):
        groups.append([keys[i - 1], *keys[i : i + size - 1]])
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


def refine(
    run: EditRun, x0: torch.Tensor, rows: Sequence[int], anchors: dict[int, torch.Tensor], start: str = "inversion"
) -> torch.Tensor:
    """A few low-noise denoising steps (eps2, target prompt, the editor's guidance) on propagated
    latents ``x0`` of face rows ``rows``, with the edited keyframes ``anchors`` (row -> edited latents:
    the keyframes before and after these frames) as context.

    Each frame starts from *its own* DDIM-inverted latent at the first refinement level (eps1, empty
    prompt, like the keyframes' inversion) shifted by its propagated edit, ``z_src(t) +
    sqrt(a_t) (x0 - x0_src)``: its noise follows its content, so neighbouring frames start alike (0.2
    drew independent noise per frame, which flickers; ``start="independent"`` keeps that, for
    comparison). At every step eps1's decoder features of the frame's own inverted source are injected
    into eps2 as Plug-and-Play does (queries/keys of PnP's layers, the residual branch), and each frame's
    self-attention also sees the keyframes' tokens (they are denoised alongside from the same start;
    their results are dropped: keyframes go out as edited)."""
    from diffusers import DDIMScheduler

    from ipfacediff.runtime.attention import FeatureController, controlled_unet, pnp_attention_layers

    backbone, settings, e = run.backbone, run.settings, run.embeds
    total = max(settings.refine_steps, round(settings.refine_steps / max(settings.refine_strength, 1e-3)))
    ts_up, inv_step = inverse_steps(backbone.scheduler_config, total)
    ts_up = ts_up[: settings.refine_steps]
    keys, a = list(anchors), len(anchors)
    src0 = torch.cat([run.rows(keys), run.rows(list(rows))]).float() if keys else run.rows(list(rows)).float()
    tgt0 = torch.cat([torch.stack([anchors[k] for k in keys]).float(), x0.float()]) if keys else x0.float()
    z = {}  # the sources' own inversion, level by level
    x = src0.to(backbone.device)
    backbone.set_adapter("identity")
    for k, t in enumerate(ts_up):
        x = inv_step(backbone.predict_noise(x, t, e["empty"], "propagation"), k, x)
        z[t] = x
    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    sched.set_timesteps(total)
    a_t = sched.alphas_cumprod[ts_up[-1]].sqrt()
    if start == "independent":
        noise = torch.stack(
            [torch.randn(r.shape, generator=torch.Generator().manual_seed(run.seed + i)) for i, r in enumerate(tgt0)]
        )
        x = sched.add_noise(tgt0, noise, torch.tensor([ts_up[-1]])).to(backbone.device)
    else:
        x = z[ts_up[-1]] + a_t * (tgt0 - src0).to(backbone.device)
    guidance, n = run.components["editor"].guidance_scale, x.shape[0]
    emb = torch.cat([e["uncond"].expand(n, -1, -1), e["target"].expand(n, -1, -1)])
    ctrl = FeatureController(attn_layers=set(pnp_attention_layers(backbone.unet)), inject_attn=True, inject_res=True)
    with controlled_unet(backbone.unet, ctrl):
        for t in reversed(ts_up):
            backbone.set_adapter("identity")
            ctrl.mode, ctrl.anchors, ctrl.group_size = "capture", 0, n
            backbone.predict_noise(z[t], t, e["empty"], "propagation")
            backbone.set_adapter("edit")
            ctrl.mode, ctrl.anchors = "inject", a
            eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "propagation"), guidance)
            x = sched.step(eps, t, x).prev_sample
    backbone.set_adapter(None)
    return x[a:].cpu()
