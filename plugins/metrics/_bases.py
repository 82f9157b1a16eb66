"""Bases shared by built-in metrics (each metric is its own plugin file): identity metrics that
detect the source's faces once per clip and embed crops with an identity encoder, CLIP metrics that
use the ``clip-directional`` localization loss's encoders, and fidelity metrics (PSNR + SSIM).
Dependencies are built by the catalog that built the metric (:meth:`Component.component`)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ipfacediff.interfaces import Metric
from ipfacediff.runtime.face import arcface_crop
from ipfacediff.runtime.frames import as_frames, check_same_shape, psnr, ssim, to_tensor

_LANDMARKS: OrderedDict[str, list] = OrderedDict()
_EMBEDDINGS: OrderedDict[str, np.ndarray] = OrderedDict()


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
    rounded = [None if lm is None else lm.round(2).tolist() for lm in landmarks]
    key = f"{digest(frames)}|{hashlib.sha1(str(rounded).encode()).hexdigest()}|{encoder.name}"
    if key not in _EMBEDDINGS:
        kept = [(f, lm) for f, lm in zip(frames, landmarks) if lm is not None]
        if not kept:
            return _remember(_EMBEDDINGS, key, np.zeros((0, 1), np.float32), 8)
        with torch.no_grad():
            e = torch.cat([_embed_faces(encoder, kept[i : i + 64]) for i in range(0, len(kept), 64)]).cpu().numpy()
        _remember(_EMBEDDINGS, key, e, 8)
    return _EMBEDDINGS[key]


def _embed_faces(encoder, faces: list[tuple[np.ndarray, np.ndarray]]) -> torch.Tensor:
    """The encoder's own alignment when it has one, else its ArcFace crops."""
    frames, landmarks = [f for f, _ in faces], [lm for _, lm in faces]
    e = encoder.embed_faces(frames, landmarks)
    if e is None:
        e = encoder.embed(to_tensor(np.stack([arcface_crop(f, lm) for f, lm in faces])))
    return e


class IdentityMetric(Metric):
    """An identity encoder and a face detector (by registered name), built on first use."""

    higher_is_better = True

    @dataclass
    class Params:
        encoder: str = field(default="mobilefacenet", metadata={"help": "identity encoder plugin"})
        detector: str = field(default="retinaface", metadata={"help": "face processor giving the landmarks"})

    _encoder: Any = None
    _detector: Any = None

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = self.component("identity_encoder", self.params.encoder).to(self.device)
        return self._encoder

    @property
    def detector(self):
        if self._detector is None:
            self._detector = self.component("face_processor", self.params.detector).to(self.device)
        return self._detector

    def to(self, device):  # type: ignore[override]
        super().to(device)
        for dep in (self._encoder, self._detector):
            if dep is not None:
                dep.to(device)
        return self

    def embeddings(self, src: np.ndarray, ed: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """Identity embeddings of source and edited frames, both cropped with the source's landmarks
        (frames without a face in the source are left out), and those landmarks."""
        lms = source_landmarks(self.detector, src)
        return face_embeddings(self.encoder, src, lms), face_embeddings(self.encoder, ed, lms), lms


class ClipMetric(Metric):
    """Image/text embeddings of the ``clip-directional`` localization loss (n/a without weights)."""

    higher_is_better = True

    @dataclass
    class Params:
        model: str = field(
            default="ViT-B-32", metadata={"help": "open_clip model name ('tiny': random, reported as n/a)"}
        )
        weights: str = field(
            default="", metadata={"help": "local open_clip weights file; without one the metric is n/a"}
        )

    _loss: Any = None

    def clip(self):
        if self._loss is None:
            self._loss = self.component(
                "localization_loss", "clip-directional", {"model": self.params.model, "weights": self.params.weights}
            )
            self._loss.to(self.device)
        return self._loss

    def not_available(self) -> dict[str, Any] | None:
        if self.params.model == "tiny":
            return {"value": float("nan"), "note": "n/a: no CLIP weights (a tiny random CLIP)"}
        if not self.params.weights:
            return {
                "value": float("nan"),
                "note": f"n/a: no CLIP weights (bench --set metrics.{self.name}.weights=PATH)",
            }
        return None

    def image_embeddings(self, frames: np.ndarray) -> torch.Tensor:
        clip = self.clip()
        return torch.cat([clip.encode_images(to_tensor(frames[i : i + 16])) for i in range(0, len(frames), 16)])

    def compute(self, source, edited) -> dict[str, Any]:
        return {"value": float("nan"), "note": "needs the prompts (run through the benchmark harness)"}


class FidelityMetric(Metric):
    """PSNR (the value) and SSIM of ``edited`` against ``source``, per frame."""

    higher_is_better = True

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, self.name)
        p = [min(psnr(a, b), 100.0) for a, b in zip(src, ed)]
        s = [ssim(a, b) for a, b in zip(src, ed)]
        return {"value": float(np.mean(p)), "psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "per_frame": p}


def stit_ratio(sim_source: np.ndarray, sim_edited: np.ndarray, pairs: str) -> dict[str, Any]:
    """STIT's temporal identity consistency from two frame-by-frame identity cosine-similarity
    matrices: the mean of the element-wise ratios ``R = S_edit / S_src`` over the pairs (``adjacent``:
    R's first superdiagonal, TL-ID; ``all``: every off-diagonal pair, TG-ID), and, as an extra field,
    the ratio of the two means (0.3's value)."""
    n = len(sim_source)
    rows, cols = (np.arange(n - 1), np.arange(1, n)) if pairs == "adjacent" else np.triu_indices(n, 1)
    s, e = sim_source[rows, cols], sim_edited[rows, cols]
    ratio = e / np.maximum(s, 1e-6)
    return {
        "value": float(np.mean(ratio)),
        "ratio_of_means": float(np.mean(e) / np.mean(s)) if np.mean(s) > 0 else float("nan"),
        "edited": float(np.mean(e)),
        "source": float(np.mean(s)),
        "per_pair": ratio,
    }


class IdentityOverTime(IdentityMetric):
    """STIT's temporal identity consistency (1.0 ideal): the mean over pairs of edited frames
    (``pairs``: ``adjacent`` or ``all``) of their identity cosine divided by the same pair's in the
    source (:func:`stit_ratio`)."""

    pairs = "adjacent"

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = as_frames(source), as_frames(edited)
        check_same_shape(src, ed, self.name)
        es, ee, lms = self.embeddings(src, ed)
        kept = [i for i, lm in enumerate(lms) if lm is not None]
        if len(kept) < 2:
            return {"value": float("nan"), "note": f"needs a face in at least 2 source frames (found {len(kept)})"}
        r = stit_ratio(es @ es.T, ee @ ee.T, self.pairs)
        per = [float(v) for v in r.pop("per_pair")] if self.pairs == "adjacent" else None
        return {**r, "frames_with_face": len(kept), "per_frame": per}
