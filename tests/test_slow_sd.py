"""The real-size Stable Diffusion path, offline: SD 1.5 sizes with random weights, saved as a local
diffusers folder and loaded by the ``stable-diffusion`` backbone. Slow (about a minute and 4 GB of
disk): ``make test-slow`` or ``pytest -m slow``."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def _save_random_sd15(root):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ipfacediff.plugins.backbones import _sd_config_dir

    cfg = _sd_config_dir(root)  # SD 1.x component configs written by ipfacediff (no hub access)
    torch.manual_seed(0)
    unet_cfg = json.loads((cfg / "unet" / "config.json").read_text())
    UNet2DConditionModel.from_config(unet_cfg).save_pretrained(root / "unet")
    AutoencoderKL.from_config(json.loads((cfg / "vae" / "config.json").read_text())).save_pretrained(root / "vae")
    text = {k: v for k, v in json.loads((cfg / "text_encoder" / "config.json").read_text()).items() if k not in ("architectures", "model_type")}
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(root / "text_encoder")
    DDIMScheduler.from_config(json.loads((cfg / "scheduler" / "scheduler_config.json").read_text())).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text((cfg / "model_index.json").read_text())
    return root


def test_sd15_size_from_a_local_folder_runs_offline(tmp_path, catalog):
    folder = _save_random_sd15(tmp_path / "sd15-random")
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
