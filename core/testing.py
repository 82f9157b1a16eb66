"""Helpers for tests of ipfacediff and of third-party plugins: tiny seeded models and the
conformance check every registered component must pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .interfaces import (AlignedFace, Backbone, Component, Editor, FaceDetection, FaceProcessor, IdentityEncoder, Inverter,
                         LocalizationLoss, Metric, Propagator)


def make_tiny_arcface_onnx(path: str, dim: int = 16, seed: int = 0) -> str:
    """Write a tiny, seeded ArcFace-shaped ONNX model (``[B,3,112,112]`` -> ``[B,dim]``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(8, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (dim, 8)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(dim, np.float32), "b2")
    nodes = [
        helper.make_node("Conv", ["input.1", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["683"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_arcface", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", dim])], [w1, b1, w2, b2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def synthetic_face_frame(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random RGB frame and plausible five landmarks for it (no real face)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3)).astype(np.float32)
    import cv2

    frame = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    s = size / 112.0
    from .face import ARCFACE_TEMPLATE

    return frame, ARCFACE_TEMPLATE * s * 0.6 + size * 0.2


def _finite(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return math.isfinite(float(x))


def conformance_check(component: Component) -> dict[str, Any]:
    """Run ``component`` on a tiny input for its kind and check the output's shape and finiteness.

    Returns what was checked; raises ``AssertionError`` on a violation."""
    if isinstance(component, FaceProcessor):
        frame, lms = synthetic_face_frame()
        dets = component.detect(frame)
        assert isinstance(dets, list) and all(isinstance(d, FaceDetection) for d in dets)
        det = FaceDetection(np.array([20.0, 20, 108, 108]), 1.0, lms)
        aligned = component.align(frame, det, 64)
        assert isinstance(aligned, AlignedFace) and aligned.crop.shape == (64, 64, 3) and aligned.crop.dtype == np.uint8
        back = component.paste_back(frame, aligned.crop, aligned.matrix)
        assert back.shape == frame.shape and back.dtype == np.uint8
        err = float(np.abs(back.astype(float) - frame.astype(float)).mean())
        assert err < 40, f"align -> paste_back changed the frame by {err:.1f} on average"
        return {"detections": len(dets), "roundtrip_error": err}
    if isinstance(component, IdentityEncoder):
        x = torch.rand(2, 3, component.input_size, component.input_size, generator=torch.Generator().manual_seed(0))
        e = component.embed(x)
        assert e.ndim == 2 and e.shape[0] == 2 and _finite(e)
        assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-4)
        return {"dim": int(e.shape[1])}
    if isinstance(component, Metric):
        rng = np.random.default_rng(0)
        src = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
        edited = np.clip(src.astype(int) + rng.integers(-10, 10, src.shape), 0, 255).astype(np.uint8)
        res = component.compute(src, edited)
        assert isinstance(res, dict) and "value" in res
        v = float(res["value"])
        assert math.isfinite(v) or res.get("note"), "a metric that gives nan must say why in 'note'"
        return {"value": v}
    if isinstance(component, Propagator):
        g = torch.Generator().manual_seed(0)
        src = torch.randn(5, 4, 4, 4, generator=g)
        keys = [0, 4]
        edited = torch.randn(2, 4, 4, 4, generator=g)
        out = component.propagate(src, keys, edited)
        assert out.shape == (5, 4, 4, 4) and _finite(out)
        assert torch.allclose(out[keys], edited, atol=1e-5), "keyframes must keep their edited values"
        return {"shape": list(out.shape)}
    if isinstance(component, LocalizationLoss):
        g = torch.Generator().manual_seed(0)
        gen = torch.rand(1, 3, 64, 64, generator=g, requires_grad=True)
        loss = component.forward(gen, torch.rand(1, 3, 64, 64, generator=g), ["a smiling face"], ["a face"])
        assert loss.ndim == 0 and _finite(loss)
        loss.backward()
        assert gen.grad is not None and _finite(gen.grad)
        return {"loss": float(loss)}
    if isinstance(component, Backbone):
        x = torch.rand(1, 3, 64, 64)
        z = component.encode_images(x)
        assert z.shape[:2] == (1, 4) and _finite(z)
        y = component.decode_latents(z)
        assert y.shape[:2] == (1, 3) and _finite(y)
        e = component.encode_prompt(["a face"])
        assert e.ndim == 3 and _finite(e)
        return {"latent": list(z.shape)}
    if isinstance(component, Inverter):
        bb = tiny_backbone()
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        inv = component.invert(bb, z, bb.encode_prompt([""]), 3, seed=0)
        assert inv.trajectory[0].shape == z.shape and all(_finite(x) for x in inv.trajectory)
        assert inv.denoise_timesteps == sorted(inv.denoise_timesteps, reverse=True) and len(inv.denoise_timesteps) >= 1
        return {"levels": len(inv.timesteps)}
    if isinstance(component, Editor):
        from .catalog import get_catalog

        bb = tiny_backbone()
        z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        empty = bb.encode_prompt([""])
        inv = get_catalog().build("inverter", "ddim", {"cache": False}).invert(bb, z, empty, 3)
        out = component.edit(bb, inv, bb.encode_prompt(["eyeglasses"]), empty, empty)
        assert out.shape == z.shape and _finite(out)
        return {"shape": list(out.shape)}
    raise AssertionError(f"{component!r} is not an instance of any component interface")


_TINY: dict[str, Any] = {}


def tiny_backbone(resolution: int = 64, vae: str = "random") -> Backbone:
    """A cached tiny backbone (random UNet, CLIP text encoder and autoencoder) for fast checks."""
    key = f"{resolution}-{vae}"
    if key not in _TINY:
        from .catalog import get_catalog

        _TINY[key] = get_catalog().build("backbone", "tiny", {"resolution": resolution, "vae": vae})
    return _TINY[key]


def make_tiny_sd_folder(path: str, seed: int = 0) -> str:
    """Save a tiny Stable-Diffusion-shaped diffusers folder (random UNet, CLIP text encoder,
    AutoencoderKL, DDIM scheduler, CLIP tokenizer) for tests of the ``stable-diffusion`` backbone."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .diffusion import clip_tokenizer

    root = Path(path)
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                         cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=32).save_pretrained(root / "unet")
    CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=77, projection_dim=32)).save_pretrained(root / "text_encoder")
    AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(root / "scheduler")
    clip_tokenizer(77).save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                                      "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                                                      "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
                                                      "safety_checker": [None, None], "feature_extractor": [None, None],
                                                      "requires_safety_checker": False}))
    return str(root)


def diffusers_to_ldm(unet_sd: dict[str, torch.Tensor], vae_sd: dict[str, torch.Tensor], text_sd: dict[str, torch.Tensor],
                     layers_per_block: int, n_blocks: int) -> dict[str, torch.Tensor]:
    """State dicts of a diffusers SD 1.x UNet / AutoencoderKL / CLIPTextModel -> one checkpoint in the
    original (LDM) key layout that ``from_single_file`` reads. For tests of the single-file path:
    real SD weights are not available offline, so random ones of the real sizes are saved this way."""
    import re

    out: dict[str, torch.Tensor] = {}
    resnet = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
              ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2", "conv_in": "input_blocks.0.0",
           "conv_norm_out": "out.0", "conv_out": "out.2"}
    per = layers_per_block + 1
    for key, value in unet_sd.items():
        new = None
        for a, b in top.items():
            if key.startswith(a + "."):
                new = b + key[len(a):]
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"input_blocks.{per * i + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{per * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{m[2]}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"output_blocks.{per * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in unet_sd)
            new = f"output_blocks.{per * i + per - 1}.{2 if has_attn else 1}.conv.{m[2]}"
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        if re.match(r"(input_blocks\.\d+\.0|output_blocks\.\d+\.0|middle_block\.[02])\.", new) and not new.startswith("input_blocks.0."):
            for a, b in resnet:
                new = new.replace(f".{a}.", f".{b}.")
        out["model.diffusion_model." + new] = value
    for key, value in vae_sd.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            rest = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
            name, param = m[2].rsplit(".", 1)
            new = f"{m[1]}.mid.attn_1.{rest[name]}.{param}"
            if value.ndim == 2:
                value = value[:, :, None, None]  # linear -> 1x1 conv, as the original layout stores it
        new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = value
    for key, value in text_sd.items():  # original checkpoints nest the text model (transformers >= 5.6 flattens it)
        out["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    return {k: v.contiguous() for k, v in out.items()}
