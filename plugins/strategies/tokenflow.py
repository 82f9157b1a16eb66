"""Strategy ``tokenflow`` (baseline): TokenFlow (Geyer et al., ICLR 2024) as published, with
Plug-and-Play injection.

Every frame is DDIM-inverted; then at each denoising step t:

1. **Pivots**: one frame drawn at random from every batch of ``batch_size`` frames (a new draw each
   step, seeded). They are denoised together with *extended attention* (each pivot's self-attention
   sees every pivot's keys and values), and every self-attention layer keeps the pivots' attention
   outputs and their *source* attention inputs.
2. **Propagation**: the frames go through the UNet in batches of ``batch_size`` (memory bounded
   whatever the clip's length). At every self-attention layer a frame's attention output is the
   pivots' outputs taken at its nearest tokens: the nearest-neighbour field is computed on the
   *source* (inverted) frames' features at the same timestep and layer, never on the edited ones,
   against two pivots. ``pivot_blend: official`` (the default) pairs them as the authors' code does:
   the pivot of the frame's own batch and the previous batch's (batch 0: its own alone), weighted by
   ``sigmoid(d2 / (d1 + d2))`` of the frame's distances ``d1``, ``d2`` to the two batches' centres
   (so the own pivot always weighs 0.62-0.73); ``paper``: the pivots before and after the frame,
   weighted linearly by temporal distance (the paper's Eq. 5).

Each UNet batch is ``[source, uncond, cond]`` for the same frames, as in TokenFlow's code: the
source third (inverted latents at t, on the inversion's prompt: empty unless ``inverter.prompt`` is
set) gives the matching features and Plug-and-Play's
features, injected into the other two on *every* frame: the self-attention queries and keys of
Plug-and-Play's layers for the first ``int(attn_fraction * steps)`` steps (they only act in the
pivots' pass: elsewhere attention outputs are propagated), the residual branch of
``up_blocks[1].resnets[1]`` for the first ``int(residual_fraction * steps)`` (``int``, as the authors'
code rounds), from the first (noisiest) step on. In the pivots' pass the uncond and cond branches
share keys and values across pivots (extended attention); the source branch does not (each source
pivot attends to itself, as in the authors' code). UNet evaluations per step: 3 per frame + 3 per
pivot.

The inversion is the pipeline's inverter's: ``tokenflow`` inverts with the sampling step count and the
empty prompt and samples from the last inverted latent; ``tokenflow-published`` sets the ``ddim``
inverter as TokenFlow's preprocessing runs (500 inversion steps, the latents at the sampling
timesteps kept, an inversion prompt, the start latent ``add_noise(z0, eps, t0)``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

import ipfacediff
from ipfacediff.errors import EditWarning
from ipfacediff.interfaces import Backbone, EditRun, Inversion, Strategy
from ipfacediff.runtime.attention import pnp_attention_layers, pnp_residual_layers, skip_path, split_heads
from ipfacediff.runtime.diffusion import cfg_combine
from ipfacediff.runtime.progress import progress_bar


@dataclass
class _State:
    """What the processors and the residual hook share. A UNet batch is ``groups`` groups of the same
    frames (group 0 the source); ``mode`` is ``"pivot"`` or ``"propagate"``."""

    groups: int
    pnp_layers: set[str]
    mode: str = "pivot"
    inject_attn: bool = False
    inject_res: bool = False
    pivot_src: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> source attention inputs [P, n, c]
    pivot_out: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> attention outputs [groups, P, n, c]
    # propagate: per frame of the batch, (pivot before, pivot after or None, weight of the one before)
    pairs: list[tuple[int, int | None, float]] = field(default_factory=list)


def nearest_tokens(query: torch.Tensor, pool: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """For each token of ``query [n, c]`` the index of its nearest token of ``pool [m, c]`` (cosine),
    ``block`` query tokens at a time (an ``n x m`` similarity is never held whole)."""
    q, p = F.normalize(query.float(), dim=-1), F.normalize(pool.float(), dim=-1)
    return torch.cat([(q[s : s + block] @ p.T).argmax(-1) for s in range(0, q.shape[0], block)])


class TokenFlowAttention:
    """The processor of every self-attention (``attn1``) layer while TokenFlow denoises."""

    def __init__(self, name: str, state: _State):
        self.name, self.state = name, state

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
        if hidden_states.ndim != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError(
                f"{self.name}: TokenFlow propagation needs a transformer block's self-attention ([B, tokens, C] input)"
            )
        st = self.state
        g = hidden_states.shape[0] // st.groups
        if st.mode == "propagate":
            return self._propagate(hidden_states[:g])
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if st.inject_attn and self.name in st.pnp_layers:  # Plug-and-Play: the source's queries and keys
            q, k = q[:g].repeat(st.groups, 1, 1), k[:g].repeat(st.groups, 1, 1)
        b, n, _ = q.shape
        # the source pivots attend to themselves; uncond and cond share keys and values across the
        # pivots (extended attention)
        src = F.scaled_dot_product_attention(
            split_heads(q[:g], attn.heads), split_heads(k[:g], attn.heads), split_heads(v[:g], attn.heads)
        )
        e = b - g
        kk = k[g:].reshape(st.groups - 1, 1, g * n, -1).expand(-1, g, -1, -1).reshape(e, g * n, -1)
        vv = v[g:].reshape(st.groups - 1, 1, g * n, -1).expand(-1, g, -1, -1).reshape(e, g * n, -1)
        ext = F.scaled_dot_product_attention(
            split_heads(q[g:], attn.heads), split_heads(kk, attn.heads), split_heads(vv, attn.heads)
        )
        out = torch.cat([src, ext]).transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        out = out / attn.rescale_output_factor
        st.pivot_src[self.name] = hidden_states[:g].detach()
        st.pivot_out[self.name] = out.detach().view(st.groups, g, n, -1)
        return out

    def _propagate(self, source: torch.Tensor) -> torch.Tensor:
        """Each frame's output: the pivots' outputs at the tokens nearest to its *source* tokens."""
        st = self.state
        keys, outs = st.pivot_src[self.name], st.pivot_out[self.name]
        result = torch.empty(st.groups, source.shape[0], *outs.shape[2:], dtype=outs.dtype, device=outs.device)
        for i, (a, b, w) in enumerate(st.pairs):
            result[:, i] = outs[:, a, nearest_tokens(source[i], keys[a])] * w
            if b is not None:
                result[:, i] += outs[:, b, nearest_tokens(source[i], keys[b])] * (1 - w)
        return result.reshape(-1, *outs.shape[2:])


def _residual_hook(state: _State):
    """Plug-and-Play's residual injection inside one batch: groups 1.. get group 0's (the source's)
    residual branch on their own skip path."""

    def hook(module, inputs, output):
        if not state.inject_res:
            return output
        scale = getattr(module, "output_scale_factor", 1.0)
        skip = skip_path(module, inputs[0])
        res = output * scale - skip
        g = output.shape[0] // state.groups
        return (skip + res[:g].repeat(state.groups, 1, 1, 1)) / scale

    return hook


@contextlib.contextmanager
def tokenflow_unet(unet: torch.nn.Module, state: _State) -> Iterator[None]:
    """TokenFlow's processors on every self-attention layer and the residual hook; undone on exit."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor({n: (TokenFlowAttention(n, state) if ".attn1." in n else p) for n, p in original.items()})
    modules = dict(unet.named_modules())
    handles = [modules[n].register_forward_hook(_residual_hook(state)) for n in pnp_residual_layers(unet)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(original)


def draw_pivots(frames: int, batch: int, generator: torch.Generator) -> list[int]:
    """One frame drawn at random from each batch of ``batch`` frames."""
    return [s + int(torch.randint(min(batch, frames - s), (1,), generator=generator)) for s in range(0, frames, batch)]


def official_pivot_pairs(rows: list[int], batch: int) -> list[tuple[int, int | None, float]]:
    """The authors' rule for the frames ``rows`` of one propagation batch (``batch`` frames per batch):
    the pivot of the frame's own batch (position ``b`` among the pivots) with weight
    ``sigmoid(d2 / (d1 + d2))`` and the previous batch's (``b - 1``) with the rest, ``d1``, ``d2`` the
    frame's distances to the two batches' centres (``b * batch + batch // 2``); batch 0 its own pivot
    alone. (The authors' clips are whole batches; a last partial batch is placed here by its frames'
    true indices and centred as a whole batch would be.)"""
    pairs = []
    for i in rows:
        b = i // batch
        if b == 0:
            pairs.append((0, None, 1.0))
            continue
        d1, d2 = abs(i - (b * batch + batch // 2)), abs(i - ((b - 1) * batch + batch // 2))
        pairs.append((b, b - 1, float(torch.sigmoid(torch.tensor(d2 / (d1 + d2))))))
    return pairs


def pivot_pairs(rows: list[int], pivots: list[int]) -> list[tuple[int, int | None, float]]:
    """The paper's rule (Eq. 5): for each frame, the positions (in ``pivots``) of the pivots before and
    after it and the weight of the one before, linear in temporal distance (1 on a pivot or past the
    last one)."""
    pairs = []
    for i in rows:
        before = max((j for j, p in enumerate(pivots) if p <= i), default=None)
        after = min((j for j, p in enumerate(pivots) if p >= i), default=None)
        if before is None or after is None or before == after:
            pairs.append((before if before is not None else after, None, 1.0))
        else:
            pairs.append((before, after, (pivots[after] - i) / (pivots[after] - pivots[before])))
    return pairs


class TokenFlow(Strategy):
    """Invert every frame; per step denoise random pivots jointly, propagate their attention to every frame."""

    description = (
        "baseline (TokenFlow as published): every frame inverted and denoised; random pivots per step with extended "
        "attention, "
        "their attention outputs carried by nearest-neighbour fields of the source features; PnP injection on every "
        "frame"
    )
    requires = ("face_processor", "inverter")

    @dataclass
    class Params:
        guidance_scale: float | None = field(
            default=None,
            metadata={"range": (1.0, 50.0), "help": "classifier-free guidance (null: the editor's, else 7.5)"},
        )
        batch_size: int = field(
            default=8,
            metadata={
                "range": (1, 64),
                "help": "frames per UNet batch (x3: source, uncond, cond); one pivot per batch",
            },
        )
        attn_fraction: float = field(
            default=0.5, metadata={"range": (0.0, 1.0), "help": "fraction of steps with Plug-and-Play q/k injection"}
        )
        residual_fraction: float = field(
            default=0.8,
            metadata={"range": (0.0, 1.0), "help": "fraction of steps with Plug-and-Play residual injection"},
        )
        pivot_blend: Literal["official", "paper"] = field(
            default="official",
            metadata={
                "help": "official: own and previous batch's pivots, sigmoid weights (the authors' code); "
                "paper: the pivots before and after, linear weights (Eq. 5)"
            },
        )

    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor:
        inv = run.invert(run.rows(rows))
        guidance = self.params.guidance_scale
        if guidance is None:
            guidance = run.components["editor"].guidance_scale if "editor" in run.components else 7.5
        with run.timer("denoise_all"):
            x = self.denoise(run.backbone, inv, run.embeds, guidance, run.seed * 1_000_003 + rows[0])
        run.report["tokenflow"] = {
            "batch_size": self.params.batch_size,
            "pivots_per_step": len(self.pivots[0]) if self.pivots else 0,
            "max_unet_batch": self.max_batch,
            "pivot_blend": self.params.pivot_blend,
            "injection_steps": {
                "attn": sum(a for a, _ in self.injected),
                "residual": sum(r for _, r in self.injected),
            },
            "inversion": {
                "steps": inv.extras.get("inversion_steps", inv.steps),
                "prompt": inv.extras.get("prompt", ""),
                "start": inv.extras.get("start", "inverted"),
            },
        }
        return x.float()

    def denoise(
        self, backbone: Backbone, inv: Inversion, embeds: dict[str, torch.Tensor], guidance: float, seed: int
    ) -> torch.Tensor:
        """Denoise every frame of ``inv`` (see the module docstring); ``self.pivots`` lists each step's pivots."""
        from diffusers import DDIMScheduler

        p, ts = self.params, inv.denoise_timesteps
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        sched.set_timesteps(inv.steps)
        x = inv.start_latent.float().cpu()
        n, cfg = x.shape[0], guidance != 1.0
        # the source branch on the inversion's prompt (TokenFlow's pnp_guidance_embeds; empty by default)
        inversion_prompt = inv.extras.get("prompt") or ""
        source = backbone.encode_prompt([inversion_prompt]) if inversion_prompt else embeds["empty"]
        prompts = [source, embeds["uncond"], embeds["target"]] if cfg else [source, embeds["target"]]
        state = _State(groups=len(prompts), pnp_layers=set(pnp_attention_layers(backbone.unet)))
        generator = torch.Generator().manual_seed(seed)
        self.pivots, self.max_batch, missing = [], 0, []
        self.injected: list[tuple[bool, bool]] = []  # per step: (q/k, residual) injection ran
        attn_steps, res_steps = int(p.attn_fraction * len(ts)), int(p.residual_fraction * len(ts))

        def unet(src: torch.Tensor, lat: torch.Tensor, t: int, stage: str) -> torch.Tensor:
            k = lat.shape[0]
            self.max_batch = max(self.max_batch, k * len(prompts))
            batch = torch.cat([src, *[lat] * (len(prompts) - 1)]).to(backbone.device)
            out = backbone.predict_noise(batch, t, torch.cat([e.expand(k, -1, -1) for e in prompts]), stage)[k:]
            return cfg_combine(out, guidance) if cfg else out

        backbone.set_adapter("edit")
        with tokenflow_unet(backbone.unet, state), progress_bar("denoise", len(ts), False) as bar:
            for s, t in enumerate(ts):
                src = inv.latent_at(t)
                have_source = src is not None  # a flag: at step 0 the source latent *is* the start latent
                if not have_source:  # no source latent at t: match on the current latents, no injection
                    missing.append(int(t))
                    src = x
                state.inject_attn = have_source and s < attn_steps
                state.inject_res = have_source and s < res_steps
                self.injected.append((state.inject_attn, state.inject_res))
                pivots = draw_pivots(n, p.batch_size, generator)
                self.pivots.append(pivots)
                state.mode = "pivot"
                unet(src[pivots], x[pivots], t, "denoise-pivots")
                state.mode, new = "propagate", torch.empty_like(x)
                for b in range(0, n, p.batch_size):
                    part = list(range(b, min(b + p.batch_size, n)))
                    official = p.pivot_blend == "official"
                    state.pairs = official_pivot_pairs(part, p.batch_size) if official else pivot_pairs(part, pivots)
                    eps = unet(src[part], x[part], t, "denoise").cpu()
                    new[part] = sched.step(eps, t, x[part]).prev_sample
                x = new
                bar.advance()
        backbone.set_adapter(None)
        if missing:
            warnings.warn(
                f"tokenflow: the inversion has no latent at {len(missing)} of {len(ts)} sampling timesteps "
                f"({missing[:4]}): "
                f"there it matched on the current latents and injected nothing",
                EditWarning,
                stacklevel=2,
            )
        return x


@ipfacediff.hookimpl
def register_strategies(register):
    register(TokenFlow, name="tokenflow")
