"""Shared code of the diffusers-based backbones (``tiny``, ``stable-diffusion``): the TAESD loader,
VAE and text encoding, and the peft LoRA adapters ``identity`` (eps1) and ``edit`` (eps2), switched
per call on one UNet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ipfacediff.errors import InputError, ModelNotFoundError
from ipfacediff.interfaces import Backbone
from ipfacediff.runtime import models
from ipfacediff.runtime.diffusion import clip_tokenizer, file_digest
from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.messages import first_line

RANDOM_BACKBONE_NOTE = "random-weight backbone: shows the mechanics, not a real edit"

SD_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def load_taesd(dtype: torch.dtype = torch.float32):
    """diffusers ``AutoencoderTiny`` with the real TAESD weights (keys renamed from the original
    ``nn.Sequential`` layout); takes and gives images in [-1, 1], scaling factor 1."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    enc = load_file(str(models.resolve("taesd-encoder")))
    dec = load_file(str(models.resolve("taesd-decoder")))
    sd = {f"encoder.layers.{k}": v for k, v in enc.items()}
    for k, v in dec.items():
        i, rest = k.split(".", 1)
        sd[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    vae = AutoencoderTiny()
    vae.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    if dtype != torch.float32:  # (a to() call on AutoencoderTiny warns even when it changes nothing)
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)


class DiffusersBackbone(Backbone):
    """Shared code: VAE and text encoding, LoRA adapters."""

    tokenizer: Any = None
    text_encoder: Any = None
    vae_kind: str = "taesd"

    def _finish(self, adapters: dict[str, str]) -> None:
        self.unet.eval().requires_grad_(False)
        self.text_encoder.eval().requires_grad_(False)
        self._adapters: list[str] = []
        for name, path in adapters.items():
            self.load_adapter(path, name)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------- images and prompts
    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        with torch.no_grad():
            if self.vae_kind == "taesd":
                z = self.vae.encode(x).latents
            else:
                z = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return z.float()

    def decode_latents(self, latents: torch.Tensor, grad: bool = False) -> torch.Tensor:
        z = latents.to(self.device, self.vae.dtype)
        with torch.set_grad_enabled(grad):
            if self.vae_kind == "taesd":
                x = self.vae.decode(z).sample
            else:
                x = self.vae.decode(z / self.vae.config.scaling_factor).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            if p not in self._prompt_cache:
                length = min(
                    int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings)
                )
                ids = self.tokenizer(
                    [p], padding="max_length", max_length=length, truncation=True, return_tensors="pt"
                ).input_ids.to(self.device)
                with torch.no_grad():
                    self._prompt_cache[p] = self.text_encoder(ids)[0].float()
            out.append(self._prompt_cache[p])
        return torch.cat(out)

    def to(self, device):  # type: ignore[override]
        super().to(device)
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(self.device)
        self._prompt_cache = {}
        return self

    # -------------------------------------------------------------------------- adapters
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, path: str | Path, name: str) -> None:
        """Load a LoRA adapter saved in the diffusers format (``pytorch_lora_weights.safetensors``)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelNotFoundError(
                f"LoRA adapter {name!r}: {p} does not exist (make one with `ipfacediff finetune`)"
            )
        try:
            if p.is_file():
                self.unet.load_lora_adapter(str(p.parent), weight_name=p.name, prefix="unet", adapter_name=name)
            else:
                st = sorted(p.glob("*.safetensors"))
                kw = (
                    {
                        "weight_name": "pytorch_lora_weights.safetensors"
                        if (p / "pytorch_lora_weights.safetensors").is_file()
                        else st[0].name
                    }
                    if st
                    else {}
                )
                self.unet.load_lora_adapter(str(p), prefix="unet", adapter_name=name, **kw)
        except Exception as exc:  # noqa: BLE001 - a bad adapter folder is a user error
            raise InputError(f"LoRA adapter {name!r} at {p} cannot be loaded: {first_line(exc)}") from exc
        self._adapters.append(name)
        # what the weights are, not where: an adapter retrained into the same folder must not hit cached stages
        files = [p] if p.is_file() else sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
        self._adapter_digests = {**getattr(self, "_adapter_digests", {}), name: [file_digest(f) for f in files]}
        self.set_adapter(None)

    def set_adapter(self, name: str | None) -> None:
        if not self._adapters:
            self.active_adapter = None
            return
        if name is None or name not in self._adapters:
            self.unet.disable_adapters()
            self.active_adapter = None
        else:
            self.unet.enable_adapters()
            self.unet.set_adapters([name])
            self.active_adapter = name

    def identity(self) -> dict[str, Any]:
        d = super().identity()
        d["adapters"] = self.adapters
        d["adapter_sha256"] = getattr(self, "_adapter_digests", {})
        return d


def sd15_config_dir() -> Path:
    """The SD 1.x config folder of :func:`sd_config_dir`."""
    return sd_config_dir("sd1", "epsilon")


def single_file_family(path: Path) -> str:
    """``"sd2"`` when a single-file checkpoint is Stable Diffusion 2.x (an OpenCLIP ViT-H text encoder,
    1024-wide cross-attention), else ``"sd1"``; read from the tensor names and shapes only."""
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            names = set(f.keys())
            width = f.get_slice(key).get_shape()[-1] if key in names else None
    else:
        sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        sd = sd.get("state_dict", sd)
        names, width = set(sd), (sd[key].shape[-1] if key in sd else None)
    return "sd2" if "cond_stage_model.model.token_embedding.weight" in names or width == 1024 else "sd1"


def sd_config_dir(family: str = "sd1", prediction_type: str = "epsilon") -> Path:
    """A local diffusers config folder for single-file loading, written by ipfacediff itself (no hub
    access): SD 1.x (CLIP ViT-L text encoder, 768-wide cross-attention) or SD 2.x (OpenCLIP ViT-H's
    first 23 layers, 1024-wide, linear projections, "!" as the pad token), with the scheduler's
    ``prediction_type`` (SD 2.x at 768 px is ``v_prediction``, 2.x-base ``epsilon``)."""
    import json

    from ipfacediff.runtime.models import cache_dir

    folder = (
        cache_dir()
        / "configs"
        / (f"{family}-{prediction_type}" if (family, prediction_type) != ("sd1", "epsilon") else "sd15")
    )
    if (folder / "model_index.json").is_file():
        return folder
    sd2 = family == "sd2"
    unet = {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20] if sd2 else 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024 if sd2 else 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 96 if sd2 else 64,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "use_linear_projection": sd2,
        "upcast_attention": sd2,
    }
    vae = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 768 if sd2 else 512,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "scaling_factor": 0.18215,
    }
    width = 1024 if sd2 else 768
    text = {
        "architectures": ["CLIPTextModel"],
        "hidden_act": "gelu" if sd2 else "quick_gelu",
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 16 if sd2 else 12,
        "num_hidden_layers": 23 if sd2 else 12,
        "projection_dim": 512 if sd2 else 768,
        "vocab_size": 49408,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-05,
    }
    index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for sub, cfg, name in (
        ("unet", unet, "config.json"),
        ("vae", vae, "config.json"),
        ("text_encoder", text, "config.json"),
        ("scheduler", {**SD_SCHEDULER_CONFIG, "prediction_type": prediction_type}, "scheduler_config.json"),
    ):
        write_atomic(folder / sub / name, json.dumps(cfg))
    clip_tokenizer(77, pad_token="!" if sd2 else "<|endoftext|>").save_pretrained(
        folder / "tokenizer"
    )  # (identical files if two runs race)
    write_atomic(folder / "model_index.json", json.dumps(index))  # last: marks the folder complete
    return folder
