"""Objective ``edit`` (eps2): a target prompt per sample (``settings.prompts``, or a built-in list of
hair, eyeglasses, beard, smile and age edits); the directional loss of the recipe's localization loss
(``clip-directional``: ``1 - cos(E_I(y_gen) - E_I(y_ref), E_T(p_tar) - E_T(p_ref))``), a locality term
that keeps pixels outside the prompt's face part (a mask from the landmarks) close to the source, and
the identity term as a regulariser, plus a ``noise`` term for prior preservation.

Why the noise term: eps2 denoises at *every* timestep of an edit, while the image terms are only
meaningful where the one-step estimate is still a face (``t <= settings.identity_max_timestep``; they are
masked to those samples). The recipe therefore samples timesteps over the whole range
(``timestep_range: [1, 999]``) and keeps eps2 a good denoiser of real faces everywhere with the
noise-prediction loss under the *reference* prompt (not the target prompt: that would teach "target
prompt -> unchanged face"), one more UNet pass per batch."""

from __future__ import annotations

import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import TrainingBatch
from ipfacediff.runtime.training import DiffusionObjective, load_prompts, part_mask


class EditObjective(DiffusionObjective):
    """eps2: localized, prompt-following face edits."""

    description = (
        "eps2: target prompts; directional CLIP loss + locality outside the prompt's face part + identity regulariser"
    )
    requires = ("face_processor",)
    term_requires = {"identity": "identity_encoder", "directional": "localization_loss"}
    terms = ("noise", "identity", "directional", "locality")
    image_term_names = ("identity", "directional", "locality")
    default_weights = {"noise": 1.0, "directional": 1.0, "locality": 1.0, "identity": 0.1}

    def setup(self, backbone, faces, components, settings, weights) -> None:
        super().setup(backbone, faces, components, settings, weights)
        self.prompts = load_prompts(settings.prompts)
        dev = faces.z0.device
        self.masks = {
            part: torch.from_numpy(np.stack([part_mask(lm, faces.size, part) for lm in faces.landmarks])).to(dev)
            for part in {p for _, p in self.prompts}
        }

    def _targets(self, batch: TrainingBatch) -> list[str]:
        ref = self.settings.reference_prompt
        return [f"{ref}, {text}" if ref else text for text, _ in batch.prompts]

    def embeddings(self, batch: TrainingBatch) -> torch.Tensor:
        return self.backbone.encode_prompt(self._targets(batch))

    def noise_embeddings(self, batch: TrainingBatch) -> torch.Tensor:
        return self.backbone.encode_prompt([self.settings.reference_prompt]).expand(len(batch.idx), -1, -1)

    def image_terms(self, img: torch.Tensor, src: torch.Tensor, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        keep = (batch.t <= self.settings.identity_max_timestep).to(img.device)  # where the estimate is still a face
        if not bool(keep.any()):
            return {k: img.sum() * 0.0 for k in ("directional", "locality") if self.weights.get(k, 0) > 0}
        rows = [i for i, k in enumerate(keep.tolist()) if k]
        img, src = img[keep], src[keep]
        prompts, idx = [batch.prompts[i] for i in rows], batch.idx[keep.cpu()].tolist()
        if self.weights.get("directional", 0) > 0:
            tar = [t for i, t in enumerate(self._targets(batch)) if i in rows]
            out["directional"] = self.components["localization_loss"].forward(
                img, src, tar, [self.settings.reference_prompt or "a face"] * len(tar)
            )
        if self.weights.get("locality", 0) > 0:
            outside = torch.stack([1 - self.masks[part][i] for (_, part), i in zip(prompts, idx)])[:, None]
            out["locality"] = (((img - src) ** 2) * outside).sum() / (outside.sum() * 3 + 1e-6)
        return out


@ipfacediff.hookimpl
def register_objectives(register):
    register(EditObjective, name="edit")
