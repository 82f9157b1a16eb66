"""Machinery shared by fine-tuning objectives: the prepared faces' latents, VAE round trips and
reference identities (:class:`TrainingFaces`), the noise-prediction / identity terms every
objective can weigh (:class:`DiffusionObjective`), prompt lists and face-part masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ipfacediff.errors import InputError
from ipfacediff.interfaces import Backbone, Objective, TrainingBatch
from ipfacediff.runtime.face import ARCFACE_TEMPLATE, arcface_crop_tensor, similarity_transform
from ipfacediff.runtime.frames import to_tensor

DEFAULT_PROMPTS = [
    "blonde hair | hair",
    "black hair | hair",
    "eyeglasses | eyes",
    "beard | lower",
    "smiling | lower",
    "older | face",
]
PARTS = ("eyes", "lower", "hair", "face", "all")
PART_WORDS = {
    "eyes": ("eyeglass", "glasses", "sunglass", "eye"),
    "lower": ("beard", "mustache", "moustache", "smil", "mouth", "lip", "teeth"),
    "hair": ("hair", "bald", "bangs"),
    "face": ("old", "young", "age", "makeup", "tan", "skin"),
}


class TrainingFaces:
    """Aligned face crops ``uint8 [N, S, S, 3]`` and their landmarks in crop pixels, with what every
    objective needs of them on ``device``: latents ``z0``, their VAE round trip ``rt`` (the
    reference images), pixel matrices crop -> ArcFace 112 crop ``m112``, and the reference identity
    embeddings ``ref_id`` when an identity encoder is given."""

    def __init__(
        self, backbone: Backbone, crops: np.ndarray, landmarks: np.ndarray, device: torch.device, identity_encoder=None
    ):
        from diffusers import DDIMScheduler

        self.crops, self.landmarks, self.size = crops, landmarks, crops.shape[1]
        self.alphas = DDIMScheduler.from_config(backbone.scheduler_config).alphas_cumprod.to(device, torch.float32)
        images = to_tensor(crops)
        with torch.no_grad():
            self.z0 = torch.cat([backbone.encode_images(images[i : i + 8]) for i in range(0, len(images), 8)]).to(
                device
            )
            self.rt = torch.cat([backbone.decode_latents(self.z0[i : i + 8]) for i in range(0, len(images), 8)]).to(
                device
            )
        self.m112 = (
            torch.from_numpy(np.stack([similarity_transform(lm, ARCFACE_TEMPLATE) for lm in landmarks]))
            .float()
            .to(device)
        )
        self.ref_id = None
        if identity_encoder is not None:
            with torch.no_grad():
                self.ref_id = identity_encoder.embed(arcface_crop_tensor(self.rt, self.m112))

    def __len__(self) -> int:
        return int(self.z0.shape[0])


class DiffusionObjective(Objective):
    """An objective on the UNet's noise prediction at a random timestep: the ``noise`` term (MSE to
    the true noise, or to v for a ``v_prediction`` checkpoint) and the ``identity`` term
    ``1 - cos(R(x0_hat), R(x0))`` (x0_hat the one-step clean estimate, read as the checkpoint's
    ``prediction_type`` says, decoded by the VAE, only where ``t <= settings.identity_max_timestep``: there it is
    still a face). Subclasses give the prompt embeddings (:meth:`embeddings`) and may add terms on
    the decoded estimate (:meth:`image_terms`)."""

    term_requires = {"identity": "identity_encoder"}
    image_term_names: tuple[str, ...] = ("identity",)

    def embeddings(self, batch: TrainingBatch) -> torch.Tensor:
        return self.backbone.encode_prompt([""]).expand(len(batch.idx), -1, -1)

    def noise_embeddings(self, batch: TrainingBatch) -> torch.Tensor | None:
        """The prompt of the ``noise`` term when it differs from :meth:`embeddings` (a second UNet
        pass; e.g. prior preservation under the reference prompt); ``None``: the same pass."""
        return None

    def image_terms(self, img: torch.Tensor, src: torch.Tensor, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        return {}

    def losses(self, unet: Any, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        faces, w = self.faces, self.weights
        dev = faces.z0.device
        idx, t, noise = batch.idx.to(dev), batch.t.to(dev), batch.noise.to(dev)
        a = faces.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * faces.z0[idx] + (1 - a).sqrt() * noise
        emb = self.embeddings(batch).to(dev)
        dtype = next(unet.parameters()).dtype
        eps = unet(xt.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample.float()
        out: dict[str, torch.Tensor] = {}
        v_pred = (self.backbone.scheduler_config or {}).get(
            "prediction_type", "epsilon"
        ) == "v_prediction"  # SD 2.x at 768
        if w.get("noise", 0) > 0:
            prior = self.noise_embeddings(batch)
            eps_n = (
                eps
                if prior is None
                else unet(xt.to(dtype), t, encoder_hidden_states=prior.to(dev, dtype)).sample.float()
            )
            target = a.sqrt() * noise - (1 - a).sqrt() * faces.z0[idx] if v_pred else noise
            out["noise"] = F.mse_loss(eps_n, target)
        if not any(w.get(k, 0) > 0 for k in self.image_term_names):
            return out
        x0_hat = a.sqrt() * xt - (1 - a).sqrt() * eps if v_pred else (xt - (1 - a).sqrt() * eps) / a.sqrt()
        img = self.backbone.decode_latents(x0_hat, grad=True).to(dev)
        if w.get("identity", 0) > 0:
            keep = t <= self.settings.identity_max_timestep
            if bool(keep.any()):
                e = self.components["identity_encoder"].embed(arcface_crop_tensor(img[keep], faces.m112[idx][keep]))
                out["identity"] = (1 - (e * faces.ref_id[idx][keep]).sum(-1)).mean()
            else:
                out["identity"] = img.sum() * 0.0
        out.update(self.image_terms(img, faces.rt[idx], batch))
        return out


def load_prompts(path: str) -> list[tuple[str, str]]:
    """(edit, face part) pairs: a file of lines ``edit`` or ``edit | part`` (``#`` comments), or the
    built-in list. A part left out is guessed from the words (eyeglasses -> eyes, beard -> lower...)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"prompts file {p} does not exist")
        lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise InputError(
                f"prompts file {p} is empty: give one edit per line, e.g. 'eyeglasses' or 'blonde hair | hair'"
            )
    else:
        lines = DEFAULT_PROMPTS
    out = []
    for ln in lines:
        text, _, part = (s.strip() for s in ln.partition("|"))
        if part and part not in PARTS:
            raise InputError(f"prompt {ln!r}: unknown face part {part!r} (valid: {', '.join(PARTS)})")
        if not part:
            low = text.lower()
            part = next((k for k, words in PART_WORDS.items() if any(w in low for w in words)), "face")
        out.append((text, part))
    return out


def part_mask(landmarks: np.ndarray, size: int, part: str) -> np.ndarray:
    """A soft ``[size, size]`` mask (1 inside) of a face part from five landmarks (eyes, nose, mouth
    corners) in crop pixels: where an edit of that part may change pixels."""
    if part == "all":
        return np.ones((size, size), np.float32)
    le, re_, nose, lm, rm = landmarks.astype(np.float64)
    d = max(np.linalg.norm(re_ - le), 1.0)
    eyes, mouth = (le + re_) / 2, (lm + rm) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def ellipse(c, rx, ry):
        r = ((xs - c[0]) / rx) ** 2 + ((ys - c[1]) / ry) ** 2
        return 1 / (1 + np.exp((np.sqrt(r) - 1) * 12))

    face = ellipse((eyes + mouth) / 2 + [0, 0.15 * d], 1.05 * d, 1.45 * d)
    if part == "eyes":
        m = ellipse(eyes, 1.0 * d, 0.45 * d)
    elif part == "lower":
        m = ellipse(mouth + [0, 0.25 * d], 0.95 * d, 0.75 * d)
    elif part == "hair":
        m = 1 - face
    else:
        m = face
    return m.astype(np.float32)
