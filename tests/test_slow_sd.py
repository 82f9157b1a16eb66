"""The real-size Stable Diffusion path, offline: SD 1.5 sizes with random weights, saved as a local
diffusers folder and as one single .safetensors file (original LDM key layout), each loaded by the
``stable-diffusion`` backbone and run for one step at 256 px. Slow (a few minutes and about 8 GB of
disk): ``make test-slow`` or ``pytest -m slow``."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    from pathlib import Path

    from ipfacediff.testing import make_sd15_folder

    return Path(make_sd15_folder(str(tmp_path_factory.mktemp("sd") / "sd15-random")))


def _one_step(bb):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    z = bb.encode_images(x)
    assert z.shape == (1, 4, 32, 32)
    eps = bb.predict_noise(z, 981, bb.encode_prompt(["a photo of a face"]), "test")
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    return z, eps


def test_sd15_size_from_a_local_folder_runs_offline(sd15_folder, catalog):
    folder = sd15_folder
    bb = catalog.build("backbone", "stable-diffusion", {"path": str(folder), "resolution": 256})
    n_params = sum(p.numel() for p in bb.unet.parameters())
    assert 850e6 < n_params < 870e6  # the SD 1.5 UNet size
    x = torch.rand(1, 3, 256, 256)
    z = bb.encode_images(x)
    assert z.shape == (1, 4, 32, 32)
    eps = bb.predict_noise(z, 981, bb.encode_prompt(["a photo of a face"]), "test")
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    assert bb.decode_latents(z).shape == (1, 3, 256, 256)
    # the TAESD override
    fast = catalog.build("backbone", "stable-diffusion", {"path": str(folder), "resolution": 256, "vae": "taesd"})
    assert fast.encode_images(x).shape == (1, 4, 32, 32)


def test_sd15_size_from_a_single_file_runs_offline(sd15_folder, tmp_path, catalog):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from ipfacediff.testing import diffusers_to_ldm

    unet = UNet2DConditionModel.from_pretrained(sd15_folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd15_folder, subfolder="vae")
    text = CLIPTextModel.from_pretrained(sd15_folder, subfolder="text_encoder")
    single = tmp_path / "sd15-random.safetensors"
    save_file(diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text.state_dict(), 2, 4), str(single))
    del unet, vae, text
    from_file = catalog.build("backbone", "stable-diffusion", {"path": str(single), "resolution": 256})
    assert from_file.source["kind"] == "single_file"
    from_folder = catalog.build("backbone", "stable-diffusion", {"path": str(sd15_folder), "resolution": 256})
    # the same weights as the folder: every UNet parameter is equal, and so is one step
    for part in ("unet", "text_encoder"):
        a, b = getattr(from_file, part).state_dict(), getattr(from_folder, part).state_dict()
        assert a.keys() == b.keys(), part
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], part
    prompt = "a photo of a face"
    assert from_file.tokenizer([prompt]).input_ids == from_folder.tokenizer([prompt]).input_ids
    assert torch.allclose(from_file.encode_prompt([prompt]), from_folder.encode_prompt([prompt]), atol=1e-5)
    z1, eps1 = _one_step(from_file)
    z2, eps2 = _one_step(from_folder)
    assert torch.allclose(z1, z2, atol=1e-4) and torch.allclose(eps1, eps2, atol=1e-4)


def test_sd2_size_v_prediction_from_a_single_file_runs_offline(tmp_path, catalog):
    """SD 2.x sizes (OpenCLIP ViT-H text encoder in its own layout, 1024-wide cross-attention, linear
    projections) as one original-layout .safetensors: recognised as 2.x, loaded with 2.x configs and a
    v-prediction scheduler (with a warning saying so), every weight where it belongs."""
    import json
    import warnings

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipfacediff.runtime.diffusers_backbone import sd_config_dir
    from ipfacediff.testing import diffusers_to_ldm

    cfg = sd_config_dir("sd2", "v_prediction")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((cfg / "vae" / "config.json").read_text()))
    text_cfg = {
        k: v
        for k, v in json.loads((cfg / "text_encoder" / "config.json").read_text()).items()
        if k not in ("architectures", "model_type")
    }
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    assert 860e6 < sum(p.numel() for p in unet.parameters()) < 870e6  # the SD 2.x UNet size
    single = tmp_path / "sd21-random.safetensors"
    save_file(
        diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text.state_dict(), 2, 4, open_clip_text=True),
        str(single),
    )
    want = {"unet": unet.state_dict(), "text_encoder": text.state_dict()}
    del vae
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = catalog.build("backbone", "stable-diffusion", {"path": str(single), "resolution": 256})
    assert bb.source["family"] == "sd2" and bb.scheduler_config["prediction_type"] == "v_prediction"
    assert any("768-v model (v-prediction)" in str(w.message) for w in caught)
    for part, ref in want.items():
        got = getattr(bb, part).state_dict()
        assert [k for k in ref if k not in got or not torch.equal(ref[k], got[k])] == [], part
    assert bb.tokenizer.pad_token == "!"
    _one_step(bb)
    base = catalog.build(
        "backbone", "stable-diffusion", {"path": str(single), "resolution": 256, "prediction_type": "epsilon"}
    )
    assert base.scheduler_config["prediction_type"] == "epsilon"
