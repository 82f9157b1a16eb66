"""Metric ``propagation``: what a pipeline's propagator loses, independent of any edit."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import FidelityMetric


class Propagation(FidelityMetric):
    """PSNR (value) and SSIM of face crops rebuilt by propagating the keyframes' own latents,
    against the source crops' VAE round trip: what the propagator loses, independent of any edit."""

    description = (
        "PSNR/SSIM of non-key face crops rebuilt from the keyframes' own latents by the pipeline's propagator"
    )
    inputs = "propagation"


@ipfacediff.hookimpl
def register_metrics(register):
    register(Propagation, name="propagation")
