"""Dense optical flow on frames (OpenCV, no weights): computing it, warping by it, and the
forward-backward consistency test that marks occluded pixels."""

from __future__ import annotations

import numpy as np


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow ``[H, W, 2]`` from RGB frame ``a`` to ``b`` (OpenCV DIS or Farneback)."""
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
