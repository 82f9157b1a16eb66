"""insightface ArcFace .onnx models as an identity encoder, on a tiny ONNX model the test builds."""

import numpy as np
import pytest
import torch

from ipfacediff.errors import ModelNotFoundError
from ipfacediff.testing import make_tiny_arcface_onnx


def test_converted_model_matches_onnxruntime_and_is_differentiable(tmp_path, catalog):
    import onnxruntime as ort

    path = make_tiny_arcface_onnx(str(tmp_path / "tiny.onnx"), dim=16)
    enc = catalog.build("identity_encoder", "insightface-arcface", {"model_path": path})
    assert enc.embedding_dim == 16
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0), requires_grad=True)
    e = enc.embed(x)
    ref = ort.InferenceSession(path).run(
        None, {"input.1": ((x.detach().numpy() * 255 - 127.5) / 127.5).astype(np.float32)}
    )[0]
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(e.detach().numpy(), ref, atol=1e-4)
    (1 - e[0] @ e[1]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_model_path_says_how(catalog):
    with pytest.raises(ModelNotFoundError, match="needs model_path"):
        catalog.build("identity_encoder", "insightface-arcface")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        catalog.build("identity_encoder", "insightface-arcface", {"model_path": "/nonexistent/w600k_r50.onnx"})
