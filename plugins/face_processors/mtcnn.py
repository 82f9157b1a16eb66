"""MTCNN face detector from facenet-pytorch (its bundled P/R/O-Net weights): boxes and five
landmarks. Slower than RetinaFace but much better at rejecting animal and cartoon faces."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

import ipfacediff
from ipfacediff.interfaces import FaceDetection
from ipfacediff.plugins.face_processors._landmarks import LandmarkFaceProcessor


class MTCNNProcessor(LandmarkFaceProcessor):
    """MTCNN (facenet-pytorch, bundled weights)."""

    description = "MTCNN (facenet-pytorch bundled weights): boxes + 5 landmarks"

    @dataclass
    class Params:
        threshold: float = field(default=0.99, metadata={"range": (0.0, 1.0), "help": "minimum face probability"})
        min_face_size: int = field(default=20, metadata={"range": (4, 1024)})
        max_side: int = field(
            default=800, metadata={"range": (64, 4096), "help": "frames are downscaled to this longest side"}
        )
        zoom: float = field(default=0.45, metadata={"range": (0.1, 1.0)})
        feather: float = field(default=0.1, metadata={"range": (0.0, 0.5)})

    def __init__(self, params: MTCNNProcessor.Params | None = None) -> None:
        super().__init__(params)
        self._mtcnn = None

    def _model(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(
                keep_all=True, min_face_size=self.params.min_face_size, device=self.device, post_process=False
            )
        return self._mtcnn

    def to(self, device):  # type: ignore[override]
        """Loads the model on ``device`` (a job's ``load_models``, not its first frame)."""
        self.device = torch.device(device)
        self._mtcnn = None
        self._model()
        return self

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        h, w = frame.shape[:2]
        scale = min(1.0, self.params.max_side / max(h, w))
        img = (
            frame
            if scale == 1.0
            else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        )
        if min(img.shape[:2]) < 12:
            return []
        with torch.inference_mode():
            boxes, probs, points = self._model().detect(np.ascontiguousarray(img), landmarks=True)
        if boxes is None:
            return []
        out = [
            FaceDetection(np.asarray(b, float) / scale, float(p), np.asarray(pt, float) / scale, "mtcnn")
            for b, p, pt in zip(boxes, probs, points)
            if p is not None and p >= self.params.threshold
        ]
        return sorted(out, key=lambda d: -d.score)


@ipfacediff.hookimpl
def register_face_processors(register):
    register(MTCNNProcessor, name="mtcnn")
