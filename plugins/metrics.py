"""Built-in metrics that need no diffusion model: ``psnr`` and ``id-similarity``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

import ipfacediff
from ipfacediff.face import arcface_crop
from ipfacediff.interfaces import Metric


def _as_array(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    return arr


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


class PSNR(Metric):
    """Peak signal-to-noise ratio of edited vs source frames, dB (mean over frames)."""

    description = "PSNR (dB) of edited vs source frames; identical frames are capped at 100 dB"
    higher_is_better = True

    @dataclass
    class Params:
        cap: float = field(default=100.0, metadata={"range": (1.0, None), "help": "value reported for identical frames"})

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = _as_array(source), _as_array(edited)
        if src.shape != ed.shape:
            raise ValueError(f"psnr: source {src.shape} and edited {ed.shape} differ")
        per = [min(psnr(a, b), self.params.cap) for a, b in zip(src, ed)]
        return {"value": float(np.mean(per)), "per_frame": per}


class IdSimilarity(Metric):
    """Mean cosine between identity embeddings of each edited frame and its source frame."""

    description = "identity cosine of edited vs source frames (face found in the source, same crop in both)"
    higher_is_better = True

    @dataclass
    class Params:
        encoder: str = field(default="mobilefacenet", metadata={"help": "identity encoder plugin"})
        detector: str = field(default="retinaface", metadata={"help": "face processor giving the landmarks"})

    def __init__(self, params: "IdSimilarity.Params | None" = None) -> None:
        super().__init__(params)
        from ipfacediff.catalog import get_catalog

        catalog = get_catalog()
        self.encoder = catalog.build("identity_encoder", self.params.encoder)
        self.detector = catalog.build("face_processor", self.params.detector)

    def to(self, device):  # type: ignore[override]
        super().to(device)
        self.encoder.to(device)
        self.detector.to(device)
        return self

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = _as_array(source), _as_array(edited)
        per: list[float | None] = []
        for a, b in zip(src, ed):
            dets = self.detector.detect(a)
            if not dets or dets[0].landmarks is None:
                per.append(None)
                continue
            crops = np.stack([arcface_crop(a, dets[0].landmarks), arcface_crop(b, dets[0].landmarks)])
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                e = self.encoder.embed(x)
            per.append(float((e[0] * e[1]).sum()))
        vals = [v for v in per if v is not None]
        if not vals:
            return {"value": float("nan"), "per_frame": per, "note": "no face found in any source frame"}
        return {"value": float(np.mean(vals)), "per_frame": per, "frames_with_face": len(vals)}


@ipfacediff.hookimpl
def register_metrics(register):
    register(PSNR, name="psnr")
    register(IdSimilarity, name="id-similarity")
