"""Dense optical flow on frames (OpenCV, no weights): computing it, warping by it, and the
forward-backward consistency test that marks occluded pixels."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow ``[H, W, 2]`` from RGB frame ``a`` to ``b``: OpenCV DIS (``dis``: its medium preset;
    ``dis-fast``: its fast preset, about 4x cheaper) or Farneback."""
    import cv2

    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 4, 15, 3, 5, 1.2, 0)
    preset = cv2.DISOPTICAL_FLOW_PRESET_FAST if method == "dis-fast" else cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
    return cv2.DISOpticalFlow_create(preset).calc(ga, gb, None)


def warp_back(img: np.ndarray, flow: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Sample ``img`` (frame t+1) at ``x + flow(x)``: frame t+1 brought back to frame t. ``origin``: the
    corner ``(x, y)`` in ``img`` of the window ``flow`` covers (the result is that window's, the same
    pixels as the whole frame's warp there)."""
    import cv2

    h, w = flow.shape[:2]
    g = (grid(h, w) if origin == (0, 0) else grid(h, w) + np.float32(origin)) + flow
    return cv2.remap(img, g[..., 0], g[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def valid_mask(fwd: np.ndarray, bwd: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow is consistent with the backward flow and stays in the frame
    (Sundaram et al.'s occlusion test)."""
    h, w = fwd.shape[:2]
    bwd_w = warp_back(bwd, fwd)
    diff = np.sum((fwd + bwd_w) ** 2, -1)
    bound = 0.01 * (np.sum(fwd**2, -1) + np.sum(bwd_w**2, -1)) + 0.5
    to = grid(h, w) + fwd
    inside = (to[..., 0] >= 0) & (to[..., 0] <= w - 1) & (to[..., 1] >= 0) & (to[..., 1] <= h - 1)
    return (diff < bound) & inside


def grid(h: int, w: int) -> np.ndarray:
    """``[h, w, 2]`` float32 pixel coordinates (x, y); read-only (shared between calls of one size)."""
    return _grid(int(h), int(w))


@functools.lru_cache(maxsize=16)
def _grid(h: int, w: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    g = np.stack([xs, ys], -1)
    g.flags.writeable = False
    return g


def photometric_error(frame: np.ndarray, other: np.ndarray, flow: np.ndarray, blur: float = 3.0) -> np.ndarray:
    """Mean absolute RGB difference between ``frame`` and ``other`` brought back by ``flow``,
    smoothed by a Gaussian of ``blur`` px: how well the flow explains the pixels, per pixel."""
    import cv2

    err = np.abs(warp_back(other, flow).astype(np.float32) - frame.astype(np.float32)).mean(-1)
    return cv2.GaussianBlur(err, (0, 0), blur) if blur > 0 else err


FlowPair = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def carry_keyframes(
    source: np.ndarray,
    edited: np.ndarray,
    reconstructed: np.ndarray | None,
    key_rows: Sequence[int],
    frames: Sequence[int],
    flows: FlowPair,
    mode: str = "two-nearest",
    occluded_weight: float = 0.05,
    carry: str = "residual",
) -> np.ndarray:
    """Every non-key row of ``source`` (``uint8 [T, H, W, 3]``) with the keyframes' edit carried to it.

    ``flows(i, j)`` gives ``(forward, backward)``: the flow from row ``i`` to key row ``key_rows[j]``
    and back. ``carry="residual"`` warps ``edited - reconstructed`` and adds it to the row's own
    pixels (where nothing was edited the row is unchanged; ``reconstructed=None``: the source key
    rows); ``"pixels"`` warps the edited keyframe itself. The keyframes on both sides
    (``mode="two-nearest"``) are blended by temporal distance times a forward-backward confidence
    (``occluded_weight`` where the test fails). Key rows get ``edited`` as it is.
    """
    from ipfacediff.runtime.tokens import neighbour_keys

    keys, at = list(key_rows), list(frames)
    reconstructed = source[keys] if reconstructed is None else np.asarray(reconstructed)
    if edited.shape != (len(keys), *source.shape[1:]) or reconstructed.shape != edited.shape:
        raise ValueError(
            f"edited {edited.shape} / reconstructed {reconstructed.shape} keyframes do not fit source {source.shape} "
            f"at rows {keys}"
        )
    residual = edited.astype(np.float32) - reconstructed.astype(np.float32)
    out = source.copy()
    out[keys] = edited
    key_times = [at[k] for k in keys]
    for i in range(len(source)):
        if i in keys:
            continue
        acc = np.zeros(source.shape[1:], np.float32)
        wsum = np.zeros(source.shape[1:3], np.float32)
        for j, wt in neighbour_keys(at[i], key_times, mode):
            fwd, bwd = flows(i, j)
            conf = np.where(valid_mask(fwd, bwd), 1.0, occluded_weight).astype(np.float32) * wt
            if carry == "pixels":
                acc += conf[..., None] * (warp_back(edited[j], fwd).astype(np.float32) - source[i])
            else:
                acc += conf[..., None] * warp_back(residual[j], fwd)
            wsum += conf
        carried = acc / np.maximum(wsum, 1e-6)[..., None]
        out[i] = np.clip(np.rint(source[i].astype(np.float32) + carried), 0, 255).astype(np.uint8)
    return out
