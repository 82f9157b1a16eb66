import shutil

import pytest
from conftest import MODELS, needs_models

from ipfacediff.errors import InputError, ModelChecksumError, ModelNotFoundError
from ipfacediff.runtime import models


@needs_models
def test_env_folder_is_found_and_verified(monkeypatch, tmp_path):
    monkeypatch.setenv("IPFACEDIFF_CACHE", str(tmp_path / "cache"))
    p = models.resolve("mobilefacenet")
    assert p == MODELS / "mobilefacenet" / "mobilefacenet.pt"


@needs_models
def test_precedence_explicit_then_env_then_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cached = cache / "models" / "retinaface" / "mobilenet0.25_Final.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(MODELS / "retinaface" / "mobilenet0.25_Final.pth", cached)
    monkeypatch.setenv("IPFACEDIFF_CACHE", str(cache))
    assert models.resolve("retinaface") == MODELS / "retinaface" / "mobilenet0.25_Final.pth"  # env before cache
    monkeypatch.delenv("IPFACEDIFF_MODELS")
    assert models.resolve("retinaface") == cached
    explicit = tmp_path / "x.pth"
    shutil.copy(cached, explicit)
    assert models.resolve("retinaface", explicit) == explicit


def test_offline_and_missing_names_file_places_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("IPFACEDIFF_MODELS", str(tmp_path / "empty"))
    monkeypatch.setenv("IPFACEDIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IPFACEDIFF_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        models.resolve("mobilefacenet")
    msg = str(e.value)
    assert (
        "mobilefacenet/mobilefacenet.pt" in msg and str(tmp_path / "empty") in msg and str(tmp_path / "cache") in msg
    )
    assert "https://github.com/foamliu/MobileFaceNet" in msg


@needs_models
@pytest.mark.parametrize("damage", ["truncate", "wrong"])
def test_truncated_or_wrong_file_is_named(monkeypatch, tmp_path, damage):
    folder = tmp_path / "m" / "mobilefacenet"
    folder.mkdir(parents=True)
    data = (MODELS / "mobilefacenet" / "mobilefacenet.pt").read_bytes()
    (folder / "mobilefacenet.pt").write_bytes(data[: len(data) // 2] if damage == "truncate" else b"x" * 1000)
    monkeypatch.setenv("IPFACEDIFF_MODELS", str(tmp_path / "m"))
    with pytest.raises(ModelChecksumError, match="not the expected mobilefacenet weights.*download https://"):
        models.resolve("mobilefacenet")


def test_sd_checkpoint_kinds(tmp_path):
    d = tmp_path / "sd"
    d.mkdir()
    (d / "model_index.json").write_text("{}")
    assert models.resolve_sd_checkpoint(d) == ("folder", d)
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"0")
    assert models.resolve_sd_checkpoint(f) == ("single_file", f)
    with pytest.raises(InputError):
        models.resolve_sd_checkpoint(tmp_path)
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        models.resolve_sd_checkpoint("nobody/no-such-model")


def test_status_reports_every_model_file():
    names = {r["name"] for r in models.status()}
    assert names == set(models.MODEL_FILES)
