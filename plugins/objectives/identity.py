"""Objective ``identity`` (eps1): the empty prompt; the noise-prediction loss plus the ArcFace identity
loss ``L_id = 1 - cos(R(x0_hat), R(x0))`` where x0_hat is still a face."""

from __future__ import annotations

import ipfacediff
from ipfacediff.runtime.training import DiffusionObjective


class IdentityObjective(DiffusionObjective):
    """eps1: keep who the person is (empty prompt; noise + identity terms)."""

    description = "eps1: empty prompt, noise-prediction loss + ArcFace identity loss on the one-step clean estimate"
    requires = ("face_processor",)
    terms = ("noise", "identity")
    default_weights = {"noise": 1.0, "identity": 0.1}


@ipfacediff.hookimpl
def register_objectives(register):
    register(IdentityObjective, name="identity")
