"""The sample clip: made by the project itself from scikit-image's bundled astronaut photograph
(NASA, public domain) with a smooth synthetic head motion and a quiet tone as its audio track.
Used by ``make demo`` and by tests that must run without ../shared."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from ipfacediff.runtime.files import atomic_path
from ipfacediff.runtime.models import cache_dir

FACE_CENTRE = (224.0, 158.0)  # of the crop window in the 512x512 photograph (face at ~(224, 116))
WINDOW = 240
PHOTO_SIDE = 512


def frame_matrix(t: int, n_frames: int, size: int) -> np.ndarray:
    """The 2x3 affine map from the photograph to frame ``t``: rotation about the face, zoom and drift.
    The window is placed so that every frame's corners stay inside the photograph (no reflected or
    repeated border shows: an earlier window reached past its top edge and mirrored the hair)."""
    ph = 2 * math.pi * t / max(n_frames, 1)
    cx, cy = FACE_CENTRE
    angle = 6.0 * math.sin(ph)
    scale = 1.0 + 0.04 * math.sin(2 * ph)
    dx, dy = 10.0 * math.sin(ph + 0.7), 6.0 * math.sin(2 * ph)
    rot = np.vstack([cv2.getRotationMatrix2D((cx, cy - 30), angle, 1.0), [0, 0, 1]])  # rotate about the face
    s = size / (WINDOW / scale)
    crop = np.array(
        [[s, 0, -(cx + dx - WINDOW / scale / 2) * s], [0, s, -(cy + dy - WINDOW / scale / 2) * s], [0, 0, 1]]
    )
    return (crop @ rot)[:2]


def sample_frames(n_frames: int = 48, size: int = 256) -> np.ndarray:
    """``uint8 [n_frames, size, size, 3]``: the astronaut's head turning, nodding and moving."""
    from skimage import data

    img = data.astronaut()
    out = np.empty((n_frames, size, size, 3), np.uint8)
    for t in range(n_frames):
        m = frame_matrix(t, n_frames, size)
        interp = cv2.INTER_AREA if size < WINDOW else cv2.INTER_LINEAR
        out[t] = cv2.warpAffine(img, m, (size, size), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    return out


def _tone(n_frames: int, fps: int, rate: int = 44100) -> np.ndarray:
    t = np.arange(int(rate * n_frames / fps)) / rate
    return (0.05 * np.sin(2 * np.pi * 220 * t) * np.minimum(1, t * 4)).astype(np.float32)


def write_sample_clip(
    path: str | Path, n_frames: int = 48, size: int = 256, fps: int = 24, audio: bool = True
) -> Path:
    """Write the sample clip to ``path`` (H.264 + AAC MP4), atomically."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = sample_frames(n_frames, size)
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), mode="w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "16"}
        as_ = None
        if audio:
            as_ = out.add_stream("aac", rate=44100)
            as_.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if as_ is not None:
            samples = _tone(n_frames, fps)
            for i in range(0, len(samples), 1024):
                chunk = samples[i : i + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
                af.sample_rate = 44100
                af.pts = i
                af.time_base = Fraction(1, 44100)
                for p in as_.encode(af):
                    out.mux(p)
            for p in as_.encode():
                out.mux(p)
    return path


def sample_clip_path() -> Path:
    """The sample clip in the user cache, made on first use."""
    p = cache_dir() / "samples" / "astronaut-v2.mp4"  # v2: the window inside the photograph (v1 mirrored its top edge)
    if not p.is_file():
        write_sample_clip(p)
    return p
