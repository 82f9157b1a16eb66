"""Built-in metrics that need no diffusion model: ``psnr`` and ``id-similarity``."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
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


_LANDMARKS: "OrderedDict[str, list]" = OrderedDict()
_EMBEDDINGS: "OrderedDict[str, np.ndarray]" = OrderedDict()


def digest(frames: np.ndarray) -> str:
    """A quick content key of a frame array (a strided sample of its bytes, and its shape)."""
    flat = np.ascontiguousarray(frames).reshape(-1)
    return hashlib.sha1(flat[:: max(1, flat.size // 2_000_000)].tobytes() + str(frames.shape).encode()).hexdigest()


def _remember(cache: OrderedDict, key: str, value, size: int):
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def source_landmarks(detector, source: np.ndarray) -> list:
    """Five landmarks of the primary face of every source frame (None without a face), cached per
    clip: the identity metrics of every job on one clip share one detection pass."""
    key = f"{digest(source)}|{detector.name}|{detector.params}"
    if key not in _LANDMARKS:
        out = []
        for a in source:
            dets = detector.detect(a)
            out.append(dets[0].landmarks if dets and dets[0].landmarks is not None else None)
        _remember(_LANDMARKS, key, out, 4)
    return _LANDMARKS[key]


def face_embeddings(encoder, frames: np.ndarray, landmarks: list) -> np.ndarray:
    """Identity embeddings ``[F, D]`` of ``frames`` cropped at ``landmarks`` (frames with a landmark only)."""
    key = f"{digest(frames)}|{hashlib.sha1(str([None if l is None else l.round(2).tolist() for l in landmarks]).encode()).hexdigest()}|{encoder.name}"
    if key not in _EMBEDDINGS:
        crops = [arcface_crop(f, lm) for f, lm in zip(frames, landmarks) if lm is not None]
        if not crops:
            return _remember(_EMBEDDINGS, key, np.zeros((0, 1), np.float32), 8)
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            e = torch.cat([encoder.embed(x[i:i + 64]) for i in range(0, len(x), 64)]).cpu().numpy()
        _remember(_EMBEDDINGS, key, e, 8)
    return _EMBEDDINGS[key]


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
        if src.shape != ed.shape:
            raise ValueError(f"id-similarity: source {src.shape} and edited {ed.shape} differ")
        lms = source_landmarks(self.detector, src)
        es, ee = face_embeddings(self.encoder, src, lms), face_embeddings(self.encoder, ed, lms)
        if len(es) == 0:
            return {"value": float("nan"), "per_frame": [None] * len(src), "note": "no face found in any source frame"}
        cos = iter(np.sum(es * ee, -1).tolist())
        per = [None if lm is None else float(next(cos)) for lm in lms]
        vals = [v for v in per if v is not None]
        return {"value": float(np.mean(vals)), "per_frame": per, "frames_with_face": len(vals)}


@ipfacediff.hookimpl
def register_metrics(register):
    register(PSNR, name="psnr")
    register(IdSimilarity, name="id-similarity")
