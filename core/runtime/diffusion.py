"""Diffusion helpers shared by backbones, inverters, editors and strategies: the sampler's
timesteps and the inverse DDIM update onto them, classifier-free guidance, eps1's token features,
weight digests and the CLIP tokenizer built offline from open_clip's vocabulary."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch

from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.models import cache_dir


def sampling_timesteps(scheduler_config, steps: int) -> list[int]:
    """The descending timesteps a DDIM sampler of ``steps`` steps runs."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(scheduler_config)
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]


def inverse_steps(scheduler_config, steps: int):
    """The ascending timesteps of a DDIM sampler of ``steps`` steps (any spacing) and the inverse
    DDIM update onto them: ``step(eps, k, x)`` moves ``x`` from the level before ``ts[k]`` (clean
    for ``k = 0``) to ``ts[k]``, with ``eps`` predicted at ``ts[k]`` (as ``DDIMInverseScheduler`` does)."""
    from diffusers import DDIMScheduler

    s = DDIMScheduler.from_config(scheduler_config)
    s.set_timesteps(steps)
    ts, ac = sorted(int(t) for t in s.timesteps), s.alphas_cumprod
    v_pred = s.config.prediction_type == "v_prediction"

    def step(out: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        a_prev = ac[ts[k - 1]] if k > 0 else torch.as_tensor(s.final_alpha_cumprod)
        a_t = ac[ts[k]]
        # v-prediction: the model predicts v = sqrt(a) eps - sqrt(1 - a) x0 (x at its current level, as
        # DDIMInverseScheduler reads it)
        if v_pred:
            x0, eps = a_prev.sqrt() * x - (1 - a_prev).sqrt() * out, a_prev.sqrt() * out + (1 - a_prev).sqrt() * x
        else:
            x0, eps = (x - (1 - a_prev).sqrt() * out) / a_prev.sqrt(), out
        return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps

    return ts, step


def clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A ``transformers.CLIPTokenizer`` made from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (pad
    token ``<|endoftext|>`` as SD 1.x's, ``!`` as SD 2.x's)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    folder = cache_dir() / "tokenizers" / "clip-bpe-16e6"
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = (
            vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        )
        # unique temporary names: two processes may build it at once (each writes the same content)
        write_atomic(vocab_file, json.dumps({v: i for i, v in enumerate(vocab)}))
        write_atomic(merges_file, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length, pad_token=pad_token)


def cfg_combine(eps: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on a ``[uncond; cond]`` batch."""
    uncond, cond = eps.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def file_digest(path: str | Path) -> str:
    """sha256 of a file, computed once per path, size and mtime (cache keys ask for a multi-GB UNet's
    digest several times per edit)."""
    from ipfacediff.runtime.models import sha256_of

    return sha256_of(Path(path))


def decoder_token_features(
    backbone,
    latents: torch.Tensor,
    timestep: int,
    prompt_embeds: torch.Tensor,
    seed: int,
    batch_size: int = 8,
    stage: str = "propagation",
) -> torch.Tensor:
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
            x = sched.add_noise(
                latents[s : s + batch_size].float(), noise.expand(min(batch_size, latents.shape[0] - s), -1, -1, -1), t
            )
            captured.clear()
            backbone.predict_noise(x, int(timestep), prompt_embeds, stage)
            out.append(captured[-1].half())
    finally:
        handle.remove()
    return torch.cat(out)
