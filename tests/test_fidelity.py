"""The published mechanisms, checked where random weights cannot hide a difference: Plug-and-Play's
residual-branch injection and its attention layers, DDIM inversion for any timestep spacing, and
the warnings when identity injection or an adapter is silently off."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from ipfacediff.errors import EditWarning
from ipfacediff.interfaces import Inversion
from ipfacediff.runtime.attention import FeatureController, controlled_unet, pnp_attention_layers, residual_hook
from ipfacediff.testing import tiny_backbone


def _sd_layout_unet():
    """A UNet with Stable Diffusion 1.x's block layout (names), at a tiny width."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8, attention_head_dim=2)


def test_residual_injection_replaces_the_residual_branch_and_keeps_the_targets_skip_path():
    """One ResNet block with a 1x1 conv skip: the injected output is (skip(target input) + the
    source's residual branch) / scale, not the source's whole output."""
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4, output_scale_factor=2.0).eval()
    assert block.conv_shortcut is not None
    xs, xt, temb = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6) * 3, torch.randn(2, 12)
    ctrl = FeatureController()
    handle = block.register_forward_hook(residual_hook("block", ctrl))
    try:
        with torch.no_grad():
            ctrl.mode = "capture"
            source_out = block(xs, temb)
            ctrl.mode, ctrl.inject_res = "inject", True
            injected = block(xt, temb)
            ctrl.mode = "off"
            target_out = block(xt, temb)
    finally:
        handle.remove()
    source_residual = source_out * 2.0 - block.conv_shortcut(xs)
    expected = (block.conv_shortcut(xt) + source_residual) / 2.0
    assert torch.allclose(injected, expected, atol=1e-5)
    assert not torch.allclose(injected, source_out, atol=1e-2), "the whole block output was replaced (skip path included)"
    assert not torch.allclose(injected, target_out, atol=1e-2), "nothing was injected"
    # the CFG batch [uncond K, cond K] takes the K captured rows twice
    ctrl.mode = "inject"
    handle = block.register_forward_hook(residual_hook("block", ctrl))
    try:
        with torch.no_grad():
            both = block(torch.cat([xt, xt]), torch.cat([temb, temb]))
    finally:
        handle.remove()
    assert torch.allclose(both, torch.cat([expected, expected]), atol=1e-5)


def test_pnp_attention_layers_are_the_published_ones():
    unet = _sd_layout_unet()
    want = [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1.processor" for b, a in ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))]
    assert pnp_attention_layers(unet) == want


def test_controlled_unet_injects_the_residual_branch_of_up_block_1_resnet_1():
    unet = _sd_layout_unet().eval()
    ctrl = FeatureController()
    x, t, emb = torch.randn(1, 4, 8, 8), 10, torch.randn(1, 3, 8)
    with controlled_unet(unet, ctrl) as c, torch.no_grad():
        assert c.res_layers == {"up_blocks.1.resnets.1"}
        c.mode = "capture"
        unet(x, t, encoder_hidden_states=emb)
        stored = c.store["up_blocks.1.resnets.1"]
        block = unet.up_blocks[1].resnets[1]
        assert stored.shape[1] == block.conv2.out_channels  # the residual branch, before the skip is added
    assert not ctrl.store  # cleared on exit


def _spaced_backbone(spacing: str):
    """The tiny backbone (shared weights) with its scheduler's timestep spacing replaced."""
    bb = copy.copy(tiny_backbone())
    bb.scheduler_config = {**tiny_backbone().scheduler_config, "timestep_spacing": spacing}
    return bb


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_inversion_has_a_latent_for_every_sampling_timestep(catalog, spacing):
    """DDIMInverseScheduler refuses "linspace": the inverter then steps up the sampler's own
    timesteps, and the editor injects at every step (no warning)."""
    bb = _spaced_backbone(spacing)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    empty = bb.encode_prompt([""])
    inv = catalog.build("inverter", "ddim").invert(bb, z, empty, 4)
    assert inv.denoise_timesteps == sorted(inv.timesteps, reverse=True)
    assert all(inv.latent_at(t) is not None for t in inv.denoise_timesteps)
    editor = catalog.build("editor", "identity-injection")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EditWarning)
        out = editor.edit(bb, inv, bb.encode_prompt(["a face, eyeglasses"]), empty, empty)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert not [w for w in caught if "identity injection was off" in str(w.message)]


def test_linspace_inversion_reconstructs_like_the_scheduler_it_replaces(catalog):
    """The hand-written inverse step equals DDIMInverseScheduler's where both apply ("leading")."""
    from ipfacediff.plugins.inverters.ddim import inverse_steps
    from diffusers import DDIMInverseScheduler

    cfg = tiny_backbone().scheduler_config
    ts, step = inverse_steps(cfg, 5)
    inv = DDIMInverseScheduler.from_config(cfg)
    inv.set_timesteps(5)
    assert ts == [int(t) for t in inv.timesteps]
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for k, t in enumerate(inv.timesteps):
        assert torch.allclose(step(eps, k, x), inv.step(eps, t, x).prev_sample, atol=1e-5)


def test_editor_warns_when_injection_has_no_inverted_latent(catalog):
    bb = tiny_backbone()
    z = torch.randn(1, 4, 8, 8)
    empty = bb.encode_prompt([""])
    good = catalog.build("inverter", "ddim").invert(bb, z, empty, 4)
    shifted = Inversion([t + 3 for t in good.timesteps], good.trajectory, good.denoise_timesteps, good.steps)  # no latent at any sampled t
    with pytest.warns(EditWarning, match=r"identity injection was off at 3 of 4 steps"):
        catalog.build("editor", "identity-injection").edit(bb, shifted, bb.encode_prompt(["a face"]), empty, empty)


def test_editor_says_when_an_adapter_is_missing(catalog):
    bb = tiny_backbone()
    assert bb.adapters == []
    z = torch.randn(1, 4, 8, 8)
    empty = bb.encode_prompt([""])
    inv = catalog.build("inverter", "ddim").invert(bb, z, empty, 2)
    with pytest.warns(EditWarning, match=r"no 'identity' or 'edit' adapter loaded: eps1 \(identity features\) and eps2 \(the edit\) are the base model"):
        catalog.build("editor", "identity-injection").edit(bb, inv, bb.encode_prompt(["a face"]), empty, empty)
    only_edit = catalog.build("editor", "identity-injection", {"identity_adapter": False})
    with pytest.warns(EditWarning, match=r"no 'edit' adapter loaded: eps2 \(the edit\) is the base model"):
        only_edit.edit(bb, inv, bb.encode_prompt(["a face"]), empty, empty)


def test_clip_tokenizer_follows_the_configured_open_clip_model():
    """Not ViT-B-32's for every model: CoCa's context is 76 tokens; a Hugging Face tokenizer that is
    not cached is one clear error, not a download."""
    from ipfacediff.errors import ModelNotFoundError
    from ipfacediff.plugins.localization_losses.clip_directional import open_clip_tokenizer

    assert open_clip_tokenizer("ViT-B-32").context_length == 77
    coca = open_clip_tokenizer("coca_base")
    assert coca.context_length == 76 and coca(["a face"]).shape == (1, 76)
    with pytest.raises(ModelNotFoundError, match=r"the tokenizer of 'ViT-B-16-SigLIP' is not available offline"):
        open_clip_tokenizer("ViT-B-16-SigLIP")


def test_v_prediction_inversion_step_matches_the_scheduler():
    from diffusers import DDIMInverseScheduler

    from ipfacediff.plugins.inverters.ddim import inverse_steps

    cfg = {**tiny_backbone().scheduler_config, "prediction_type": "v_prediction"}
    ts, step = inverse_steps(cfg, 5)
    inv = DDIMInverseScheduler.from_config(cfg)
    inv.set_timesteps(5)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for k, t in enumerate(inv.timesteps):
        assert torch.allclose(step(v, k, x), inv.step(v, t, x).prev_sample, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_trainer_reads_the_prediction_as_the_checkpoint_defines_it(prediction_type, catalog, monkeypatch):
    """A UNet that predicts exactly what its checkpoint's ``prediction_type`` says (eps, or v) has
    zero noise loss, and its one-step estimate x0_hat is the clean latent."""
    from types import SimpleNamespace

    import numpy as np

    from ipfacediff.interfaces import TrainingBatch
    from ipfacediff.registry import RecipeSettings
    from ipfacediff.testing import synthetic_face_frame
    from ipfacediff.runtime.training import TrainingFaces

    bb = copy.copy(tiny_backbone())
    bb.scheduler_config = {**tiny_backbone().scheduler_config, "prediction_type": prediction_type}
    frames = [synthetic_face_frame(64, seed=i) for i in range(2)]
    encoder = catalog.build("identity_encoder", "mobilefacenet")
    faces = TrainingFaces(bb, np.stack([f for f, _ in frames]), np.stack([lm for _, lm in frames]).astype(np.float32), torch.device("cpu"), encoder)
    objective = catalog.build("objective", "identity")
    objective.setup(bb, faces, {"identity_encoder": encoder}, RecipeSettings(identity_max_timestep=999), {"noise": 1.0, "identity": 1.0})
    batch = TrainingBatch(torch.tensor([0, 1]), torch.tensor([100, 600]), torch.randn(2, *faces.z0.shape[1:]), [("", "face")] * 2)
    a = faces.alphas[batch.t].view(-1, 1, 1, 1)
    z0 = faces.z0[batch.idx]
    truth = a.sqrt() * batch.noise - (1 - a).sqrt() * z0 if prediction_type == "v_prediction" else batch.noise

    def oracle(x, t, encoder_hidden_states):
        return SimpleNamespace(sample=truth.clone())

    oracle.parameters = lambda: iter([torch.zeros(1)])
    seen = {}
    decode = bb.decode_latents

    def spy(latents, grad=False):
        seen["x0_hat"] = latents.detach().clone()
        return decode(latents, grad)

    monkeypatch.setattr(bb, "decode_latents", spy)
    out = objective.losses(oracle, batch)
    assert float(out["noise"]) < 1e-10
    assert torch.allclose(seen["x0_hat"], z0, atol=1e-4)


@pytest.mark.parametrize("bf16, mixed, dtype, want", [
    (True, "no", "auto", "bf16"), (False, "no", "fp16", "fp32"), (True, "fp16", "auto", "auto"), (True, "no", "fp32", "fp32")])
def test_training_never_backpropagates_through_an_unscaled_fp16_unet(bf16, mixed, dtype, want, monkeypatch, tmp_path, catalog):
    """On CUDA a backbone that would load in fp16 trains in bf16 (or fp32 without bf16), unless
    mixed_precision=fp16 scales the loss (decided before any weight moves to the GPU)."""
    from ipfacediff.jobs.finetune import training_precision
    from ipfacediff.plugins.backbones.stable_diffusion import StableDiffusionBackbone

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    bb = StableDiffusionBackbone.build_for_test(str(tmp_path))
    bb.params.dtype = dtype
    said = training_precision(bb, torch.device("cuda"), mixed)
    assert bb.params.dtype == want and bool(said) == (want != dtype)
    assert training_precision(bb, torch.device("cpu"), "no") == []


def test_an_edit_from_cached_keyframes_still_says_the_adapters_are_missing(sample_clip, tmp_path):
    """The warning comes from the editor's check before every edit, not only when it runs: a re-edit
    that takes its keyframe edits from the cache says it too, in the report and on the terminal."""
    import json

    from conftest import run_main

    env = {"IPFACEDIFF_CACHE": str(tmp_path / "cache")}
    args = ["edit", str(sample_clip), "-p", "eyeglasses", "--backbone", "tiny", "--steps", "2", "--max-frames", "9",
            "--set", "backbone.vae=random", "--set", "backbone.resolution=64", "--set", "face_processor.verify=none"]
    first = run_main("--quiet", *args, "-o", str(tmp_path / "a.mp4"), "--json", env=env)
    second = run_main("--quiet", *args, "-o", str(tmp_path / "b.mp4"), env=env)
    again = run_main("--quiet", *args, "-o", str(tmp_path / "c.mp4"), "--json", env=env)
    assert first.returncode == second.returncode == again.returncode == 0, (first.stderr, second.stderr)
    rep = json.loads(again.stdout)
    assert "keyframe_edit" in rep["reused_stages"]
    for r in (json.loads(first.stdout), rep):
        assert any("no 'identity' or 'edit' adapter loaded" in w for w in r["warnings"]), r["warnings"]
    assert "no 'identity' or 'edit' adapter loaded" in second.stderr
