"""Keyframe selection: uniform every N frames, N evenly spaced, or by head-pose diversity
(farthest-point sampling on box-normalised landmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ipfacediff.errors import ParameterError
from ipfacediff.interfaces import FaceDetection


def select_keyframes(
    n_frames: int,
    method: str,
    interval: int = 8,
    count: int = 5,
    detections: Sequence[FaceDetection | None] | None = None,
) -> list[int]:
    """Sorted keyframe indices into ``range(n_frames)``."""
    if n_frames < 1:
        raise ParameterError("no frames to select keyframes from")
    if method == "uniform":
        if interval > n_frames:
            raise ParameterError(
                f"keyframe interval {interval} is larger than the video ({n_frames} frames); "
                f"use --set settings.keyframe_interval={n_frames} or less"
            )
        return list(range(0, n_frames, interval))
    if count > n_frames:
        raise ParameterError(f"keyframe count {count} is larger than the video ({n_frames} frames)")
    if method == "count":
        return sorted(set(np.linspace(0, n_frames - 1, count).round().astype(int).tolist()))
    if method == "pose":
        if detections is None or all(d is None or d.landmarks is None for d in detections):
            return select_keyframes(n_frames, "count", count=count)
        feats = []
        for d in detections:
            if d is None or d.landmarks is None:
                feats.append(None)
                continue
            box = np.asarray(d.box, float)
            size = max(box[2] - box[0], box[3] - box[1], 1e-6)
            feats.append(((np.asarray(d.landmarks, float) - box[:2]) / size).ravel())
        valid = [i for i, f in enumerate(feats) if f is not None]
        x = np.stack([feats[i] for i in valid])
        chosen = [0]
        dist = np.linalg.norm(x - x[0], axis=1)
        while len(chosen) < min(count, len(valid)):
            nxt = int(dist.argmax())
            if dist[nxt] <= 0:
                break
            chosen.append(nxt)
            dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
        return sorted({valid[i] for i in chosen})
    raise ParameterError(f"unknown keyframe method {method!r} (uniform, count, pose)")
