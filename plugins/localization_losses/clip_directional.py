"""Localization loss ``clip-directional``: the directional CLIP loss of IP-FaceDiff's eps2,

    L_dir = 1 - cos(E_I(y_gen) - E_I(y_ref), E_T(p_tar) - E_T(p_ref)),

with E_I / E_T an open_clip model: any open_clip architecture name plus a local weights file (CLIP
weights are never downloaded at run time), or ``tiny``: a seeded random CLIP of a tiny config for
tests (its numbers mean nothing; ``is_random`` says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import ipfacediff
from ipfacediff.errors import InputError, ModelNotFoundError
from ipfacediff.interfaces import LocalizationLoss
from ipfacediff.runtime.messages import first_line

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_open_clip(seed: int = 0, image_size: int = 64):
    """A seeded random open_clip ``CLIP`` of a tiny config (real class, real BPE tokenizer)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    return CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16, image_size=image_size),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )


def open_clip_tokenizer(model: str):
    """The tokenizer of open_clip model ``model`` (its own vocabulary and context length, e.g. 76 for
    CoCa), offline: a model whose tokenizer is a Hugging Face one (SigLIP, XLM-R) needs it in the local cache."""
    import open_clip

    try:
        return open_clip.get_tokenizer(model)
    except Exception as exc:  # noqa: BLE001 - offline, not cached
        raise ModelNotFoundError(
            f"clip-directional: the tokenizer of {model!r} is not available offline "
            f"({first_line(exc, 120)}); "
            f"put it in the Hugging Face cache, or use a model with CLIP's own vocabulary (ViT-B-32, ViT-L-14, ...)"
        ) from exc


class ClipDirectional(LocalizationLoss):
    """1 - cos(image direction, text direction) in an open_clip embedding space."""

    description = (
        "directional CLIP loss 1 - cos(E_I(gen) - E_I(ref), E_T(target) - E_T(ref)) with open_clip (any model, local "
        "weights)"
    )

    @dataclass
    class Params:
        model: str = field(
            default="ViT-B-32", metadata={"help": "open_clip architecture name, or 'tiny' (random, for tests)"}
        )
        weights: str = field(
            default="", metadata={"help": "local open_clip weights file (.bin/.pt/.safetensors) for the model"}
        )
        seed: int = field(default=0, metadata={"help": "tiny model only"})

    @classmethod
    def build_for_test(cls, workdir: str) -> ClipDirectional:
        return cls(cls.Params(model="tiny"))

    def __init__(self, params: ClipDirectional.Params | None = None) -> None:
        super().__init__(params)
        import open_clip

        p = self.params
        self.is_random = p.model == "tiny"
        if self.is_random:
            self.model = tiny_open_clip(p.seed)
        else:
            if p.model not in open_clip.list_models():
                raise InputError(
                    f"clip-directional: unknown open_clip model {p.model!r} (see open_clip.list_models())"
                )
            if not p.weights:
                raise ModelNotFoundError(
                    f"clip-directional: model {p.model!r} needs local weights "
                    f"(--set localization_loss.weights=PATH); CLIP weights are never downloaded at run time"
                )
            if not Path(p.weights).expanduser().is_file():
                raise ModelNotFoundError(f"clip-directional: weights file {p.weights} does not exist")
            self.tokenizer = open_clip_tokenizer(p.model)
            self.model = open_clip.create_model(p.model, pretrained=str(Path(p.weights).expanduser()))
        self.model.eval().requires_grad_(False)
        if self.is_random:
            self.tokenizer = open_clip_tokenizer("ViT-B-32")  # CLIP's BPE, which the tiny model's vocabulary matches
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._text: dict[str, torch.Tensor] = {}

    def to(self, device):  # type: ignore[override]
        super().to(device)
        self.model.to(self.device)
        self._text = {}
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of ``[B, 3, H, W]`` in [0, 1] (differentiable)."""
        x = F.interpolate(
            images.to(self.device, torch.float32),
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        mean = x.new_tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(OPENAI_STD).view(1, 3, 1, 1)
        return F.normalize(self.model.encode_image((x - mean) / std), dim=-1)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings (cached per prompt)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text]
        if missing:
            with torch.no_grad():
                emb = F.normalize(self.model.encode_text(self.tokenizer(missing).to(self.device)), dim=-1)
            self._text.update(zip(missing, emb))
        return torch.stack([self._text[p] for p in prompts])

    def forward(
        self,
        generated: torch.Tensor,
        reference: torch.Tensor,
        target_prompts: Sequence[str],
        reference_prompts: Sequence[str],
    ) -> torch.Tensor:
        if len(target_prompts) != generated.shape[0] or len(reference_prompts) != generated.shape[0]:
            raise ValueError(
                f"clip-directional: {generated.shape[0]} images but {len(target_prompts)} / {len(reference_prompts)} "
                "prompts"
            )
        with torch.no_grad():
            ref = self.encode_images(reference)
        d_img = self.encode_images(generated) - ref
        d_txt = self.encode_texts(target_prompts) - self.encode_texts(reference_prompts)
        return (1 - F.cosine_similarity(d_img, d_txt, dim=-1, eps=1e-8)).mean()


@ipfacediff.hookimpl
def register_localization_losses(register):
    register(ClipDirectional, name="clip-directional")
