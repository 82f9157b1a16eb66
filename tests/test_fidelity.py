"""The published mechanisms, checked where random weights cannot hide a difference: Plug-and-Play's
residual-branch injection and its attention layers, DDIM inversion for any timestep spacing, and
the warnings when identity injection or an adapter is silently off, and TokenFlow as published
(source-feature nearest-neighbour fields, random pivots per step, bounded batches, PnP on every frame)."""

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
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 8, 8, 8),
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=8,
        attention_head_dim=2,
    )


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
    assert not torch.allclose(injected, source_out, atol=1e-2), (
        "the whole block output was replaced (skip path included)"
    )
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
    want = [
        f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1.processor"
        for b, a in ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))
    ]
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
    from diffusers import DDIMInverseScheduler

    from ipfacediff.runtime.diffusion import inverse_steps

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
    shifted = Inversion(
        [t + 3 for t in good.timesteps], good.trajectory, good.denoise_timesteps, good.steps
    )  # no latent at any sampled t
    with pytest.warns(EditWarning, match=r"identity injection was off at 3 of 4 steps"):
        catalog.build("editor", "identity-injection").edit(bb, shifted, bb.encode_prompt(["a face"]), empty, empty)


def test_editor_says_when_an_adapter_is_missing(catalog):
    bb = tiny_backbone()
    assert bb.adapters == []
    z = torch.randn(1, 4, 8, 8)
    empty = bb.encode_prompt([""])
    inv = catalog.build("inverter", "ddim").invert(bb, z, empty, 2)
    with pytest.warns(
        EditWarning,
        match=(
            r"no 'identity' or 'edit' adapter loaded: eps1 \(identity features\) and eps2 \(the edit\) are the base "
            r"model"
        ),
    ):
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

    from ipfacediff.runtime.diffusion import inverse_steps

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
    from ipfacediff.runtime.training import TrainingFaces
    from ipfacediff.testing import synthetic_face_frame

    bb = copy.copy(tiny_backbone())
    bb.scheduler_config = {**tiny_backbone().scheduler_config, "prediction_type": prediction_type}
    frames = [synthetic_face_frame(64, seed=i) for i in range(2)]
    encoder = catalog.build("identity_encoder", "mobilefacenet")
    faces = TrainingFaces(
        bb,
        np.stack([f for f, _ in frames]),
        np.stack([lm for _, lm in frames]).astype(np.float32),
        torch.device("cpu"),
        encoder,
    )
    objective = catalog.build("objective", "identity")
    objective.setup(
        bb,
        faces,
        {"identity_encoder": encoder},
        RecipeSettings(identity_max_timestep=999),
        {"noise": 1.0, "identity": 1.0},
    )
    batch = TrainingBatch(
        torch.tensor([0, 1]), torch.tensor([100, 600]), torch.randn(2, *faces.z0.shape[1:]), [("", "face")] * 2
    )
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


@pytest.mark.parametrize(
    "bf16, mixed, dtype, want",
    [
        (True, "no", "auto", "bf16"),
        (False, "no", "fp16", "fp32"),
        (True, "fp16", "auto", "auto"),
        (True, "no", "fp32", "fp32"),
    ],
)
def test_training_never_backpropagates_through_an_unscaled_fp16_unet(
    bf16, mixed, dtype, want, monkeypatch, tmp_path, catalog
):
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
    args = [
        "edit",
        str(sample_clip),
        "-p",
        "eyeglasses",
        "--backbone",
        "tiny",
        "--steps",
        "2",
        "--max-frames",
        "9",
        "--set",
        "backbone.vae=random",
        "--set",
        "backbone.resolution=64",
        "--set",
        "face_processor.verify=none",
    ]
    first = run_main("--quiet", *args, "-o", str(tmp_path / "a.mp4"), "--json", env=env)
    second = run_main("--quiet", *args, "-o", str(tmp_path / "b.mp4"), env=env)
    again = run_main("--quiet", *args, "-o", str(tmp_path / "c.mp4"), "--json", env=env)
    assert first.returncode == second.returncode == again.returncode == 0, (first.stderr, second.stderr)
    rep = json.loads(again.stdout)
    assert "keyframe_edit" in rep["reused_stages"]
    for r in (json.loads(first.stdout), rep):
        assert any("no 'identity' or 'edit' adapter loaded" in w for w in r["warnings"]), r["warnings"]
    assert "no 'identity' or 'edit' adapter loaded" in second.stderr


# ------------------------------------------------------------------------------- TokenFlow as published
def _tokenflow_state(groups=3):
    from ipfacediff.plugins.strategies.tokenflow import _State

    return _State(groups=groups, pnp_layers=set())


def test_tokenflow_matches_tokens_on_the_source_features_not_the_edited_ones():
    """A frame whose *source* tokens are pivot 0's source tokens shuffled, while its uncond/cond
    inputs are unrelated noise: in every group its attention output is pivot 0's output of that group
    under the same shuffle, which only a match on the source features gives. With two pivots the
    outputs blend linearly by temporal distance."""
    from diffusers.models.attention_processor import Attention

    from ipfacediff.plugins.strategies.tokenflow import TokenFlowAttention, nearest_tokens

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    st = _tokenflow_state()
    proc = TokenFlowAttention("layer", st)
    pivots_in = torch.randn(3 * 2, 12, 16)  # [source, uncond, cond] x 2 pivots, 12 tokens
    with torch.no_grad():
        st.mode = "pivot"
        proc(attn, pivots_in)
        outs = st.pivot_out["layer"]  # [3, 2, 12, 16]
        perm = torch.randperm(12)
        frame = torch.cat([pivots_in[0][perm][None], torch.randn(2, 12, 16) * 5])  # source = pivot 0 shuffled
        st.mode, st.pairs = "propagate", [(0, None, 1.0)]
        got = proc(attn, frame).view(3, 12, 16)
        assert torch.allclose(got, outs[:, 0, perm])
        frame2 = torch.cat([pivots_in[1][perm][None], torch.randn(2, 12, 16)])  # source = pivot 1 shuffled
        st.pairs = [(0, 1, 0.25)]  # a quarter of pivot 0 (the farther one), three quarters of pivot 1
        blended = proc(attn, frame2).view(3, 12, 16)
        idx0 = nearest_tokens(pivots_in[1][perm], pivots_in[0])
        assert torch.allclose(blended, 0.25 * outs[:, 0, idx0] + 0.75 * outs[:, 1, perm], atol=1e-6)


def test_tokenflow_pivots_attend_to_each_other_with_the_sources_queries_and_keys():
    """Pivot pass: extended attention across the pivots of the uncond and cond groups, under
    Plug-and-Play with the source group's queries and keys (their own values); each source pivot
    attends to itself alone (the authors' code)."""
    from diffusers.models.attention_processor import Attention

    from ipfacediff.plugins.strategies.tokenflow import TokenFlowAttention

    torch.manual_seed(1)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    st = _tokenflow_state()
    st.pnp_layers, st.inject_attn = {"layer"}, True
    x = torch.randn(6, 5, 16)
    with torch.no_grad():
        got = TokenFlowAttention("layer", st)(attn, x).view(3, 2, 5, 16)
        q, k, v = attn.to_q(x).view(3, 2, 5, 16), attn.to_k(x).view(3, 2, 5, 16), attn.to_v(x).view(3, 2, 5, 16)
        for g in range(3):
            for f in range(2):
                qh = q[0, f].view(5, 2, 8).transpose(0, 1)
                kh = (k[0] if g else k[0, f]).reshape(-1, 2, 8).transpose(0, 1)
                vh = (v[g] if g else v[0, f]).reshape(-1, 2, 8).transpose(0, 1)
                ref = torch.softmax(qh @ kh.transpose(1, 2) / 8**0.5, -1) @ vh
                ref = attn.to_out[0](ref.transpose(0, 1).reshape(5, 16))
                assert torch.allclose(got[g, f], ref, atol=1e-5)


def test_tokenflow_source_pivots_do_not_see_the_other_pivots():
    """A source pivot's self-attention output does not depend on the other pivots (changing pivot 1's
    source tokens leaves pivot 0's source output as it was), while the cond branch's does."""
    from diffusers.models.attention_processor import Attention

    from ipfacediff.plugins.strategies.tokenflow import TokenFlowAttention

    torch.manual_seed(3)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    st = _tokenflow_state()
    x = torch.randn(6, 5, 16)  # [source, uncond, cond] x 2 pivots
    y = x.clone()
    y[1] += torch.randn(5, 16)  # pivot 1's source tokens
    y[5] += torch.randn(5, 16)  # pivot 1's cond tokens
    with torch.no_grad():
        a = TokenFlowAttention("layer", st)(attn, x).view(3, 2, 5, 16)
        b = TokenFlowAttention("layer", st)(attn, y).view(3, 2, 5, 16)
    assert torch.equal(a[0, 0], b[0, 0])
    assert not torch.allclose(a[2, 0], b[2, 0])


def test_tokenflow_official_pivot_pairs_worked_out_by_hand():
    """The authors' rule, batch size 8: batch 0 takes its own pivot alone; a frame of batch b blends
    the pivot of batch b (weight sigmoid(d2 / (d1 + d2)), d1 and d2 its distances to the centres of
    batches b and b - 1) with the pivot of batch b - 1."""
    import math

    from ipfacediff.plugins.strategies.tokenflow import official_pivot_pairs

    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    got = official_pivot_pairs([0, 7, 8, 12, 15, 21], 8)
    # frame 8: centres 12 and 4 -> d1 4, d2 4; frame 12: d1 0, d2 8; frame 15: d1 3, d2 11;
    # frame 21 (batch 2): centres 20 and 12 -> d1 1, d2 9
    want = [(0, None, 1.0), (0, None, 1.0), (1, 0, sig(0.5)), (1, 0, sig(1.0)), (1, 0, sig(11 / 14)), (2, 1, sig(0.9))]
    for (a, b, w), (wa, wb, ww) in zip(got, want):
        assert (a, b) == (wa, wb) and abs(w - ww) < 1e-6
    assert all(0.62 < w < 0.74 for _, b, w in got if b is not None)


def test_tokenflow_injects_from_the_first_step(catalog, tmp_path):
    """Plug-and-Play injection runs at the first (noisiest) step and every step below the thresholds
    (``int(fraction * steps)``); with one step, injection still changes the result (0.3.0 skipped
    step 0: the source latent there is the start latent itself, and an identity test took it for
    missing)."""
    from ipfacediff.testing.conformance import tiny_edit_run

    strategy = catalog.build("strategy", "tokenflow", {"batch_size": 3, "attn_fraction": 0.5})
    run = tiny_edit_run(strategy, tmp_path, rows=7)
    strategy.render(run, list(range(7)))
    assert strategy.injected == [(True, True), (False, False)]  # 2 steps: int(1.0) = 1, int(1.6) = 1
    outs = []
    for fraction in (1.0, 0.0):
        strategy = catalog.build(
            "strategy", "tokenflow", {"batch_size": 3, "attn_fraction": fraction, "residual_fraction": fraction}
        )
        run = tiny_edit_run(strategy, tmp_path, rows=7)
        run.steps = 1
        outs.append(strategy.render(run, list(range(7))))
        assert strategy.injected == [(fraction == 1.0, fraction == 1.0)]
    assert not torch.allclose(outs[0], outs[1])


def test_tokenflow_injects_the_sources_residual_branch_into_every_batch():
    """The residual hook inside one [source, uncond, cond] batch: groups 1 and 2 get the source's
    residual branch on their own skip path (in the pivots' pass and in every propagation batch)."""
    from diffusers.models.resnet import ResnetBlock2D

    from ipfacediff.plugins.strategies.tokenflow import _residual_hook

    torch.manual_seed(2)
    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=12, groups=4, output_scale_factor=2.0).eval()
    x, temb = torch.randn(6, 8, 5, 5), torch.randn(6, 12)
    st = _tokenflow_state()
    with torch.no_grad():
        plain = block(x, temb)
        handle = block.register_forward_hook(_residual_hook(st))
        try:
            st.inject_res = True
            got = block(x, temb)
        finally:
            handle.remove()
        skip = block.conv_shortcut(x)
        res_src = plain[:2] * 2.0 - skip[:2]
        for g in range(3):
            assert torch.allclose(got[2 * g : 2 * g + 2], (skip[2 * g : 2 * g + 2] + res_src) / 2.0, atol=1e-5)


def test_tokenflow_draws_pivots_each_step_in_bounded_batches(catalog, tmp_path):
    """One pivot per batch of batch_size frames, drawn anew each step (seeded); no UNet call sees
    more than 3 x max(batch_size, pivots) images; evaluations: 3 per frame and 3 per pivot per step."""
    from ipfacediff.plugins.strategies.tokenflow import draw_pivots
    from ipfacediff.testing.conformance import tiny_edit_run

    g = torch.Generator().manual_seed(0)
    draws = [draw_pivots(7, 3, g) for _ in range(30)]
    assert all(0 <= a < 3 <= b < 6 <= c < 7 for a, b, c in draws)
    assert {d[0] for d in draws} == {0, 1, 2} and {d[1] for d in draws} == {3, 4, 5}
    strategy = catalog.build("strategy", "tokenflow", {"batch_size": 3})
    run = tiny_edit_run(strategy, tmp_path, rows=7)
    run.backbone.unet_evals.clear()  # the tiny backbone is shared between tests
    strategy.prepare(run)
    out = strategy.render(run, list(range(7)))
    again = catalog.build("strategy", "tokenflow", {"batch_size": 3})
    assert torch.equal(again.render(run, list(range(7))), out) and again.pivots == strategy.pivots  # seeded
    steps = len(strategy.pivots)
    assert steps == 2 and strategy.max_batch <= 9
    ev = run.backbone.unet_evals
    assert ev["denoise"] == 2 * steps * 3 * 7 and ev["denoise-pivots"] == 2 * steps * 3 * 3  # two renders


def test_tokenflow_plug_and_play_changes_the_edit(catalog, tmp_path):
    """Plug-and-Play's injection is on by default and changes every frame, pivots or not."""
    from ipfacediff.testing.conformance import tiny_edit_run

    outs = []
    for fractions in ({}, {"attn_fraction": 0.0, "residual_fraction": 0.0}):
        strategy = catalog.build("strategy", "tokenflow", {"batch_size": 3, **fractions})
        run = tiny_edit_run(strategy, tmp_path, rows=7)
        strategy.prepare(run)
        outs.append(strategy.render(run, list(range(7))))
    assert all(not torch.allclose(outs[0][i], outs[1][i]) for i in range(7))


# ------------------------------------------------------------------------------------ refinement
def _refined(catalog, tmp_path, refine_steps, start="inversion", chunks=((0, 1, 2, 3, 4, 5, 6),)):
    import ipfacediff.plugins.strategies.ip_facediff as strategy_module
    from ipfacediff.registry import PipelineSettings
    from ipfacediff.runtime import editing
    from ipfacediff.testing.conformance import tiny_edit_run

    strategy = catalog.build("strategy", "ip-facediff")
    run = tiny_edit_run(strategy, tmp_path, rows=7)
    run.settings = PipelineSettings(refine_steps=refine_steps)
    original = editing.refine
    strategy_module.refine = lambda *a, **k: original(*a, start=start)
    run.backbone.unet_evals.clear()  # the tiny backbone is shared between runs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EditWarning)  # the tiny run has no adapters
            strategy.prepare(run)
            out = torch.cat([strategy.render(run, list(c)) for c in chunks])
    finally:
        strategy_module.refine = original
    return out, torch.as_tensor(run.rows(list(range(7)))), dict(run.backbone.unet_evals)


def test_refinement_starts_from_each_frames_own_inversion_and_keeps_frames_consistent(catalog, tmp_path):
    """refine_steps changes the propagated frames (not the keyframes); starting each frame from its own
    inverted latent keeps the frame-to-frame change as close to the source's as without refinement,
    while independent noise per frame (0.2's start) moves it away; chunking does not change it."""
    plain, src, _ = _refined(catalog, tmp_path / "a", 0)
    refined, _, evals = _refined(catalog, tmp_path / "b", 2)
    independent, _, _ = _refined(catalog, tmp_path / "c", 2, start="independent")
    chunked, _, _ = _refined(catalog, tmp_path / "d", 2, chunks=((0, 1, 2, 3), (4, 5, 6)))
    others = [1, 2, 4, 5]
    assert torch.equal(refined[[0, 3, 6]], plain[[0, 3, 6]]) and not torch.allclose(refined[others], plain[others])

    def temporal_error(x):  # how far the change between neighbouring frames is from the source's
        return ((x[1:] - x[:-1]) - (src[1:] - src[:-1])).abs().mean().item()

    assert temporal_error(refined) <= 1.02 * temporal_error(plain) < temporal_error(independent)
    assert torch.allclose(chunked, refined, atol=1e-5)
    # per refined frame and step: its source's inversion step, eps1's capture pass, eps2 with CFG (x2)
    # (+ the same for its one or two anchor keyframes, denoised alongside)
    assert evals["propagation"] == 2 * (1 + 1 + 2) * (
        (2 + 2) + (2 + 2)
    )  # 2 steps; frames 1-2 with keys 0, 3; 4-5 with 3, 6


def test_refinement_frames_attend_to_their_own_tokens_and_the_keyframes():
    """Anchored attention: a frame's keys/values are its own tokens and the group's first `anchors`
    frames' (the keyframes), nothing of the other frames."""
    from diffusers.models.attention_processor import Attention

    from ipfacediff.runtime.attention import ControlledSelfAttention

    torch.manual_seed(3)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    ctrl = FeatureController(anchors=1, group_size=3)
    x = torch.randn(6, 5, 16)  # 2 groups (uncond, cond) of [keyframe, frame, frame]
    with torch.no_grad():
        got = ControlledSelfAttention("l", ctrl)(attn, x)
        y = x.clone()
        y[2] = torch.randn(5, 16)  # another frame of the group: no effect on frame 1
        assert torch.allclose(ControlledSelfAttention("l", ctrl)(attn, y)[1], got[1], atol=1e-6)
        y[0] = torch.randn(5, 16)  # the keyframe: an effect
        assert not torch.allclose(ControlledSelfAttention("l", ctrl)(attn, y)[1], got[1], atol=1e-4)


# ------------------------------------------------------------------ TokenFlow's published inversion
def test_inversion_with_more_steps_keeps_the_sampling_timesteps(catalog):
    """``inverter.steps`` inverts with more steps than the sampler runs (TokenFlow: 500 for 50) and
    keeps the latents at the sampler's timesteps and the last one; each is the latent the finer
    inversion reached there (the same as a plain inversion of that many steps)."""
    bb = tiny_backbone()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    empty = bb.encode_prompt([""])
    fine = catalog.build("inverter", "ddim", {"steps": 20}).invert(bb, z, empty, 5)
    full = catalog.build("inverter", "ddim").invert(bb, z, empty, 20)
    assert fine.denoise_timesteps == [801, 601, 401, 201, 1] and fine.steps == 5
    assert fine.timesteps == [1, 201, 401, 601, 801, 951] and len(fine.trajectory) == 7
    assert fine.extras["inversion_steps"] == 20 and fine.start_latent is fine.trajectory[-1]
    for t in fine.timesteps:
        assert torch.equal(fine.latent_at(t), full.latent_at(t)), t
    coarse = catalog.build("inverter", "ddim").invert(bb, z, empty, 5)
    assert not torch.allclose(coarse.latent_at(801), fine.latent_at(801))  # 4x finer steps: another path


def test_tokenflow_start_latent_is_the_clean_latent_renoised_by_the_inverted_noise(catalog):
    """``start: tokenflow``: the sampler starts from ``scheduler.add_noise(z0, eps, t0)`` with ``eps``
    the noise the last inverted latent implies (TokenFlow's ``get_ddim_eps``), not from that latent."""
    from diffusers import DDIMScheduler

    bb = tiny_backbone()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    empty = bb.encode_prompt([""])
    inv = catalog.build("inverter", "ddim", {"steps": 20, "start": "tokenflow"}).invert(bb, z, empty, 5)
    sched = DDIMScheduler.from_config(bb.scheduler_config)
    a_last = sched.alphas_cumprod[inv.timesteps[-1]]
    eps = (inv.trajectory[-1] - a_last.sqrt() * z) / (1 - a_last).sqrt()
    want = sched.add_noise(z, eps, torch.tensor([inv.denoise_timesteps[0]]))
    assert torch.allclose(inv.start_latent, want, atol=1e-6)
    assert not torch.allclose(inv.start_latent, inv.trajectory[-1])
    assert inv.select([1]).start_latent.shape == (1, 4, 8, 8)


def test_inversion_prompt_conditions_the_inversion_and_the_tokenflow_source_branch(catalog, tmp_path):
    """``inverter.prompt`` (TokenFlow's ``--inversion_prompt``) conditions the inversion, and TokenFlow's
    source branch runs on it (Plug-and-Play's ``pnp_guidance_embeds``)."""
    from ipfacediff.testing.conformance import tiny_edit_run

    bb = tiny_backbone()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    empty = bb.encode_prompt([""])
    plain = catalog.build("inverter", "ddim").invert(bb, z, empty, 3)
    prompted = catalog.build("inverter", "ddim", {"prompt": "a photo of a face"}).invert(bb, z, empty, 3)
    assert prompted.extras["prompt"] == "a photo of a face"
    assert not torch.allclose(plain.trajectory[-1], prompted.trajectory[-1])

    strategy = catalog.build("strategy", "tokenflow", {"batch_size": 3})
    run = tiny_edit_run(strategy, tmp_path, rows=4)
    run.components["inverter"] = catalog.build("inverter", "ddim", {"prompt": "a photo of a face"})
    seen = []
    predict = run.backbone.predict_noise

    def spy(x, t, emb, stage):
        if stage == "denoise":
            seen.append(emb[: x.shape[0] // 3].clone())
        return predict(x, t, emb, stage)

    run.backbone.predict_noise = spy
    try:
        strategy.render(run, list(range(4)))
    finally:
        del run.backbone.predict_noise
    source = run.backbone.encode_prompt(["a photo of a face"])
    assert seen and all(torch.equal(e, source.expand(e.shape[0], -1, -1)) for e in seen)
    assert run.report["tokenflow"]["inversion"] == {
        "steps": run.steps,
        "prompt": "a photo of a face",
        "start": "inverted",
    }


@pytest.mark.parametrize(("thresholds", "want"), [("round", 4), ("int", 3)])
def test_identity_injection_counts_injected_steps_as_asked(catalog, thresholds, want):
    """``thresholds: int`` counts the injected steps as Plug-and-Play's and TokenFlow's code do
    (``int(0.35 * 10) = 3``); the default keeps ``round`` (4)."""
    bb = tiny_backbone()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    empty = bb.encode_prompt([""])
    inv = catalog.build("inverter", "ddim").invert(bb, z, empty, 10)
    editor = catalog.build(
        "editor", "identity-injection", {"attn_fraction": 0.35, "residual_fraction": 0.35, "thresholds": thresholds}
    )
    stages = []
    predict = bb.predict_noise

    def spy(x, t, emb, stage):
        stages.append(stage)
        return predict(x, t, emb, stage)

    bb.predict_noise = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EditWarning)
            editor.edit(bb, inv, bb.encode_prompt(["a face, eyeglasses"]), empty, empty)
    finally:
        del bb.predict_noise
    assert stages.count("feature") == want and stages.count("keyframe-edit") == 10
