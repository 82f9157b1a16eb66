"""Dense face landmarks: MediaPipe FaceMesh (468 points) and piecewise-affine warps by them.

The network is the PyTorch port of MediaPipe's FaceMesh (weights ``facemesh`` in the model
resolver): a 192x192 RGB crop in [-1, 1] in, 468 (x, y, z) landmarks in crop pixels and a face
score out. :func:`face_mesh` runs it on frames around a detected face (the crop 1.5x the face,
turned upright by the eye line, then re-cropped around the first pass's landmarks);
:func:`piecewise_affine_map` turns two landmark sets into a dense sampling map (the triangles of
one set carried to the other), which is how the ground-truth propagation benchmark moves a
synthetic edit with the face.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIZE = 192


class _Block(nn.Module):
    """Depthwise 3x3 + pointwise conv with a residual branch (max-pooled and zero-padded in
    channels when the block downsamples or widens), PReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.stride, self.pad_channels = stride, cout - cin
        self.convs = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 0 if stride == 2 else 1, groups=cin), nn.Conv2d(cin, cout, 1)
        )
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:  # TFLite's "same" padding for a stride-2 depthwise conv: bottom/right only
            h, x = F.pad(x, (0, 2, 0, 2)), F.max_pool2d(x, 2)
        else:
            h = x
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return self.act(self.convs(h) + x)


class FaceMesh(nn.Module):
    """468 landmarks (crop pixels, x y z) and a face logit from a ``[B, 3, 192, 192]`` crop in [-1, 1]."""

    def __init__(self):
        super().__init__()
        widths = [
            (16, 16, 1),
            (16, 16, 1),
            (16, 32, 2),
            (32, 32, 1),
            (32, 32, 1),
            (32, 64, 2),
            (64, 64, 1),
            (64, 64, 1),
            (64, 128, 2),
            (128, 128, 1),
            (128, 128, 1),
            (128, 128, 2),
            (128, 128, 1),
            (128, 128, 1),
        ]
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.PReLU(16), *[_Block(a, b, s) for a, b, s in widths])
        self.coord_head = nn.Sequential(
            _Block(128, 128, 2),
            _Block(128, 128),
            _Block(128, 128),
            nn.Conv2d(128, 32, 1),
            nn.PReLU(32),
            _Block(32, 32),
            nn.Conv2d(32, 1404, 3),
        )
        self.conf_head = nn.Sequential(
            _Block(128, 128, 2), nn.Conv2d(128, 32, 1), nn.PReLU(32), _Block(32, 32), nn.Conv2d(32, 1, 3)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone(F.pad(x, (1, 0, 1, 0), mode="reflect"))
        return self.coord_head(x).reshape(len(x), 468, 3), self.conf_head(x).reshape(len(x))


_LOADED: dict[str, FaceMesh] = {}


def load_facemesh(path: str | None = None) -> FaceMesh:
    from ipfacediff.runtime.models import resolve

    p = resolve("facemesh", path)
    if str(p) not in _LOADED:
        net = FaceMesh()
        net.load_state_dict(torch.load(p, map_location="cpu", weights_only=True), strict=True)
        _LOADED[str(p)] = net.eval()
    return _LOADED[str(p)]


def _crop_matrix(center: np.ndarray, side: float, angle: float) -> np.ndarray:
    """Frame -> 192-crop similarity: ``center`` to the crop centre, ``side`` px to 192, turned by ``-angle``."""
    s = SIZE / side
    c, si = np.cos(-angle) * s, np.sin(-angle) * s
    m = np.array([[c, -si, 0.0], [si, c, 0.0]])
    m[:, 2] = SIZE / 2 - m[:, :2] @ center
    return m


@torch.no_grad()
def _run(net: FaceMesh, frame: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, float]:
    crop = cv2.warpAffine(frame, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    pts, logit = net(x)
    pts = pts[0].numpy().astype(np.float64)
    inv = cv2.invertAffineTransform(m)
    xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
    z = pts[:, 2] / np.sqrt(abs(np.linalg.det(m[:, :2])))
    return np.concatenate([xy, z[:, None]], 1), float(torch.sigmoid(logit[0]))


def face_mesh(
    net: FaceMesh, frame: np.ndarray, box: np.ndarray, eyes: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """``[468, 3]`` landmarks in frame pixels (z in the same scale) and the face score, for the
    face in ``box`` (x0 y0 x1 y1); ``eyes`` (left, right) turn the crop upright."""
    box = np.asarray(box, np.float64)
    center = (box[:2] + box[2:]) / 2
    angle = 0.0
    if eyes is not None:
        d = np.asarray(eyes[1], np.float64) - np.asarray(eyes[0], np.float64)
        angle = float(np.arctan2(d[1], d[0]))
    side = 1.5 * float(max(box[2] - box[0], box[3] - box[1]))
    pts, score = _run(net, frame, _crop_matrix(center, side, angle))
    # second pass, as MediaPipe tracks: the crop re-centred on the first landmarks, 1.5x their extent
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    d = pts[263, :2] - pts[33, :2]  # outer eye corners (subject's left, right)
    angle = float(np.arctan2(d[1], d[0]))
    pts, score = _run(net, frame, _crop_matrix((lo + hi) / 2, 1.5 * float(max(hi - lo)), angle))
    return pts, score


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``[T, 3]`` (indices) of 2-D ``points``."""
    from scipy.spatial import Delaunay

    return Delaunay(np.asarray(points, np.float64)[:, :2]).simplices.astype(np.int32)


def piecewise_affine_map(
    dst: np.ndarray, src: np.ndarray, triangles: np.ndarray, shape: Sequence[int], depth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel of an ``shape`` (h, w) image, where it comes from: the triangle of ``dst``
    it lies in carried affinely onto the same triangle of ``src``. Returns ``(map_xy [h, w, 2]
    float32, inside [h, w] bool)``; triangles are drawn far to near by ``depth`` (per point, larger
    = farther) so a fold shows the near side."""
    h, w = int(shape[0]), int(shape[1])
    dst, src = np.asarray(dst, np.float64)[:, :2], np.asarray(src, np.float64)[:, :2]
    tri = np.asarray(triangles)
    order = np.arange(len(tri)) if depth is None else np.argsort(-np.asarray(depth)[tri].mean(1), kind="stable")
    index = np.full((h, w), -1, np.int32)
    for t in order:
        cv2.fillConvexPoly(index, np.rint(dst[tri[t]] * 16).astype(np.int32), int(t), lineType=cv2.LINE_8, shift=4)
    inside = index >= 0
    ys, xs = np.nonzero(inside)
    t = index[ys, xs]
    a, b, c = dst[tri[t, 0]], dst[tri[t, 1]], dst[tri[t, 2]]
    p = np.stack([xs, ys], 1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-9, 1e-9, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    l0 = 1 - l1 - l2
    mapped = l0[:, None] * src[tri[t, 0]] + l1[:, None] * src[tri[t, 1]] + l2[:, None] * src[tri[t, 2]]
    out = np.zeros((h, w, 2), np.float32)
    out[..., 0], out[..., 1] = np.arange(w)[None, :], np.arange(h)[:, None]
    out[ys, xs] = mapped
    return out, inside
