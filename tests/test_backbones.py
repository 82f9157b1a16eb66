"""The ``stable-diffusion`` backbone as a user with real weights meets it: ``$IPFACEDIFF_SD_MODEL``
without ``--set backbone.path``, hub snapshots that hold only the fp16 variant, an identity that
covers every weight file, ``doctor`` saying what a real edit would use, and SD 2.x single files
(configs and prediction type)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_main

from ipfacediff.errors import ModelNotFoundError
from ipfacediff.testing import make_tiny_sd_folder


def test_stable_diffusion_without_a_path_takes_ipfacediff_sd_model(monkeypatch, tmp_path, catalog):
    folder = make_tiny_sd_folder(str(tmp_path / "sd"))
    monkeypatch.setenv("IPFACEDIFF_SD_MODEL", folder)
    bb = catalog.build("backbone", "stable-diffusion", {"resolution": 64})
    assert bb.source == {"kind": "folder", "path": folder} and bb.params.path == folder
    monkeypatch.delenv("IPFACEDIFF_SD_MODEL")
    with pytest.raises(ModelNotFoundError, match=r"IPFACEDIFF_SD_MODEL"):
        catalog.build("backbone", "stable-diffusion", {"resolution": 64})


def test_a_snapshot_with_only_fp16_variant_weights_loads(tmp_path, catalog):
    folder = Path(make_tiny_sd_folder(str(tmp_path / "sd")))
    renamed = []
    for sub in ("unet", "text_encoder", "vae"):
        for f in (folder / sub).glob("*.safetensors"):
            target = f.with_name(f.name.replace(".safetensors", ".fp16.safetensors"))
            f.rename(target)
            renamed.append(target.name)
    assert len(renamed) == 3
    bb = catalog.build("backbone", "stable-diffusion", {"path": str(folder), "resolution": 64})
    assert bb.encode_prompt(["a face"]).shape[0] == 1
    assert set(bb.identity()["weights_sha256"]) == {
        f"{s}/{n}" for s, n in zip(("unet", "text_encoder", "vae"), renamed)
    }


def test_backbone_identity_covers_every_weight_file(tmp_path, catalog):
    """Two folders that share the UNet file but not the text encoder are two backbones (cache keys)."""
    a = Path(make_tiny_sd_folder(str(tmp_path / "a"), seed=0))
    other = Path(make_tiny_sd_folder(str(tmp_path / "other"), seed=1))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for f in (b / "text_encoder").glob("*.safetensors"):
        shutil.copy(other / "text_encoder" / f.name, f)
    ida = catalog.build("backbone", "stable-diffusion", {"path": str(a), "resolution": 64}).identity()[
        "weights_sha256"
    ]
    idb = catalog.build("backbone", "stable-diffusion", {"path": str(b), "resolution": 64}).identity()[
        "weights_sha256"
    ]
    unet = [k for k in ida if k.startswith("unet/")]
    assert unet and all(ida[k] == idb[k] for k in unet)
    assert ida != idb


def test_doctor_says_what_a_real_edit_would_use(tmp_path):
    folder = make_tiny_sd_folder(str(tmp_path / "sd"))
    adapter = tmp_path / "identity-lora"
    adapter.mkdir()
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        "backbones:\n  mine:\n    component: stable-diffusion\n"
        f"    params: {{path: {folder}, adapters: {{identity: {adapter}, edit: {tmp_path / 'no-such-lora'}}}}}\n"
        "    description: my checkpoint with its adapters\n"
    )
    r = run_main("doctor", "--json", "--registry", str(reg), env={"IPFACEDIFF_SD_MODEL": ""})
    assert r.returncode == 0, r.stderr
    real = json.loads(r.stdout)["real_edit"]
    assert real["stable_diffusion"] == {"found": folder, "from": "registry backbone 'mine'", "how_to_get": None}
    assert real["adapters"]["configured"] == {
        "backbone mine: identity": {"path": str(adapter), "found": True},
        "backbone mine: edit": {"path": str(tmp_path / "no-such-lora"), "found": False},
    }
    assert not real["arcface"]["ready"] and "w600k_r50.onnx" in real["arcface"]["how_to_get"]
    assert not real["clip"]["ready"] and real["clip"]["how_to_get"]

    r = run_main("doctor", "--json", env={"IPFACEDIFF_SD_MODEL": folder})
    assert json.loads(r.stdout)["real_edit"]["stable_diffusion"] == {
        "found": folder,
        "from": "$IPFACEDIFF_SD_MODEL",
        "how_to_get": None,
    }
    table = run_main("doctor", env={"IPFACEDIFF_SD_MODEL": folder, "COLUMNS": "250"})
    assert table.returncode == 0 and "for a real edit" in table.stdout and folder in table.stdout


def test_single_file_family_is_read_from_the_tensors(tmp_path):
    """SD 2.x is told from SD 1.x by its OpenCLIP text encoder or its 1024-wide cross-attention,
    from the names and shapes alone (.safetensors header, .ckpt state dict)."""
    from safetensors.torch import save_file

    from ipfacediff.runtime.diffusers_backbone import single_file_family

    to_k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    cases = {
        "sd1": {
            to_k: torch.zeros(320, 768),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
        },
        "sd2": {to_k: torch.zeros(320, 1024), "cond_stage_model.model.token_embedding.weight": torch.zeros(8, 1024)},
    }
    for family, sd in cases.items():
        save_file(sd, str(tmp_path / f"{family}.safetensors"))
        torch.save({"state_dict": sd, "global_step": 1}, tmp_path / f"{family}.ckpt")
        assert single_file_family(tmp_path / f"{family}.safetensors") == family
        assert single_file_family(tmp_path / f"{family}.ckpt") == family
    only_unet = tmp_path / "unet-only.safetensors"
    save_file({to_k: torch.zeros(320, 1024)}, str(only_unet))
    assert single_file_family(only_unet) == "sd2"


def test_sd2_configs_are_stable_diffusion_2s(tmp_path, monkeypatch):
    """The configs written for an SD 2.x single file: a UNet of SD 2's size (built on the meta device),
    the 23-layer 1024-wide text encoder, "!" padding, and the scheduler's prediction type."""
    import json

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    from ipfacediff.runtime.diffusers_backbone import sd_config_dir

    monkeypatch.setenv("IPFACEDIFF_CACHE", str(tmp_path))
    cfg = sd_config_dir("sd2", "v_prediction")
    unet_cfg = json.loads((cfg / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
    assert 865_000_000 < sum(p.numel() for p in unet.parameters()) < 866_500_000  # SD 2.1's UNet: 865.9 M
    text = json.loads((cfg / "text_encoder" / "config.json").read_text())
    assert (text["hidden_size"], text["num_hidden_layers"], text["hidden_act"]) == (1024, 23, "gelu")
    assert json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert CLIPTokenizer.from_pretrained(cfg / "tokenizer").pad_token == "!"
    assert (
        json.loads((sd_config_dir("sd2", "epsilon") / "scheduler" / "scheduler_config.json").read_text())[
            "prediction_type"
        ]
        == "epsilon"
    )
    with torch.device("meta"):
        sd1 = UNet2DConditionModel.from_config(json.loads((sd_config_dir() / "unet" / "config.json").read_text()))
    assert 859_000_000 < sum(p.numel() for p in sd1.parameters()) < 860_000_000  # SD 1.5's UNet: 859.5 M


def test_prediction_type_can_be_set_for_any_checkpoint(tmp_path, catalog):
    """backbone.prediction_type overrides what the checkpoint's scheduler says (and is part of its identity)."""
    from ipfacediff.testing import make_tiny_sd_folder

    folder = make_tiny_sd_folder(str(tmp_path / "tiny-sd"))
    auto = catalog.build("backbone", "stable-diffusion", {"path": folder, "resolution": 64})
    v = catalog.build(
        "backbone", "stable-diffusion", {"path": folder, "resolution": 64, "prediction_type": "v_prediction"}
    )
    assert (
        auto.scheduler_config["prediction_type"] == "epsilon"
        and v.scheduler_config["prediction_type"] == "v_prediction"
    )
    assert auto.identity() != v.identity()
