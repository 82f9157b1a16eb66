"""Objective ``edit`` (eps2): a target prompt per sample (``settings.prompts``, or a built-in list of
hair, eyeglasses, beard, smile and age edits); the directional loss of the recipe's localization loss
(``clip-directional``: ``1 - cos(E_I(y_gen) - E_I(y_ref), E_T(p_tar) - E_T(p_ref))``), a locality term
that keeps pixels outside the prompt's face part (a mask from the landmarks) close to the source, and
the identity term as a regulariser."""

from __future__ import annotations

import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import TrainingBatch
from ipfacediff.runtime.training import DiffusionObjective, load_prompts, part_mask


class EditObjective(DiffusionObjective):
    """eps2: localized, prompt-following face edits."""

    description = "eps2: target prompts; directional CLIP loss + locality outside the prompt's face part + identity regulariser"
    requires = ("face_processor",)
    term_requires = {"identity": "identity_encoder", "directional": "localization_loss"}
    terms = ("noise", "identity", "directional", "locality")
    image_term_names = ("identity", "directional", "locality")
    default_weights = {"directional": 1.0, "locality": 1.0, "identity": 0.1}

    def setup(self, backbone, faces, components, settings, weights) -> None:
        super().setup(backbone, faces, components, settings, weights)
        self.prompts = load_prompts(settings.prompts)
        dev = faces.z0.device
        self.masks = {part: torch.from_numpy(np.stack([part_mask(lm, faces.size, part) for lm in faces.landmarks])).to(dev)
                      for part in {p for _, p in self.prompts}}

    def _targets(self, batch: TrainingBatch) -> list[str]:
        ref = self.settings.reference_prompt
        return [f"{ref}, {text}" if ref else text for text, _ in batch.prompts]

    def embeddings(self, batch: TrainingBatch) -> torch.Tensor:
        return self.backbone.encode_prompt(self._targets(batch))

    def image_terms(self, img: torch.Tensor, src: torch.Tensor, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.weights.get("directional", 0) > 0:
            tar = self._targets(batch)
            out["directional"] = self.components["localization_loss"].forward(img, src, tar, [self.settings.reference_prompt or "a face"] * len(tar))
        if self.weights.get("locality", 0) > 0:
            outside = torch.stack([1 - self.masks[part][i] for (_, part), i in zip(batch.prompts, batch.idx.tolist())])[:, None]
            out["locality"] = (((img - src) ** 2) * outside).sum() / (outside.sum() * 3 + 1e-6)
        return out


@ipfacediff.hookimpl
def register_objectives(register):
    register(EditObjective, name="edit")
