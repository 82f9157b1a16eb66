"""Backbone ``tiny``: a seeded random UNet2DConditionModel and CLIPTextModel (the real diffusers /
transformers classes) with the real TAESD as VAE. The offline default: it shows the mechanics, not a
real edit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

import ipfacediff
from ipfacediff.errors import InputError
from ipfacediff.runtime.diffusers_backbone import (
    RANDOM_BACKBONE_NOTE,
    SD_SCHEDULER_CONFIG,
    DiffusersBackbone,
    load_taesd,
)
from ipfacediff.runtime.diffusion import clip_tokenizer

# the tiny UNet's and text encoder's shapes (also the tiny Stable Diffusion folder of ipfacediff.testing)
TINY_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
    "norm_num_groups": 32,
}
TINY_TEXT_ENCODER = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
}


class TinyBackbone(DiffusersBackbone):
    """Seeded random UNet2DConditionModel + CLIPTextModel (real classes), real TAESD VAE."""

    description = (
        "seeded random tiny UNet + CLIP text encoder, real TAESD VAE: offline default for tests and demos ("
        + RANDOM_BACKBONE_NOTE
        + ")"
    )
    is_random = True

    @dataclass
    class Params:
        seed: int = 0
        resolution: int = field(
            default=256, metadata={"range": (64, 1024), "help": "working crop size (multiple of 8)"}
        )
        vae: Literal["taesd", "random"] = field(
            default="taesd", metadata={"help": "real TAESD, or a random tiny autoencoder (no weights needed)"}
        )
        adapters: dict = field(default_factory=dict, metadata={"help": "adapter name -> LoRA folder (identity, edit)"})
        eps_scale: float = field(
            default=0.05,
            metadata={
                "range": (0.0, 10.0),
                "help": (
                    "scale of the random UNet's output layer: at 1.0 its noise predictions are so large and "
                    "input-sensitive that "
                    "DDIM inversion diverges (relative reconstruction error ~2 at 50 steps); at 0.05 the sampler "
                    "behaves like a "
                    "trained model's (error ~0.01 at 50 steps)"
                ),
            },
        )

    def __init__(self, params: TinyBackbone.Params | None = None) -> None:
        super().__init__(params)
        from diffusers import AutoencoderTiny, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        p = self.params
        if p.resolution % 8:
            raise InputError(f"tiny backbone: resolution {p.resolution} is not a multiple of 8")
        self.resolution = p.resolution
        torch.manual_seed(p.seed)
        self.unet = UNet2DConditionModel(sample_size=p.resolution // 8, layers_per_block=2, **TINY_UNET)
        with torch.no_grad():
            self.unet.conv_out.weight.mul_(p.eps_scale)
            self.unet.conv_out.bias.mul_(p.eps_scale)
        self.text_encoder = CLIPTextModel(
            CLIPTextConfig(**TINY_TEXT_ENCODER, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
        )
        self.tokenizer = clip_tokenizer(77)
        if p.vae == "taesd":
            self.vae = load_taesd()
        else:
            self.vae = (
                AutoencoderTiny(
                    encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1),
                    num_decoder_blocks=(1, 1, 1, 1),
                )
                .eval()
                .requires_grad_(False)
            )
        self.vae_kind = "taesd"  # AutoencoderTiny either way
        self.scheduler_config = dict(SD_SCHEDULER_CONFIG)
        self._finish(p.adapters)


@ipfacediff.hookimpl
def register_backbones(register):
    register(TinyBackbone, name="tiny")
