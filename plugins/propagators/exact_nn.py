"""Propagator ``exact-nn``: brute-force nearest-token propagation (torch.cdist), the reference
``latent-nn`` is tested against."""

from __future__ import annotations

import torch

import ipfacediff
from ipfacediff.runtime.tokens import NearestTokenPropagator


class ExactNN(NearestTokenPropagator):
    """Brute-force nearest neighbours (torch.cdist): the reference."""

    description = "exact nearest-neighbour token propagation from the two nearest keyframes (torch, brute force)"

    def match(self, feats: torch.Tensor, key_row: int) -> torch.Tensor:
        return torch.cdist(feats[None], self._keys_feats[key_row][None])[0].argmin(-1)


@ipfacediff.hookimpl
def register_propagators(register):
    register(ExactNN, name="exact-nn")
