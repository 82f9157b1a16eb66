"""Metric ``reconstruction``: PSNR/SSIM of the pipeline's null edit against the source."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import FidelityMetric


class Reconstruction(FidelityMetric):
    """PSNR (value) and SSIM of a null edit (the source prompt only) against the source."""

    description = "PSNR/SSIM of the pipeline's null edit (source prompt only) against the source video"
    inputs = "null-edit"


@ipfacediff.hookimpl
def register_metrics(register):
    register(Reconstruction, name="reconstruction")
