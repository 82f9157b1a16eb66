"""insightface ArcFace ONNX models (e.g. ``w600k_r50.onnx`` of the buffalo_l pack) as a
differentiable identity encoder: the ONNX graph is converted to PyTorch with onnx2torch.

insightface's weights are not redistributable here: give the file with ``model_path``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import ipfacediff
from ipfacediff.errors import ModelNotFoundError
from ipfacediff.interfaces import IdentityEncoder


class InsightFaceArcFace(IdentityEncoder):
    """An insightface ArcFace recognition model (.onnx), converted to PyTorch."""

    description = "insightface ArcFace .onnx (user-supplied, e.g. buffalo_l w600k_r50) via onnx2torch; differentiable"
    input_size = 112

    @dataclass
    class Params:
        model_path: str | None = field(default=None, metadata={"help": "path of the recognition .onnx (default: $IPFACEDIFF_ARCFACE, else ~/.insightface/models/buffalo_l/w600k_r50.onnx)"})
        flip: bool = False

    def __init__(self, params: "InsightFaceArcFace.Params | None" = None) -> None:
        super().__init__(params)
        from ipfacediff.runtime.models import find_arcface

        found = None if self.params.model_path else find_arcface()
        path = self.params.model_path or (str(found) if found else None)
        if not path:
            raise ModelNotFoundError(
                "insightface-arcface needs model_path: an insightface recognition .onnx such as buffalo_l/w600k_r50.onnx "
                "(from the insightface model zoo; set it with --set identity_encoder.model_path=FILE or $IPFACEDIFF_ARCFACE)")
        self.params.model_path = path
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise ModelNotFoundError(f"insightface-arcface: {path} does not exist; download an insightface model pack "
                                     "(e.g. buffalo_l) and point model_path at its recognition .onnx")
        import onnx
        from onnx2torch import convert

        self.net = convert(onnx.load(path)).eval().requires_grad_(False)
        with torch.no_grad():
            self.embedding_dim = int(self.net(torch.zeros(1, 3, 112, 112)).shape[-1])

    @classmethod
    def build_for_test(cls, workdir: str) -> "InsightFaceArcFace":
        from ipfacediff.testing import make_tiny_arcface_onnx

        path = make_tiny_arcface_onnx(os.path.join(workdir, "tiny_arcface.onnx"))
        return cls(cls.Params(model_path=path))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if x.shape[-2:] != (112, 112):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        x = (x * 255.0 - 127.5) / 127.5
        f = self.net(x)
        if self.params.flip:
            f = f + self.net(torch.flip(x, dims=[3]))
        return F.normalize(f, dim=-1)


@ipfacediff.hookimpl
def register_identity_encoders(register):
    register(InsightFaceArcFace, name="insightface-arcface")
