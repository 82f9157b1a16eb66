"""What the landmark face processors of this folder share (a helper, not a plugin): alignment of the
five landmarks to the crop template and the feathered paste-back."""

from __future__ import annotations

import numpy as np

from ipfacediff.interfaces import AlignedFace, FaceDetection, FaceProcessor
from ipfacediff.runtime.face import align_to_template, crop_template, paste_crop


class LandmarkFaceProcessor(FaceProcessor):
    """Base of detectors that give five landmarks: alignment and paste-back are shared.

    Subclasses implement :meth:`detect`. Params used here (declare them in the subclass's Params
    to make them configurable): ``zoom`` (face size in the crop), ``feather``.
    """

    zoom: float = 0.45
    feather: float = 0.1

    def align(self, frame: np.ndarray, detection: FaceDetection, size: int = 512) -> AlignedFace:
        if detection.landmarks is None:
            raise ValueError(f"{self.name}: the detection has no landmarks to align with")
        zoom = getattr(self.params, "zoom", self.zoom)
        crop, m = align_to_template(frame, detection.landmarks, crop_template(size, zoom), size)
        return AlignedFace(crop, m, detection)

    def paste_back(self, frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        return paste_crop(frame, crop, matrix, getattr(self.params, "feather", self.feather))
