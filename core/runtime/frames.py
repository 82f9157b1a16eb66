"""Frames and images: uint8 ``[N, H, W, 3]`` frames <-> float ``[N, 3, H, W]`` tensors in [0, 1], and
the per-frame fidelity measures (PSNR, SSIM) that jobs, metrics and benchmarks share."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ipfacediff.interfaces import FaceDetection


def to_tensor(frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB frames ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [0, 1] (a new tensor)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(frames))).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``[N, 3, H, W]`` in [0, 1] -> uint8 RGB frames ``[N, H, W, 3]`` (clamped, rounded)."""
    return (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def as_frames(frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """A video as one array ``[T, H, W, 3]`` (a single frame gets T = 1)."""
    arr = np.asarray(frames)
    return arr[None] if arr.ndim == 3 else arr


def check_same_shape(source: np.ndarray, edited: np.ndarray, name: str) -> None:
    if source.shape != edited.shape:
        raise ValueError(f"{name}: source {source.shape} and edited {edited.shape} differ")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def region_psnr(predicted: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    """PSNR in dB of two uint8 RGB images over ``region`` (float ``[H, W]`` weights, the face), rounded to
    0.01; 100 where they agree there."""
    weight = region.astype(np.float64)[..., None]
    err = (predicted.astype(np.float64) - target.astype(np.float64)) ** 2
    mse = float((weight * err).sum() / max(3 * weight.sum(), 1e-9))
    return round(100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse)), 2)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB images (scikit-image)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def draw_detection(frame: np.ndarray, det: FaceDetection | None) -> np.ndarray:
    img = frame.copy()
    if det is None:
        cv2.putText(img, "no face", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 64, 64), 2)
        return img
    t = max(1, round(min(img.shape[:2]) / 200))
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    cv2.rectangle(img, (x0, y0), (x1, y1), (64, 255, 64), t)
    if det.landmarks is not None:
        for x, y in det.landmarks:
            cv2.circle(img, (int(round(x)), int(round(y))), 2 * t, (255, 64, 64), -1)
    return img


def make_strip(rows: list[list[np.ndarray]], height: int = 160) -> np.ndarray:
    """Tile rows of images (each resized to ``height``) into one picture."""
    out_rows = []
    for row in rows:
        tiles = [
            cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height), interpolation=cv2.INTER_AREA)
            for im in row
        ]
        out_rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in out_rows)
    out_rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in out_rows]
    return np.concatenate(out_rows, 0)


def caption(image: np.ndarray, lines: list[str], colour: tuple[int, int, int] = (150, 0, 0)) -> np.ndarray:
    """``image`` with a white band below holding ``lines`` of text (wrapped to its width)."""
    scale, thick, step = 0.5, 1, 20
    per_line = max(
        20, int(image.shape[1] / (cv2.getTextSize("x", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] + 0.5))
    )
    wrapped: list[str] = []
    for line in lines:
        words, cur = line.split(), ""
        for w in words:
            if cur and len(cur) + 1 + len(w) > per_line:
                wrapped.append(cur)
                cur = w
            else:
                cur = f"{cur} {w}".strip()
        wrapped.append(cur)
    band = np.full((step * len(wrapped) + 10, image.shape[1], 3), 255, np.uint8)
    for i, line in enumerate(wrapped):
        cv2.putText(band, line, (6, step * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return np.concatenate([image, band], 0)


def fade_outside(crop: np.ndarray, matrix: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """A copy of an aligned ``crop`` (``matrix``: frame -> crop) with the pixels that lie outside the
    frame faded towards white: pictures of crops that reach past the frame (a frame-filling face)
    show where the frame ends instead of the reflected border the crop was padded with."""
    inside = cv2.warpAffine(
        np.ones(frame_shape[:2], np.float32),
        np.asarray(matrix, np.float64),
        crop.shape[1::-1],
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )[..., None]
    return (crop * (0.25 + 0.75 * inside) + 255 * 0.75 * (1 - inside)).round().astype(np.uint8)
