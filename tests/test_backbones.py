"""The ``stable-diffusion`` backbone as a user with real weights meets it: ``$IPFACEDIFF_SD_MODEL``
without ``--set backbone.path``, hub snapshots that hold only the fp16 variant, an identity that
covers every weight file, and ``doctor`` saying what a real edit would use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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
    assert set(bb.identity()["weights_sha256"]) == {f"{s}/{n}" for s, n in zip(("unet", "text_encoder", "vae"), renamed)}


def test_backbone_identity_covers_every_weight_file(tmp_path, catalog):
    """Two folders that share the UNet file but not the text encoder are two backbones (cache keys)."""
    a = Path(make_tiny_sd_folder(str(tmp_path / "a"), seed=0))
    other = Path(make_tiny_sd_folder(str(tmp_path / "other"), seed=1))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for f in (b / "text_encoder").glob("*.safetensors"):
        shutil.copy(other / "text_encoder" / f.name, f)
    ida = catalog.build("backbone", "stable-diffusion", {"path": str(a), "resolution": 64}).identity()["weights_sha256"]
    idb = catalog.build("backbone", "stable-diffusion", {"path": str(b), "resolution": 64}).identity()["weights_sha256"]
    unet = [k for k in ida if k.startswith("unet/")]
    assert unet and all(ida[k] == idb[k] for k in unet)
    assert ida != idb


def test_doctor_says_what_a_real_edit_would_use(tmp_path):
    folder = make_tiny_sd_folder(str(tmp_path / "sd"))
    adapter = tmp_path / "identity-lora"
    adapter.mkdir()
    reg = tmp_path / "reg.yaml"
    reg.write_text("backbones:\n  mine:\n    component: stable-diffusion\n"
                   f"    params: {{path: {folder}, adapters: {{identity: {adapter}, edit: {tmp_path / 'no-such-lora'}}}}}\n"
                   "    description: my checkpoint with its adapters\n")
    r = run_main("doctor", "--json", "--registry", str(reg), env={"IPFACEDIFF_SD_MODEL": ""})
    assert r.returncode == 0, r.stderr
    real = json.loads(r.stdout)["real_edit"]
    assert real["stable_diffusion"] == {"found": folder, "from": "registry backbone 'mine'", "how_to_get": None}
    assert real["adapters"]["configured"] == {"backbone mine: identity": {"path": str(adapter), "found": True},
                                              "backbone mine: edit": {"path": str(tmp_path / "no-such-lora"), "found": False}}
    assert not real["arcface"]["ready"] and "w600k_r50.onnx" in real["arcface"]["how_to_get"]
    assert not real["clip"]["ready"] and real["clip"]["how_to_get"]

    r = run_main("doctor", "--json", env={"IPFACEDIFF_SD_MODEL": folder})
    assert json.loads(r.stdout)["real_edit"]["stable_diffusion"] == {"found": folder, "from": "$IPFACEDIFF_SD_MODEL", "how_to_get": None}
    table = run_main("doctor", env={"IPFACEDIFF_SD_MODEL": folder, "COLUMNS": "250"})
    assert table.returncode == 0 and "for a real edit" in table.stdout and folder in table.stdout
