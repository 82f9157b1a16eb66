"""Video metrics of the benchmark: identity consistency over time (``tl-id``, ``tg-id`` as STIT
defines them), edit strength (``clip-text``, ``clip-directional``), temporal stability
(``warp-error``, ``flicker``) and fidelity (``reconstruction``, ``propagation``: PSNR and SSIM of a
null edit / of propagated keyframe latents against the source).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import Metric
from ipfacediff.plugins.metrics import IdSimilarity, face_embeddings, source_landmarks


def _arr(frames) -> np.ndarray:
    a = np.asarray(frames)
    return a[None] if a.ndim == 3 else a


def _check(src: np.ndarray, ed: np.ndarray, name: str) -> None:
    if src.shape != ed.shape:
        raise ValueError(f"{name}: source {src.shape} and edited {ed.shape} differ")


# ------------------------------------------------------------------------------ identity over time

class _IdentityOverTime(IdSimilarity):
    """Shares ``id-similarity``'s parameters (encoder, detector) and its cached detections."""

    higher_is_better = True
    pairs = "adjacent"

    def embeddings(self, src: np.ndarray, ed: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Identity embeddings of source and edited frames, both cropped with the source's landmarks
        (frames without a face in the source are left out; shared with ``id-similarity``)."""
        lms = source_landmarks(self.detector, src)
        return face_embeddings(self.encoder, src, lms), face_embeddings(self.encoder, ed, lms), [i for i, lm in enumerate(lms) if lm is not None]

    @staticmethod
    def _mean_pair_cos(e: np.ndarray, pairs: str) -> float:
        if pairs == "adjacent":
            return float(np.mean(np.sum(e[:-1] * e[1:], -1)))
        g = e @ e.T
        iu = np.triu_indices(len(e), 1)
        return float(np.mean(g[iu]))

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = _arr(source), _arr(edited)
        _check(src, ed, self.name)
        es, ee, kept = self.embeddings(src, ed)
        if len(kept) < 2:
            return {"value": float("nan"), "note": f"needs a face in at least 2 source frames (found {len(kept)})"}
        s, e = self._mean_pair_cos(es, self.pairs), self._mean_pair_cos(ee, self.pairs)
        per = None
        if self.pairs == "adjacent":
            per = [float(v) for v in np.sum(ee[:-1] * ee[1:], -1) / np.maximum(np.sum(es[:-1] * es[1:], -1), 1e-6)]
        return {"value": e / s if s > 0 else float("nan"), "edited": e, "source": s, "frames_with_face": len(kept), "per_frame": per}


class TLID(_IdentityOverTime):
    """STIT's TL-ID: identity similarity of adjacent edited frames over that of the source (1.0 ideal)."""

    description = "temporally local identity consistency (STIT): adjacent-frame identity cosine, edited / source; 1.0 is ideal"
    pairs = "adjacent"


class TGID(_IdentityOverTime):
    """STIT's TG-ID: identity similarity over all pairs of edited frames over that of the source."""

    description = "temporally global identity consistency (STIT): all-pairs identity cosine, edited / source; 1.0 is ideal"
    pairs = "all"


# --------------------------------------------------------------------------------------- CLIP scores
class _ClipMetric(Metric):
    higher_is_better = True

    @dataclass
    class Params:
        model: str = field(default="ViT-B-32", metadata={"help": "open_clip model name ('tiny': random, reported as n/a)"})
        weights: str = field(default="", metadata={"help": "local open_clip weights file; without one the metric is n/a"})

    def _clip(self):
        if getattr(self, "_loss", None) is None:
            from ipfacediff.catalog import get_catalog

            self._loss = get_catalog().build("localization_loss", "clip-directional", {"model": self.params.model, "weights": self.params.weights})
            self._loss.to(self.device)
        return self._loss

    def _na(self) -> dict[str, Any] | None:
        if self.params.model == "tiny":
            return {"value": float("nan"), "note": "n/a: no CLIP weights (a tiny random CLIP)"}
        if not self.params.weights:
            return {"value": float("nan"), "note": f"n/a: no CLIP weights (bench --set metrics.{self.name}.weights=PATH)"}
        return None

    @staticmethod
    def _images(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255

    def compute(self, source, edited) -> dict[str, Any]:
        return {"value": float("nan"), "note": "needs the prompts (run through the benchmark harness)"}


class ClipText(_ClipMetric):
    """Mean CLIP cosine of each edited frame to the target prompt."""

    description = "CLIP image-text cosine of edited frames to the target prompt (open_clip; n/a without CLIP weights)"

    def compute_with_context(self, source, edited, context) -> dict[str, Any]:
        na = self._na()
        if na:
            return na
        clip, ed = self._clip(), _arr(edited)
        with torch.no_grad():
            img = torch.cat([clip.encode_images(self._images(ed[i:i + 16])) for i in range(0, len(ed), 16)])
            txt = clip.encode_texts([context["target_prompt"]])
        per = (img @ txt.T)[:, 0].cpu().numpy()
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


class ClipDirectionalMetric(_ClipMetric):
    """InstructPix2Pix-style direction similarity: cos(E_I(edited) - E_I(source), E_T(target) - E_T(source prompt))."""

    description = "CLIP direction similarity of (edited - source) images to (target - source) prompts (n/a without CLIP weights)"

    def compute_with_context(self, source, edited, context) -> dict[str, Any]:
        na = self._na()
        if na:
            return na
        clip, src, ed = self._clip(), _arr(source), _arr(edited)
        with torch.no_grad():
            d_img = torch.cat([clip.encode_images(self._images(ed[i:i + 16])) - clip.encode_images(self._images(src[i:i + 16]))
                               for i in range(0, len(ed), 16)])
            d_txt = clip.encode_texts([context["target_prompt"]]) - clip.encode_texts([context["source_prompt"]])
        per = torch.nn.functional.cosine_similarity(d_img, d_txt.expand_as(d_img), dim=-1).cpu().numpy()
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


# ------------------------------------------------------------------------------------ temporal
def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow ``[H, W, 2]`` from RGB frame ``a`` to ``b`` (OpenCV DIS or Farneback; no weights)."""
    import cv2

    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 4, 15, 3, 5, 1.2, 0)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ga, gb, None)


def warp_back(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``img`` (frame t+1) at ``x + flow(x)``: frame t+1 brought back to frame t."""
    import cv2

    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def valid_mask(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow is consistent with the backward flow and stays in the frame
    (Sundaram et al.'s occlusion test)."""
    h, w = fwd.shape[:2]
    bwd_w = warp_back(bwd, fwd)
    diff = np.sum((fwd + bwd_w) ** 2, -1)
    bound = 0.01 * (np.sum(fwd ** 2, -1) + np.sum(bwd_w ** 2, -1)) + 0.5
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    inside = (xs + fwd[..., 0] >= 0) & (xs + fwd[..., 0] <= w - 1) & (ys + fwd[..., 1] >= 0) & (ys + fwd[..., 1] <= h - 1)
    return (diff < bound) & inside


class WarpError(Metric):
    """Mean squared difference between each edited frame and the next edited frame warped back by the
    optical flow of the *source* (occluded pixels masked), in [0, 1]^2 units. Lower is better."""

    description = "flow warping error of the edited video (flow from the source, OpenCV DIS/Farneback, occlusions masked); lower is better"
    higher_is_better = False

    @dataclass
    class Params:
        flow: Literal["dis", "farneback"] = field(default="dis", metadata={"help": "OpenCV optical flow (no weights needed)"})

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = _arr(source), _arr(edited)
        _check(src, ed, self.name)
        if len(src) < 2:
            return {"value": float("nan"), "note": "needs at least 2 frames"}
        per, base, valid_frac = [], [], []
        for t in range(len(src) - 1):
            fwd = optical_flow(src[t], src[t + 1], self.params.flow)
            bwd = optical_flow(src[t + 1], src[t], self.params.flow)
            m = valid_mask(fwd, bwd)
            valid_frac.append(float(m.mean()))
            if not m.any():
                continue
            for vid, acc in ((ed, per), (src, base)):
                warped = warp_back(vid[t + 1], fwd).astype(np.float64) / 255
                err = ((vid[t].astype(np.float64) / 255 - warped) ** 2).mean(-1)
                acc.append(float(err[m].mean()))
        if not per:
            return {"value": float("nan"), "note": "no pixel passed the occlusion test"}
        return {"value": float(np.mean(per)), "per_frame": per, "source_value": float(np.mean(base)),
                "valid_fraction": float(np.mean(valid_frac))}


class Flicker(Metric):
    """Mean absolute difference between the edited and the source frame-to-frame change, in [0, 1]
    units: 0 when the edit adds no temporal change of its own. Lower is better."""

    description = "flicker: mean |(edited[t+1] - edited[t]) - (source[t+1] - source[t])| in [0, 1]; lower is better"
    higher_is_better = False

    def compute(self, source, edited) -> dict[str, Any]:
        src, ed = _arr(source).astype(np.float64) / 255, _arr(edited).astype(np.float64) / 255
        _check(src, ed, self.name)
        if len(src) < 2:
            return {"value": float("nan"), "note": "needs at least 2 frames"}
        per = np.abs(np.diff(ed, axis=0) - np.diff(src, axis=0)).mean(axis=(1, 2, 3))
        return {"value": float(per.mean()), "per_frame": [float(v) for v in per]}


# ------------------------------------------------------------------------------------ fidelity
def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


class _Fidelity(Metric):
    higher_is_better = True

    def compute(self, source, edited) -> dict[str, Any]:
        from ipfacediff.plugins.metrics import psnr

        src, ed = _arr(source), _arr(edited)
        _check(src, ed, self.name)
        p = [min(psnr(a, b), 100.0) for a, b in zip(src, ed)]
        s = [ssim(a, b) for a, b in zip(src, ed)]
        return {"value": float(np.mean(p)), "psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "per_frame": p}


class Reconstruction(_Fidelity):
    """PSNR (value) and SSIM of a null edit (the source prompt only) against the source."""

    description = "PSNR/SSIM of the pipeline's null edit (source prompt only) against the source video"
    inputs = "null-edit"


class Propagation(_Fidelity):
    """PSNR (value) and SSIM of face crops rebuilt by propagating the keyframes' own latents,
    against the source crops' VAE round trip: what the propagator loses, independent of any edit."""

    description = "PSNR/SSIM of non-key face crops rebuilt from the keyframes' own latents by the pipeline's propagator"
    inputs = "propagation"


@ipfacediff.hookimpl
def register_metrics(register):
    register(TLID, name="tl-id")
    register(TGID, name="tg-id")
    register(ClipText, name="clip-text")
    register(ClipDirectionalMetric, name="clip-directional")
    register(WarpError, name="warp-error")
    register(Flicker, name="flicker")
    register(Reconstruction, name="reconstruction")
    register(Propagation, name="propagation")
