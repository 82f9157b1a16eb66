"""Backbone ``stable-diffusion``: SD 1.x/2.x from a diffusers folder, a single ``.safetensors`` file or
a hub id in the local cache (never downloaded at run time; ``path`` defaults to ``$IPFACEDIFF_SD_MODEL``);
optional TAESD VAE override. Folders that hold only the fp16 variant of a model's weights
(``*.fp16.safetensors``, as some hub snapshots do) load that variant."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import ipfacediff
from ipfacediff.errors import InputError, ModelNotFoundError
from ipfacediff.runtime import models
from ipfacediff.runtime.diffusers_backbone import (
    SD_SCHEDULER_CONFIG,
    DiffusersBackbone,
    load_taesd,
    sd_config_dir,
    single_file_family,
)
from ipfacediff.runtime.diffusion import clip_tokenizer, file_digest
from ipfacediff.runtime.messages import first_line


class StableDiffusionBackbone(DiffusersBackbone):
    """Stable Diffusion 1.x/2.x from a diffusers folder, a single .safetensors/.ckpt, or a cached hub id."""

    description = (
        "Stable Diffusion 1.x/2.x: diffusers folder, single .safetensors, or a hub id in the local cache; fp16/bf16 "
        "on GPU, fp32 on CPU"
    )

    @dataclass
    class Params:
        path: str = field(
            default="",
            metadata={
                "help": "diffusers folder, .safetensors/.ckpt file, or hub id (owner/name) already cached "
                "(default: $IPFACEDIFF_SD_MODEL)"
            },
        )
        vae: Literal["own", "taesd"] = field(
            default="own", metadata={"help": "the checkpoint's VAE or TAESD (much faster)"}
        )
        dtype: Literal["auto", "fp32", "fp16", "bf16"] = field(
            default="auto", metadata={"help": "auto: fp16 on CUDA, fp32 on CPU"}
        )
        resolution: int = field(
            default=512, metadata={"range": (64, 2048), "help": "SD 1.x and 2.x-base: 512; SD 2.x (768-v): 768"}
        )
        prediction_type: Literal["auto", "epsilon", "v_prediction"] = field(
            default="auto",
            metadata={
                "help": "auto: a folder's scheduler config; a single file: epsilon for SD 1.x, "
                "v_prediction for SD 2.x (768-v; set epsilon for 2.x-base)"
            },
        )
        adapters: dict = field(default_factory=dict, metadata={"help": "adapter name -> LoRA folder (identity, edit)"})

    @classmethod
    def build_for_test(cls, workdir: str) -> StableDiffusionBackbone:
        from ipfacediff.testing import make_tiny_sd_folder

        return cls(cls.Params(path=make_tiny_sd_folder(f"{workdir}/tiny-sd"), resolution=64))

    def __init__(self, params: StableDiffusionBackbone.Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        if not p.path and os.environ.get("IPFACEDIFF_SD_MODEL"):
            p.path = os.environ["IPFACEDIFF_SD_MODEL"]
        if not p.path:
            raise ModelNotFoundError(
                "stable-diffusion needs path: a diffusers folder, a .safetensors file or a cached hub id "
                "(--set backbone.path=... or $IPFACEDIFF_SD_MODEL); Stable Diffusion weights are never downloaded at "
                "run time"
            )
        kind, where = models.resolve_sd_checkpoint(p.path)
        self.resolution = p.resolution
        self.source = {"kind": kind, "path": str(where)}
        if kind == "single_file":
            self._load_single_file(Path(where))
        else:
            self._load_folder(Path(where))
        if p.prediction_type != "auto":
            self.scheduler_config["prediction_type"] = p.prediction_type
        if p.vae == "taesd":
            self.vae = load_taesd()
            self.vae_kind = "taesd"
        self._finish(p.adapters)

    def _load_folder(self, folder: Path) -> None:
        import json

        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(
            folder, subfolder="unet", local_files_only=True, variant=_variant(folder / "unet")
        )
        self.text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", local_files_only=True, variant=_variant(folder / "text_encoder")
        )
        # transformers 5 builds an empty tokenizer (ids 0, 2, 2, ...) from a missing subfolder instead of
        # raising: only a folder with a vocabulary counts, else CLIP's own BPE (what SD 1.x uses)
        self.tokenizer = clip_tokenizer(77)
        if any((folder / "tokenizer" / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        if self.params.vae == "own":
            self.vae = (
                AutoencoderKL.from_pretrained(
                    folder, subfolder="vae", local_files_only=True, variant=_variant(folder / "vae")
                )
                .eval()
                .requires_grad_(False)
            )
            self.vae_kind = "kl"
        sched = folder / "scheduler" / "scheduler_config.json"
        self.scheduler_config = {**SD_SCHEDULER_CONFIG, **(json.loads(sched.read_text()) if sched.is_file() else {})}

    def _load_single_file(self, path: Path) -> None:
        """SD 1.x or 2.x, told apart by the file's tensors; the configs follow (and the scheduler's
        ``prediction_type``: a file does not say whether it is 2.x-base or 768-v, so 2.x gets v and a
        warning when nothing was set)."""
        from diffusers import StableDiffusionPipeline

        try:
            family = single_file_family(path)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot read as a checkpoint ({first_line(exc)})") from exc
        prediction = self.params.prediction_type
        if prediction == "auto":
            prediction = "v_prediction" if family == "sd2" else "epsilon"
            if family == "sd2":
                warnings.warn(
                    f"{path.name}: Stable Diffusion 2.x, taken as the 768-v model (v-prediction); for a 2.x-base "
                    "checkpoint set backbone.prediction_type=epsilon",
                    stacklevel=2,
                )
        self.source["family"] = family
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), local_files_only=True, safety_checker=None, config=str(sd_config_dir(family, prediction))
            )
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{path}: cannot load as a Stable Diffusion checkpoint ({first_line(exc)})") from exc
        self.unet, self.text_encoder, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
        self.vae, self.vae_kind = pipe.vae.eval().requires_grad_(False), "kl"
        self.scheduler_config = {**SD_SCHEDULER_CONFIG, **dict(pipe.scheduler.config)}

    def to(self, device):  # type: ignore[override]
        dev = torch.device(device)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(self.params.dtype)
        if dtype is None:
            dtype = torch.float16 if dev.type == "cuda" else torch.float32
        if dev.type == "cpu" and dtype != torch.float32:
            warnings.warn("half precision on the CPU is slow and inexact; using fp32", stacklevel=2)
            dtype = torch.float32
        for m in (self.unet, self.text_encoder):
            m.to(dtype)
        self.vae.to(dtype)
        return super().to(dev)

    def identity(self) -> dict[str, Any]:
        """Every weight file counts (UNet, text encoder, VAE, in every subfolder): two checkpoints that
        share a UNet file but not a text encoder are different backbones to the cache."""
        d = super().identity()
        src = Path(self.source["path"])
        if src.is_file():
            d["weights_sha256"] = file_digest(src)
        else:
            files = sorted(f for ext in ("*.safetensors", "*.bin", "*.ckpt") for f in src.rglob(ext) if f.is_file())
            d["weights_sha256"] = {str(f.relative_to(src)): file_digest(f) for f in files} if files else str(src)
        return d


def _variant(sub: Path) -> str | None:
    """``"fp16"`` when a model folder holds only fp16-variant weights (``*.fp16.safetensors``), else ``None``."""
    names = [f.name for ext in ("*.safetensors", "*.bin") for f in sub.glob(ext)]
    plain = [n for n in names if n.count(".") == 1]
    return "fp16" if not plain and any(".fp16." in n for n in names) else None


@ipfacediff.hookimpl
def register_backbones(register):
    register(StableDiffusionBackbone, name="stable-diffusion")
