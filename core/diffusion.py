"""Diffusion helpers shared by backbones, inverters and editors.

* :func:`clip_tokenizer`: a CLIP tokenizer built offline from open_clip's bundled BPE vocabulary
  (the same vocabulary as Stable Diffusion 1.x's tokenizer).
* :class:`FeatureController` and :func:`controlled_unet`: attention processors and forward hooks
  that capture eps1's decoder self-attention queries/keys and residual features and inject them
  into eps2's decoder (Plug-and-Play style), optionally with extended attention across keyframes or
  TokenFlow-style nearest-neighbour propagation of attention outputs. The UNet's original
  processors are restored afterwards.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from .models import cache_dir


def clip_tokenizer(model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` made from open_clip's ``bpe_simple_vocab_16e6.txt.gz``."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    folder = cache_dir() / "tokenizers" / "clip-bpe-16e6"
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        tmp_v, tmp_m = vocab_file.with_suffix(".tmp"), merges_file.with_suffix(".tmp")
        tmp_v.write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
        tmp_m.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tmp_v.replace(vocab_file)
        tmp_m.replace(merges_file)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length)


# ----------------------------------------------------------------------------- feature control
@dataclass
class FeatureController:
    """Shared state of the processors installed by :func:`controlled_unet`.

    ``mode``: ``"off"`` (plain attention), ``"capture"`` (store q/k of the selected self-attention
    layers and the selected residual outputs), ``"inject"`` (replace them by the stored ones when
    ``inject_attn``/``inject_res`` is on), ``"tokenflow"`` (see :class:`ControlledSelfAttention`).
    ``group_size``: frames per group in the batch (a CFG batch is ``[uncond K, cond K]``: 2 groups of
    K); ``extended``: self-attention keys/values are shared across the frames of a group.
    """

    attn_layers: set[str] = field(default_factory=set)
    res_layers: set[str] = field(default_factory=set)
    mode: str = "off"
    inject_attn: bool = False
    inject_res: bool = False
    extended: bool = False
    group_size: int = 1
    key_positions: list[int] = field(default_factory=list)  # tokenflow: keyframe rows inside a group
    store: dict[str, Any] = field(default_factory=dict)


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, h, c // h).transpose(1, 2)


class ControlledSelfAttention:
    """A self-attention processor (``attn1`` layers) driven by a :class:`FeatureController`."""

    def __init__(self, name: str, ctrl: FeatureController):
        self.name, self.ctrl = name, ctrl

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b, c, hh * ww).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        ctrl = self.ctrl
        selected = self.name in ctrl.attn_layers
        if ctrl.mode == "capture" and selected:
            ctrl.store[self.name] = (q.detach(), k.detach())
        elif ctrl.mode == "inject" and selected and ctrl.inject_attn and self.name in ctrl.store:
            qs, ks = ctrl.store[self.name]
            reps = q.shape[0] // qs.shape[0]
            q, k = qs.repeat(reps, 1, 1), ks.repeat(reps, 1, 1)
        heads = attn.heads
        if ctrl.mode == "tokenflow" and ctrl.key_positions:
            out = self._tokenflow(q, k, v, heads, hidden_states)
        elif ctrl.extended and ctrl.group_size > 1:
            g = ctrl.group_size
            bsz, n, _ = k.shape
            kk = k.view(bsz // g, 1, g * n, -1).expand(-1, g, -1, -1).reshape(bsz, g * n, -1)
            vv = v.view(bsz // g, 1, g * n, -1).expand(-1, g, -1, -1).reshape(bsz, g * n, -1)
            out = F.scaled_dot_product_attention(_heads(q, heads), _heads(kk, heads), _heads(vv, heads))
            out = out.transpose(1, 2).reshape(bsz, n, -1)
        else:
            out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
            out = out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _tokenflow(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, x: torch.Tensor) -> torch.Tensor:
        """Keyframes attend jointly; every other frame takes, per token, the attention output of
        its nearest token (cosine, on the attention input) in the two temporally nearest
        keyframes, blended by temporal distance."""
        ctrl = self.ctrl
        g = ctrl.group_size
        bsz, n, _ = q.shape
        keys = ctrl.key_positions
        out = torch.empty_like(v)
        for start in range(0, bsz, g):
            rows = [start + p for p in keys]
            kq, kk, kv = q[rows], k[rows], v[rows]
            kk_all = kk.reshape(1, -1, kk.shape[-1]).expand(len(rows), -1, -1)
            kv_all = kv.reshape(1, -1, kv.shape[-1]).expand(len(rows), -1, -1)
            ko = F.scaled_dot_product_attention(_heads(kq, heads), _heads(kk_all, heads), _heads(kv_all, heads))
            ko = ko.transpose(1, 2).reshape(len(rows), n, -1)
            out[rows] = ko
            feats = F.normalize(x[start:start + g], dim=-1)
            for i in range(g):
                if i in keys:
                    continue
                before = [j for j, p in enumerate(keys) if p < i]
                after = [j for j, p in enumerate(keys) if p > i]
                pair = [j for j in (before[-1] if before else None, after[0] if after else None) if j is not None]
                acc, wsum = 0.0, 0.0
                for j in pair:
                    sim = feats[i] @ feats[keys[j]].T  # [n, n]
                    idx = sim.argmax(-1)
                    w = 1.0 / abs(keys[j] - i)
                    acc = acc + w * ko[j][idx]
                    wsum += w
                out[start + i] = acc / wsum
        return out


def _up_block_resnet_names(unet: torch.nn.Module) -> list[str]:
    """The residual layer that Plug-and-Play injects: ``resnets[1]`` of the first decoder block
    with attention (``up_blocks.1.resnets.1`` in Stable Diffusion 1.x)."""
    for i, block in enumerate(unet.up_blocks):
        if getattr(block, "attentions", None) and len(block.resnets) > 1:
            return [f"up_blocks.{i}.resnets.1"]
    return [f"up_blocks.0.resnets.{min(1, len(unet.up_blocks[0].resnets) - 1)}"]


def decoder_self_attention_layers(unet: torch.nn.Module, up_blocks: Sequence[int] | None = None) -> list[str]:
    """Processor names of the decoder's self-attention layers (optionally of some up blocks only)."""
    names = []
    for name in unet.attn_processors:
        if name.startswith("up_blocks.") and ".attn1." in name:
            idx = int(name.split(".")[1])
            if up_blocks is None or idx in up_blocks:
                names.append(name)
    return names


@contextlib.contextmanager
def controlled_unet(unet: torch.nn.Module, ctrl: FeatureController, residual_layers: Sequence[str] | None = None) -> Iterator[FeatureController]:
    """Install :class:`ControlledSelfAttention` on every ``attn1`` layer and capture/inject hooks on
    ``residual_layers``; restore the original processors and remove the hooks on exit."""
    original = dict(unet.attn_processors)
    procs = {name: (ControlledSelfAttention(name, ctrl) if ".attn1." in name else proc) for name, proc in original.items()}
    residual_layers = list(residual_layers if residual_layers is not None else _up_block_resnet_names(unet))
    ctrl.res_layers = set(residual_layers)
    modules = dict(unet.named_modules())
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            if ctrl.mode == "capture":
                ctrl.store[name] = output.detach()
            elif ctrl.mode == "inject" and ctrl.inject_res and name in ctrl.store:
                src = ctrl.store[name]
                return src.repeat(output.shape[0] // src.shape[0], 1, 1, 1)
            return output
        return hook

    for name in residual_layers:
        handles.append(modules[name].register_forward_hook(make_hook(name)))
    unet.set_attn_processor(procs)
    try:
        yield ctrl
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(original)
        ctrl.store.clear()


def cfg_combine(eps: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a ``[uncond; cond]`` batch."""
    uncond, cond = eps.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def hash_tensor(x: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file, computed once per path, size and mtime (cache keys ask for a multi-GB UNet's
    digest several times per edit)."""
    from .models import sha256_of

    return sha256_of(Path(path))


def decoder_token_features(backbone, latents: torch.Tensor, timestep: int, prompt_embeds: torch.Tensor, seed: int,
                           batch_size: int = 8, stage: str = "propagation") -> torch.Tensor:
    """The UNet's last decoder block output (full latent resolution, ``[T, C, h, w]``) for clean
    ``latents`` noised to ``timestep`` with one seeded noise shared by all frames (so features differ
    by content only): the token features eps1 gives the propagator (one UNet evaluation per frame,
    counted under ``stage``). Run with the adapter that is active (the caller picks ``identity``)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
    t = torch.tensor([int(timestep)])
    block = backbone.unet.up_blocks[-1]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().float().cpu()))
    try:
        out = []
        for s in range(0, latents.shape[0], batch_size):
            x = sched.add_noise(latents[s:s + batch_size].float(), noise.expand(min(batch_size, latents.shape[0] - s), -1, -1, -1), t)
            captured.clear()
            backbone.predict_noise(x, int(timestep), prompt_embeds, stage)
            out.append(captured[-1].half())
    finally:
        handle.remove()
    return torch.cat(out)
