"""Backbones: ``tiny`` (seeded random UNet and CLIP text encoder of the real diffusers /
transformers classes, the real TAESD as VAE: the offline default, shows the mechanics, not a real
edit) and ``stable-diffusion`` (SD 1.x/2.x from a diffusers folder, a single .safetensors file or a
hub id in the local cache; optional TAESD VAE override).

eps1 and eps2 of the method are one UNet with two peft LoRA adapters, ``identity`` and ``edit``,
switched per call; with no adapters given both are the base model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

import ipfacediff
from ipfacediff import models
from ipfacediff.diffusion import clip_tokenizer, file_digest
from ipfacediff.errors import InputError, ModelNotFoundError
from ipfacediff.interfaces import Backbone

RANDOM_BACKBONE_NOTE = "random-weight backbone: shows the mechanics, not a real edit"

SD_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
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


class _DiffusersBackbone(Backbone):
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
                length = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
                ids = self.tokenizer([p], padding="max_length", max_length=length, truncation=True,
                                     return_tensors="pt").input_ids.to(self.device)
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
            raise ModelNotFoundError(f"LoRA adapter {name!r}: {p} does not exist (make one with `ipfacediff finetune`)")
        try:
            if p.is_file():
                self.unet.load_lora_adapter(str(p.parent), weight_name=p.name, prefix="unet", adapter_name=name)
            else:
                st = sorted(p.glob("*.safetensors"))
                kw = {"weight_name": "pytorch_lora_weights.safetensors" if (p / "pytorch_lora_weights.safetensors").is_file() else st[0].name} if st else {}
                self.unet.load_lora_adapter(str(p), prefix="unet", adapter_name=name, **kw)
        except Exception as exc:  # noqa: BLE001 - a bad adapter folder is a user error
            raise InputError(f"LoRA adapter {name!r} at {p} cannot be loaded: {str(exc).splitlines()[0][:200]}") from exc
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


class TinyBackbone(_DiffusersBackbone):
    """Seeded random UNet2DConditionModel + CLIPTextModel (real classes), real TAESD VAE."""

    description = "seeded random tiny UNet + CLIP text encoder, real TAESD VAE: offline default for tests and demos (" + RANDOM_BACKBONE_NOTE + ")"
    is_random = True

    @dataclass
    class Params:
        seed: int = 0
        resolution: int = field(default=256, metadata={"range": (64, 1024), "help": "working crop size (multiple of 8)"})
        vae: Literal["taesd", "random"] = field(default="taesd", metadata={"help": "real TAESD, or a random tiny autoencoder (no weights needed)"})
        adapters: dict = field(default_factory=dict, metadata={"help": "adapter name -> LoRA folder (identity, edit)"})
        eps_scale: float = field(default=0.05, metadata={"range": (0.0, 10.0), "help": (
            "scale of the random UNet's output layer: at 1.0 its noise predictions are so large and input-sensitive that "
            "DDIM inversion diverges (relative reconstruction error ~2 at 50 steps); at 0.05 the sampler behaves like a "
            "trained model's (error ~0.01 at 50 steps)")})

    def __init__(self, params: "TinyBackbone.Params | None" = None) -> None:
        super().__init__(params)
        from diffusers import AutoencoderTiny, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        p = self.params
        if p.resolution % 8:
            raise InputError(f"tiny backbone: resolution {p.resolution} is not a multiple of 8")
        self.resolution = p.resolution
        torch.manual_seed(p.seed)
        self.unet = UNet2DConditionModel(
            sample_size=p.resolution // 8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32)
        with torch.no_grad():
            self.unet.conv_out.weight.mul_(p.eps_scale)
            self.unet.conv_out.bias.mul_(p.eps_scale)
        self.text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
        self.tokenizer = clip_tokenizer(77)
        if p.vae == "taesd":
            self.vae = load_taesd()
        else:
            self.vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                       num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval().requires_grad_(False)
        self.vae_kind = "taesd"  # AutoencoderTiny either way
        self.scheduler_config = dict(SD_SCHEDULER_CONFIG)
        self._finish(p.adapters)


class StableDiffusionBackbone(_DiffusersBackbone):
    """Stable Diffusion 1.x/2.x from a diffusers folder, a single .safetensors/.ckpt, or a cached hub id."""

    description = "Stable Diffusion 1.x/2.x: diffusers folder, single .safetensors, or a hub id in the local cache; fp16/bf16 on GPU, fp32 on CPU"

    @dataclass
    class Params:
        path: str = field(default="", metadata={"help": "diffusers folder, .safetensors/.ckpt file, or hub id (owner/name) already cached"})
        vae: Literal["own", "taesd"] = field(default="own", metadata={"help": "the checkpoint's VAE or TAESD (much faster)"})
        dtype: Literal["auto", "fp32", "fp16", "bf16"] = field(default="auto", metadata={"help": "auto: fp16 on CUDA, fp32 on CPU"})
        resolution: int = field(default=512, metadata={"range": (64, 2048)})
        adapters: dict = field(default_factory=dict, metadata={"help": "adapter name -> LoRA folder (identity, edit)"})

    @classmethod
    def build_for_test(cls, workdir: str) -> "StableDiffusionBackbone":
        from ipfacediff.testing import make_tiny_sd_folder

        return cls(cls.Params(path=make_tiny_sd_folder(f"{workdir}/tiny-sd"), resolution=64))

    def __init__(self, params: "StableDiffusionBackbone.Params | None" = None) -> None:
        super().__init__(params)
        p = self.params
        if not p.path:
            raise ModelNotFoundError("stable-diffusion needs path: a diffusers folder, a .safetensors file or a cached hub id "
                                     "(--set backbone.path=...); Stable Diffusion weights are never downloaded at run time")
        kind, where = models.resolve_sd_checkpoint(p.path)
        self.resolution = p.resolution
        self.source = {"kind": kind, "path": str(where)}
        if kind == "single_file":
            self._load_single_file(Path(where))
        else:
            self._load_folder(Path(where))
        if p.vae == "taesd":
            self.vae = load_taesd()
            self.vae_kind = "taesd"
        self._finish(p.adapters)

    def _load_folder(self, folder: Path) -> None:
        import json

        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
        # transformers 5 builds an empty tokenizer (ids 0, 2, 2, ...) from a missing subfolder instead of
        # raising: only a folder with a vocabulary counts, else CLIP's own BPE (what SD 1.x uses)
        self.tokenizer = clip_tokenizer(77)
        if any((folder / "tokenizer" / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        if self.params.vae == "own":
            self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True).eval().requires_grad_(False)
            self.vae_kind = "kl"
        sched = folder / "scheduler" / "scheduler_config.json"
        self.scheduler_config = {**SD_SCHEDULER_CONFIG, **(json.loads(sched.read_text()) if sched.is_file() else {})}

    def _load_single_file(self, path: Path) -> None:
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_single_file(str(path), local_files_only=True, safety_checker=None,
                                                            config=str(_sd_config_dir(path)))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot load as a Stable Diffusion checkpoint ({str(exc).splitlines()[0][:200]})") from exc
        self.unet, self.text_encoder, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
        self.vae, self.vae_kind = pipe.vae.eval().requires_grad_(False), "kl"
        self.scheduler_config = {**SD_SCHEDULER_CONFIG, **dict(pipe.scheduler.config)}

    def to(self, device):  # type: ignore[override]
        dev = torch.device(device)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(self.params.dtype)
        if dtype is None:
            dtype = torch.float16 if dev.type == "cuda" else torch.float32
        if dev.type == "cpu" and dtype != torch.float32:
            warnings.warn("half precision on the CPU is slow and inexact; using fp32")
            dtype = torch.float32
        for m in (self.unet, self.text_encoder):
            m.to(dtype)
        self.vae.to(dtype)
        return super().to(dev)

    def identity(self) -> dict[str, Any]:
        d = super().identity()
        src = Path(self.source["path"])
        if src.is_file():
            d["weights_sha256"] = file_digest(src)
        else:
            unet_files = sorted((src / "unet").glob("*.safetensors")) or sorted((src / "unet").glob("*.bin"))
            d["weights_sha256"] = file_digest(unet_files[0]) if unet_files else str(src)
        return d


def _sd_config_dir(path: Path) -> Path:
    """A local diffusers config folder for single-file loading: SD 1.x configs written by
    ipfacediff itself (no hub access)."""
    import json

    from ipfacediff.models import cache_dir

    folder = cache_dir() / "configs" / "sd15"
    if (folder / "model_index.json").is_file():
        return folder
    unet = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False, "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    vae = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
           "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}
    text = {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
            "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12,
            "projection_dim": 768, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "layer_norm_eps": 1e-05}
    index = {"_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "safety_checker": [None, None],
             "requires_safety_checker": False,
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for sub, cfg, name in (("unet", unet, "config.json"), ("vae", vae, "config.json"), ("text_encoder", text, "config.json"),
                           ("scheduler", SD_SCHEDULER_CONFIG, "scheduler_config.json")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / name).write_text(json.dumps(cfg))
    clip_tokenizer(77).save_pretrained(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@ipfacediff.hookimpl
def register_backbones(register):
    register(TinyBackbone, name="tiny")
    register(StableDiffusionBackbone, name="stable-diffusion")
