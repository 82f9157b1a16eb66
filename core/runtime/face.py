"""Face geometry shared by face processors: five-point alignment, temporal smoothing, paste-back.

Alignment is a similarity transform (rotation, uniform scale, translation) from the detector's five
landmarks (left eye, right eye, nose, left and right mouth corner) to a template: the standard
ArcFace 112x112 template for identity crops, and the same template zoomed out and centred for
editing crops (hair and chin inside the crop, as FFHQ-style crops do).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ipfacediff.interfaces import FaceDetection, FaceProcessor
from ipfacediff.runtime.progress import progress_bar

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) mapping points ``src`` [N,2] to ``dst`` [N,2];
    returns a ``[2, 3]`` matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    r = u @ sign @ vt
    var_s = (s**2).sum() / len(src)
    scale = float(np.trace(np.diag(sig) @ sign) / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def crop_template(size: int, zoom: float = 0.45, shift_y: float = 0.06) -> np.ndarray:
    """The ArcFace template placed in a ``size`` crop: the 112-px template scaled so that it spans
    ``zoom`` of the crop, centred, and moved down by ``shift_y`` of the crop (room for hair)."""
    centred = (ARCFACE_TEMPLATE - 56.0) / 112.0
    return (centred * zoom + np.array([0.5, 0.5 + shift_y])) * size


def face_from_landmarks(landmarks: np.ndarray, score: float = 1.0, source: str = "") -> FaceDetection:
    """A face detection around five landmarks (a box as wide as twice their spread): for crops whose
    box is the crop itself (full-frame) or that were aligned to a template."""
    lm = np.asarray(landmarks, np.float64)
    c, span = lm.mean(0), float(np.ptp(lm, 0).max())
    return FaceDetection(np.array([c[0] - span, c[1] - span, c[0] + span, c[1] + span]), score, lm, source)


def template_face(size: int, zoom: float = 0.45) -> FaceDetection:
    """Where the face lies in an aligned ``size`` crop (its landmarks were moved onto the template)."""
    return face_from_landmarks(crop_template(size, zoom), 1.0, "template")


def invert_affine(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def align_to_template(
    frame: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``frame`` so that ``landmarks`` land on ``template``; returns ``(crop, matrix)``."""
    m = similarity_transform(landmarks, template)
    crop = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return crop, m


def arcface_crop(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The standard 112x112 ArcFace crop of a face."""
    return align_to_template(frame, landmarks, ARCFACE_TEMPLATE, 112)[0]


def arcface_crop_tensor(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Differentiable ArcFace crops: ``images [B,3,H,W]`` and pixel-space ``matrices [B,2,3]``
    (frame -> 112-crop) to ``[B,3,112,112]``, by ``grid_sample`` (gradients reach ``images``)."""
    b, _, h, w = images.shape
    inv = torch.linalg.inv(torch.cat([matrices, matrices.new_tensor([0, 0, 1]).expand(b, 1, 3)], 1))[:, :2]
    # crop pixel centre (x + 0.5) in normalised [-1, 1] coordinates -> frame normalised coordinates
    ys, xs = torch.meshgrid(
        torch.arange(112, dtype=images.dtype, device=images.device),
        torch.arange(112, dtype=images.dtype, device=images.device),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # crop pixel coords
    src = torch.einsum("bij,nj->bni", inv.to(images.dtype), pts)  # frame pixel coords
    grid = torch.stack([(src[..., 0] + 0.5) / w * 2 - 1, (src[..., 1] + 0.5) / h * 2 - 1], -1).reshape(b, 112, 112, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def feather_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """A float ``[size, size]`` mask: 1 inside, falling smoothly to 0 over ``feather`` of the side
    at the borders (0 on the outermost pixels)."""
    ramp = max(1, int(round(size * feather)))
    x = np.arange(size, dtype=np.float32)
    edge = np.minimum(x, size - 1 - x) / ramp
    one = np.clip(edge, 0.0, 1.0)
    one = 0.5 - 0.5 * np.cos(np.pi * one)  # smooth step
    return np.outer(one, one)


def paste_crop(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, feather: float = 0.1) -> np.ndarray:
    """Blend ``crop`` (made from ``frame`` with ``matrix``) back into a copy of ``frame``.

    Pixels outside the warped crop footprint are returned byte-identical."""
    h, w = frame.shape[:2]
    size = crop.shape[0]
    inv = invert_affine(matrix)
    warped = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(
        feather_mask(size, feather), inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    mask = mask[..., None]
    blended = np.clip(
        np.rint(mask * warped.astype(np.float32) + (1 - mask) * frame.astype(np.float32)), 0, 255
    ).astype(np.uint8)
    return np.where(mask > 0, blended, frame)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes."""
    return _iou(np.asarray(a, float), np.asarray(b, float))


def pick_primary(detections: Sequence[FaceDetection], previous: FaceDetection | None) -> FaceDetection | None:
    """The face that continues the track: best IoU with ``previous``, else the largest."""
    if not detections:
        return None
    if previous is not None:
        best = max(detections, key=lambda d: box_iou(d.box, previous.box))
        if box_iou(best.box, previous.box) > 0.1:
            return best
    return max(detections, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))


def smooth_track(dets: Sequence[FaceDetection | None], window: int) -> list[FaceDetection | None]:
    """Gaussian-weighted centred average of boxes and landmarks over ``window`` frames (only frames
    with a face contribute; frames without one stay ``None``)."""
    if window <= 1:
        return list(dets)
    half = window // 2
    sigma = max(half / 2.0, 1e-6)
    out: list[FaceDetection | None] = []
    for i, d in enumerate(dets):
        if d is None:
            out.append(None)
            continue
        wsum, box, lms = 0.0, np.zeros(4), None if d.landmarks is None else np.zeros((5, 2))
        for j in range(max(0, i - half), min(len(dets), i + half + 1)):
            dj = dets[j]
            if dj is None or (lms is not None and dj.landmarks is None):
                continue
            wj = float(np.exp(-0.5 * ((j - i) / sigma) ** 2))
            wsum += wj
            box += wj * np.asarray(dj.box, float)
            if lms is not None:
                lms += wj * np.asarray(dj.landmarks, float)
        out.append(FaceDetection(box / wsum, d.score, None if lms is None else lms / wsum, d.source))
    return out


def detect_track(
    processor: FaceProcessor, source, n: int, smoothing: int, show_progress: bool
) -> list[FaceDetection | None]:
    """Pass 1: the primary face of each of the first ``n`` frames, landmarks smoothed over time. Each
    frame is searched knowing the face of the frame before (:meth:`FaceProcessor.detect_next`)."""
    raw: list[FaceDetection | None] = []
    previous = None
    with progress_bar("detect", n, show_progress) as bar:
        for _, chunk in source.iter_chunks(source.batch, n):
            for f in chunk:
                d = pick_primary(processor.detect_next(f, raw[-1] if raw else None), previous)
                raw.append(d)
                previous = d or previous
                bar.advance()
    return smooth_track(raw, smoothing)


def aligned_faces(
    processor: FaceProcessor,
    source,
    n: int,
    track: list[FaceDetection | None],
    face_frames: list[int],
    resolution: int,
    show: bool,
) -> Iterator[tuple[int, Any]]:
    """(row into ``face_frames``, aligned face) for each face frame among the first ``n``, streamed
    (frames read in batches), with an ``align`` progress bar over the frames."""
    pos = {f: k for k, f in enumerate(face_frames)}
    with progress_bar("align", n, show) as bar:
        for start, chunk in source.iter_chunks(source.batch, n):
            for j, f in enumerate(chunk):
                if start + j in pos:
                    yield pos[start + j], processor.align(f, track[start + j], resolution)
            bar.advance(len(chunk))


def track_to_arrays(track: list[FaceDetection | None]) -> dict[str, np.ndarray]:
    n = len(track)
    found = np.array([d is not None for d in track], bool)
    has_lm = np.array([d is not None and d.landmarks is not None for d in track], bool)
    boxes, scores, lms = np.zeros((n, 4)), np.zeros(n), np.zeros((n, 5, 2))
    for i, d in enumerate(track):
        if d is not None:
            boxes[i], scores[i] = d.box, d.score
            if d.landmarks is not None:
                lms[i] = d.landmarks
    sources = np.array([d.source if d is not None else "" for d in track], dtype=str)
    return {
        "found": found,
        "has_landmarks": has_lm,
        "boxes": boxes,
        "scores": scores,
        "landmarks": lms,
        "sources": sources,
    }


def track_from_arrays(a: dict[str, np.ndarray]) -> list[FaceDetection | None]:
    return [
        FaceDetection(
            a["boxes"][i].copy(),
            float(a["scores"][i]),
            a["landmarks"][i].copy() if a["has_landmarks"][i] else None,
            str(a["sources"][i]),
        )
        if a["found"][i]
        else None
        for i in range(len(a["found"]))
    ]
