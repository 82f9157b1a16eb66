"""``full-frame``: for clips that are already face crops (talking heads). The whole frame is the
crop (resized to the crop size) and paste-back replaces the whole frame; landmarks, needed for
identity crops, come from a landmark detector (``retinaface`` by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

import ipfacediff
from ipfacediff.interfaces import AlignedFace, FaceDetection, FaceProcessor


class FullFrame(FaceProcessor):
    """The whole frame is the face crop."""

    description = "whole frame as the crop (talking-head clips); landmarks from a detector"

    @dataclass
    class Params:
        landmarks: Literal["retinaface", "mtcnn", "none"] = field(
            default="retinaface", metadata={"help": "detector for landmarks"}
        )

    test_params = {"landmarks": "none"}

    def __init__(self, params: FullFrame.Params | None = None) -> None:
        super().__init__(params)
        self._detector = None

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        h, w = frame.shape[:2]
        if self.params.landmarks == "none":
            return [FaceDetection(np.array([0.0, 0.0, w, h]), 1.0, None, "full-frame")]
        if self._detector is None:
            self._detector = self.component("face_processor", self.params.landmarks).to(self.device)
        dets = self._detector.detect(frame)
        return [FaceDetection(np.array([0.0, 0.0, w, h]), d.score, d.landmarks, "full-frame") for d in dets[:1]]

    def align(self, frame: np.ndarray, detection: FaceDetection, size: int = 512) -> AlignedFace:
        h, w = frame.shape[:2]
        m = np.array([[size / w, 0, 0], [0, size / h, 0]], dtype=np.float64)
        crop = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR)
        return AlignedFace(crop, m, detection)

    def paste_back(self, frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        if crop.shape[:2] == (h, w):
            return crop.copy()
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


@ipfacediff.hookimpl
def register_face_processors(register):
    register(FullFrame, name="full-frame")
