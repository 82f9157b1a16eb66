"""Helpers for tests of ipfacediff and of third-party plugins: tiny seeded models, synthetic
faces, and (:mod:`ipfacediff.testing.conformance`) the named contracts every registered component
of a kind must keep."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ipfacediff.interfaces import Backbone


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
        helper.make_node(
            "Conv", ["input.1", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["683"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", dim])],
        [w1, b1, w2, b2],
    )
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
    from ipfacediff.runtime.face import ARCFACE_TEMPLATE

    return frame, ARCFACE_TEMPLATE * s * 0.6 + size * 0.2


_TINY: dict[str, Any] = {}


def tiny_backbone(resolution: int = 64, vae: str = "random") -> Backbone:
    """A cached tiny backbone (random UNet, CLIP text encoder and autoencoder) for fast checks."""
    key = f"{resolution}-{vae}"
    if key not in _TINY:
        from ipfacediff.catalog import get_catalog

        _TINY[key] = get_catalog().build("backbone", "tiny", {"resolution": resolution, "vae": vae})
    return _TINY[key]


def make_tiny_sd_folder(path: str, seed: int = 0) -> str:
    """Save a tiny Stable-Diffusion-shaped diffusers folder (random UNet, CLIP text encoder,
    AutoencoderKL, DDIM scheduler, CLIP tokenizer) for tests of the ``stable-diffusion`` backbone."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipfacediff.plugins.backbones.tiny import TINY_TEXT_ENCODER, TINY_UNET
    from ipfacediff.runtime.diffusion import clip_tokenizer

    root = Path(path)
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=8, layers_per_block=1, **TINY_UNET).save_pretrained(root / "unet")
    CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER)).save_pretrained(root / "text_encoder")
    AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).save_pretrained(root / "vae")
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(root / "scheduler")
    clip_tokenizer(77).save_pretrained(root / "tokenizer")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"],
                "safety_checker": [None, None],
                "feature_extractor": [None, None],
                "requires_safety_checker": False,
            }
        )
    )
    return str(root)


def make_sd15_folder(path: str) -> str:
    """Save a Stable Diffusion 1.5-sized diffusers folder with random weights (SD 1.5's own configs,
    written by ipfacediff: no hub access; about 4 GB). Kept when it is already complete."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipfacediff.runtime.diffusers_backbone import sd15_config_dir

    root = Path(path)
    if (root / "model_index.json").is_file():
        return str(root)
    cfg = sd15_config_dir()
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text())).save_pretrained(
        root / "unet"
    )
    AutoencoderKL.from_config(json.loads((cfg / "vae" / "config.json").read_text())).save_pretrained(root / "vae")
    text = {
        k: v
        for k, v in json.loads((cfg / "text_encoder" / "config.json").read_text()).items()
        if k not in ("architectures", "model_type")
    }
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(root / "text_encoder")
    DDIMScheduler.from_config(json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())).save_pretrained(
        root / "scheduler"
    )
    (root / "model_index.json").write_text((cfg / "model_index.json").read_text())  # last: marks the folder complete
    return str(root)


def diffusers_to_ldm(
    unet_sd: dict[str, torch.Tensor],
    vae_sd: dict[str, torch.Tensor],
    text_sd: dict[str, torch.Tensor],
    layers_per_block: int,
    n_blocks: int,
    open_clip_text: bool = False,
) -> dict[str, torch.Tensor]:
    """State dicts of a diffusers SD UNet / AutoencoderKL / CLIPTextModel -> one checkpoint in the
    original (LDM) key layout that ``from_single_file`` reads (``open_clip_text``: SD 2.x's text
    encoder layout). For tests of the single-file path: real SD weights are not available offline,
    so random ones of the real sizes are saved this way."""
    import re

    out: dict[str, torch.Tensor] = {}
    resnet = [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ]
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    per = layers_per_block + 1
    for key, value in unet_sd.items():
        new = None
        for a, b in top.items():
            if key.startswith(a + "."):
                new = b + key[len(a) :]
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
        if re.match(r"(input_blocks\.\d+\.0|output_blocks\.\d+\.0|middle_block\.[02])\.", new) and not new.startswith(
            "input_blocks.0."
        ):
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
    if open_clip_text:
        out.update(_open_clip_text(text_sd))
    else:
        for (
            key,
            value,
        ) in text_sd.items():  # original checkpoints nest the text model (transformers >= 5.6 flattens it)
            out["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = (
                value
            )
    return {k: v.contiguous() for k, v in out.items()}


def _open_clip_text(text_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``CLIPTextModel`` state dict in SD 2.x's OpenCLIP layout (``cond_stage_model.model.``:
    fused q/k/v ``in_proj``, ``ln_1/ln_2``, ``mlp.c_fc/c_proj``; real files hold a 24th block, which SD
    2.x skips, and a projection: written too, a copy of the 23rd and random)."""
    sd = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
    }
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    width = out["ln_final.weight"].shape[0]
    for i in range(n + 1):
        src = f"encoder.layers.{min(i, n - 1)}."
        dst = f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat([sd[src + f"self_attn.{x}_proj.{part}"] for x in "qkv"])
            for a, b in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[dst + f"{b}.{part}"] = sd[src + f"{a}.{part}"].clone()
    out["text_projection"] = torch.randn(width, width, generator=torch.Generator().manual_seed(0))
    out["logit_scale"] = torch.tensor(4.6052)
    return {"cond_stage_model.model." + k: v for k, v in out.items()}
