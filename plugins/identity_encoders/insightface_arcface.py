"""insightface ArcFace ONNX models (e.g. ``w600k_r50.onnx`` of the buffalo_l pack) as a
differentiable identity encoder: the ONNX graph is converted to PyTorch with onnx2torch.

insightface's weights are not redistributable here: give the file with ``model_path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.errors import ModelNotFoundError
from ipfacediff.plugins.identity_encoders._embed import CropEncoder


class InsightFaceArcFace(CropEncoder):
    """An insightface ArcFace recognition model (.onnx), converted to PyTorch."""

    description = "insightface ArcFace .onnx (user-supplied, e.g. buffalo_l w600k_r50) via onnx2torch; differentiable"
    input_size = 112

    @dataclass
    class Params:
        model_path: str | None = field(
            default=None,
            metadata={
                "help": (
                    "path of the recognition .onnx (default: $IPFACEDIFF_ARCFACE, else "
                    "~/.insightface/models/buffalo_l/w600k_r50.onnx)"
                )
            },
        )
        flip: bool = False

    def __init__(self, params: InsightFaceArcFace.Params | None = None) -> None:
        super().__init__(params)
        from ipfacediff.runtime.models import find_arcface

        found = None if self.params.model_path else find_arcface()
        path = self.params.model_path or (str(found) if found else None)
        if not path:
            raise ModelNotFoundError(
                "insightface-arcface needs model_path: an insightface recognition .onnx such as "
                "buffalo_l/w600k_r50.onnx "
                "(from the insightface model zoo; set it with --set identity_encoder.model_path=FILE or "
                "$IPFACEDIFF_ARCFACE)"
            )
        self.params.model_path = path
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise ModelNotFoundError(
                f"insightface-arcface: {path} does not exist; download an insightface model pack "
                "(e.g. buffalo_l) and point model_path at its recognition .onnx"
            )
        import onnx
        from onnx2torch import convert

        self.net = convert(onnx.load(path)).eval().requires_grad_(False)
        with torch.no_grad():
            self.embedding_dim = int(self.net(torch.zeros(1, 3, 112, 112)).shape[-1])

    @classmethod
    def build_for_test(cls, workdir: str) -> InsightFaceArcFace:
        from ipfacediff.testing import make_tiny_arcface_onnx

        path = make_tiny_arcface_onnx(os.path.join(workdir, "tiny_arcface.onnx"))
        return cls(cls.Params(model_path=path))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 255.0 - 127.5) / 127.5


@ipfacediff.hookimpl
def register_identity_encoders(register):
    register(InsightFaceArcFace, name="insightface-arcface")
