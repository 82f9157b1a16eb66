"""The contracts every registered component of a kind keeps, as named checks (in the manner of
diffusers' tester mixins): ``CHECKS[kind]`` maps a contract's name to a function that raises
``AssertionError`` when a component breaks it. ``tests/test_conformance.py`` runs every check on every
registered component; a third-party package runs them on its own with :func:`conformance_check`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipfacediff.interfaces import (
    KINDS,
    AlignedFace,
    Component,
    EditRun,
    FaceDetection,
    Inversion,
    PropagationInput,
    TrainingBatch,
)
from ipfacediff.testing import synthetic_face_frame, tiny_backbone

CHECKS: dict[str, dict[str, Callable[[Component], None]]] = {kind: {} for kind in KINDS}
"""Component kind -> contract name -> check (filled by :func:`contract`)."""


def contract(kind: str, name: str) -> Callable[[Callable[[Component], None]], Callable[[Component], None]]:
    """Declare the decorated function as the contract ``name`` of every component of ``kind``."""

    def add(check: Callable[[Component], None]) -> Callable[[Component], None]:
        CHECKS[kind][name] = check
        return check

    return add


def _finite(x: Any) -> bool:
    return bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else math.isfinite(float(x))


def _digest(*values: Any) -> str:
    h = hashlib.sha256()
    for v in values:
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, np.ndarray):
            h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, Inversion):
            h.update(_digest(*v.trajectory).encode())
    return h.hexdigest()


def _unchanged(fn: Callable[[], Any], *inputs: Any) -> Any:
    before = _digest(*inputs)
    out = fn()
    assert _digest(*inputs) == before, "the component modified its input in place"
    return out


def _latents(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ face processors
@contract("face_processor", "detect_returns_detections")
def face_detect_returns_detections(c) -> None:
    frame, _ = synthetic_face_frame()
    dets = _unchanged(lambda: c.detect(frame), frame)
    assert isinstance(dets, list) and all(isinstance(d, FaceDetection) for d in dets)


@contract("face_processor", "tracking_finds_the_face_detect_finds")
def face_tracking_finds_the_face_detect_finds(c) -> None:
    from ipfacediff.runtime.face import box_iou

    frame, _ = synthetic_face_frame()
    started = _unchanged(lambda: c.detect_next(frame, None), frame)
    assert isinstance(started, list) and all(isinstance(d, FaceDetection) for d in started)
    found = c.detect(frame)
    if found:  # the same frame again, its face as the previous one: tracking finds it where it is
        again = _unchanged(lambda: c.detect_next(frame, found[0]), frame)
        assert again and max(box_iou(d.box, found[0].box) for d in again) > 0.5, (
            "detect_next lost the face it was given on the same frame"
        )


@contract("face_processor", "paste_back_keeps_pixels_outside_the_crop")
def face_paste_back_keeps_pixels_outside_the_crop(c) -> None:
    import cv2

    frame, lms = synthetic_face_frame(160)
    det = FaceDetection(np.array([30.0, 30, 130, 130]), 1.0, lms)
    aligned = c.align(frame, det, 64)
    assert isinstance(aligned, AlignedFace) and aligned.crop.shape == (64, 64, 3) and aligned.crop.dtype == np.uint8
    edited = 255 - aligned.crop
    back = _unchanged(lambda: c.paste_back(frame, edited, aligned.matrix), frame, edited)
    assert back.shape == frame.shape and back.dtype == np.uint8
    inv = cv2.invertAffineTransform(aligned.matrix)
    footprint = cv2.warpAffine(np.ones((64, 64), np.uint8), inv, frame.shape[1::-1], flags=cv2.INTER_NEAREST)
    footprint = cv2.dilate(footprint, np.ones((5, 5), np.uint8)) > 0
    assert np.array_equal(back[~footprint], frame[~footprint]), (
        "paste_back changed pixels outside the crop's footprint"
    )
    assert not np.array_equal(back[footprint], frame[footprint]), "paste_back did not paste the crop"


# ----------------------------------------------------------------------------- identity encoders
@contract("identity_encoder", "unit_norm_embeddings_with_gradient")
def encoder_unit_norm_embeddings_with_gradient(c) -> None:
    x = torch.rand(2, 3, c.input_size, c.input_size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    e = c.embed(x)
    assert e.ndim == 2 and e.shape[0] == 2 and _finite(e)
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-4)
    if c.differentiable:  # else it says so, and the identity loss refuses it
        e.sum().backward()
        assert x.grad is not None and _finite(x.grad)


# ------------------------------------------------------------------------------------- metrics
def _metric(c, src: np.ndarray, ed: np.ndarray) -> dict[str, Any]:
    ctx = {"target_prompt": "a photo of a face, eyeglasses", "source_prompt": "a photo of a face", "fps": 24}
    return _unchanged(lambda: c.compute_with_context(src, ed, ctx), src, ed)


@contract("metric", "one_value_per_frame")
def metric_one_value_per_frame(c) -> None:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    ed = np.clip(src.astype(int) + rng.integers(-10, 10, src.shape), 0, 255).astype(np.uint8)
    res = _metric(c, src, ed)
    assert isinstance(res.get("value"), (int, float)), "a metric returns {'value': float, ...}"
    if not math.isfinite(float(res["value"])):
        assert res.get("note"), "a metric that gives nan says why in 'note'"
    if res.get("per_frame") is not None:
        want = len(src) - 1 if c.temporal else len(src)
        assert len(res["per_frame"]) == want, (
            f"per_frame has {len(res['per_frame'])} values for {len(src)} frames (expected {want})"
        )


@contract("metric", "identical_videos_score_best")
def metric_identical_videos_score_best(c) -> None:
    frame, _ = synthetic_face_frame(64)
    src = np.stack([frame, np.roll(frame, 2, axis=1), np.roll(frame, 4, axis=1)])
    noisy = np.clip(src.astype(int) + np.random.default_rng(1).integers(-40, 40, src.shape), 0, 255).astype(np.uint8)
    same, worse = _metric(c, src, src.copy()), _metric(c, src, noisy)
    a, b = float(same["value"]), float(worse["value"])
    if math.isfinite(a) and math.isfinite(b):
        assert (a >= b) if c.higher_is_better else (a <= b), f"identical videos scored {a}, a noisy edit {b}"


# ----------------------------------------------------------------------------------- diffusion
@contract("backbone", "latent_round_trip")
def backbone_latent_round_trip(c) -> None:
    x = torch.rand(1, 3, 64, 64)
    z = _unchanged(lambda: c.encode_images(x), x)
    assert z.shape[:2] == (1, 4) and _finite(z)
    y = c.decode_latents(z)
    assert y.shape == x.shape and _finite(y) and float(y.min()) >= 0 and float(y.max()) <= 1, (
        "decode(encode(x)) has x's shape, in [0, 1]"
    )
    e = c.encode_prompt(["a face"])
    assert e.ndim == 3 and e.shape[0] == 1 and _finite(e)
    before = sum(c.unet_evals.values())
    c.predict_noise(torch.cat([z, z]), 500, e, "check")
    assert sum(c.unet_evals.values()) == before + 2, "predict_noise counts one evaluation per latent"


@contract("inverter", "trajectory_starts_at_the_latents")
def inverter_trajectory_starts_at_the_latents(c) -> None:
    bb = tiny_backbone()
    z = _latents(2)
    inv = _unchanged(lambda: c.invert(bb, z, bb.encode_prompt([""]), 3, seed=0), z)
    assert torch.equal(inv.trajectory[0], z.float()), "trajectory[0] is the given latents"
    assert len(inv.trajectory) == len(inv.timesteps) + 1 and inv.timesteps == sorted(inv.timesteps)
    assert all(x.shape == z.shape and _finite(x) for x in inv.trajectory)
    assert (
        inv.steps == 3
        and inv.denoise_timesteps == sorted(inv.denoise_timesteps, reverse=True)
        and inv.denoise_timesteps
    )
    assert inv.latent_at(inv.denoise_timesteps[0]) is not None, "the editor starts at a level the trajectory has"


@contract("editor", "edits_to_the_latent_shape")
def editor_edits_to_the_latent_shape(c) -> None:
    bb = tiny_backbone()
    z = _latents(2)
    empty = bb.encode_prompt([""])
    inv = c.component("inverter", "ddim").invert(bb, z, empty, 3)
    target = bb.encode_prompt(["eyeglasses"])
    out = _unchanged(lambda: c.edit(bb, inv, target, empty, empty), inv, target, empty)
    assert out.shape == z.shape and _finite(out)
    assert isinstance(c.guidance_scale, float) and c.guidance_scale >= 1.0


def _moving_crops(n: int, size: int = 32) -> np.ndarray:
    """``uint8 [n, size, size, 3]``: a smooth texture sliding one pixel per frame."""
    import cv2

    base = cv2.resize(
        np.random.default_rng(0).integers(30, 220, (12, 12, 3)).astype(np.float32),
        (size + n + 8, size + n + 8),
        interpolation=cv2.INTER_CUBIC,
    )
    return np.stack([base[4 : 4 + size, 4 + t : 4 + t + size] for t in range(n)]).clip(0, 255).astype(np.uint8)


def _prop_input(n: int, keys: list[int], rows: list[int] | None = None, seed: int = 0) -> PropagationInput:
    """Both latents and pixels of ``n`` frames (rows ``rows`` of them), the keyframes edited."""
    rows = list(range(n)) if rows is None else list(rows)
    z = _latents(n, size=6)[rows]
    px = _moving_crops(n)[rows]
    key_rows = [p for p, r in enumerate(rows) if r in keys]
    edited_z = _latents(n, seed=seed + 1, size=6)[[rows[p] for p in key_rows]]
    edited_px = np.clip(px[key_rows].astype(int) + np.array([40, -30, 20]), 0, 255).astype(np.uint8)
    all_z = _latents(n, size=6)
    stats = (all_z[keys].mean(dim=(0, 2, 3)), all_z[keys].std(dim=(0, 2, 3)))
    return PropagationInput(
        key_rows=key_rows,
        frames=rows,
        features=z,
        stats=stats,
        source_latents=z,
        source_pixels=px,
        edited_latents=edited_z,
        edited_pixels=edited_px,
        reconstructed_pixels=px[key_rows].copy(),
    )


@contract("propagator", "keyframes_keep_their_edit")
def propagator_keyframes_keep_their_edit(c) -> None:
    inp = _prop_input(5, [0, 4])
    out = _unchanged(lambda: c.propagate(inp), inp.features, inp.source_pixels, inp.edited_latents, inp.edited_pixels)
    assert c.space in ("latents", "pixels") and set(c.needs) <= {f.name for f in dataclasses.fields(PropagationInput)}
    if c.space == "latents":
        assert isinstance(out, torch.Tensor) and out.shape == inp.source_latents.shape and _finite(out)
        assert torch.allclose(out[inp.key_rows], inp.edited_latents, atol=1e-5), "keyframes keep their edited values"
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == inp.source_pixels.shape
        assert np.array_equal(out[inp.key_rows], inp.edited_pixels), "keyframes keep their edited pixels"


@contract("propagator", "chunked_equals_whole_clip")
def propagator_chunked_equals_whole_clip(c) -> None:
    from ipfacediff.runtime.editing import chunk_with_borders

    n, keys = 11, [0, 4, 8]
    whole = c.propagate(_prop_input(n, keys))
    for size in (1, 3, 5):
        for a in range(0, n, size):
            rows = list(range(a, min(n, a + size)))
            sub, sub_keys, first = chunk_with_borders(rows, keys)
            part = c.propagate(_prop_input(n, keys, sub))
            got, want = part[first : first + len(rows)], whole[rows]
            same = torch.allclose(got, want, atol=1e-6) if isinstance(got, torch.Tensor) else np.array_equal(got, want)
            assert same, f"chunk {rows} (size {size}) differs from the whole clip"


@contract("localization_loss", "differentiable_scalar")
def loss_is_a_differentiable_scalar(c) -> None:
    g = torch.Generator().manual_seed(0)
    gen = torch.rand(1, 3, 64, 64, generator=g, requires_grad=True)
    ref = torch.rand(1, 3, 64, 64, generator=g)
    loss = _unchanged(lambda: c.forward(gen, ref, ["a smiling face"], ["a face"]), ref)
    assert loss.ndim == 0 and _finite(loss)
    loss.backward()
    assert gen.grad is not None and _finite(gen.grad)


# ------------------------------------------------------------------------ strategies, objectives
class TinyRun(EditRun):
    """A small in-memory :class:`EditRun`: latents in an array, no cache, the inversion computed."""

    def __init__(self, backbone, components, settings, latents, keys, embeds, steps, scratch: Path):
        from ipfacediff.jobs.common import Timings

        self.backbone, self.components, self.settings, self.latents = backbone, components, settings, latents
        self.keys, self.face_frames, self.embeds = keys, list(range(len(latents))), embeds
        self.steps, self.seed, self.show_progress, self.scratch = steps, 0, False, scratch
        self.report, self.reused, self.timings = {}, [], Timings()

    def crops(self, rows):
        raise NotImplementedError("the tiny run has latents only (no frames to crop)")

    def invert(self, latents):
        return self.components["inverter"].invert(self.backbone, latents, self.embeds["empty"], self.steps)

    def cached(self, category, parts, compute):
        return compute()

    def timer(self, name):
        return self.timings(name)


def tiny_edit_run(c, scratch: Path, rows: int = 7, keys: tuple[int, ...] = (0, 3, 6)) -> EditRun:
    """A small in-memory :class:`EditRun`: the tiny backbone, ``ddim``, ``identity-injection``, ``exact-nn``."""
    from ipfacediff.registry import PipelineSettings

    bb = tiny_backbone()
    comps = {
        "inverter": c.component("inverter", "ddim"),
        "editor": c.component("editor", "identity-injection"),
        "propagator": c.component("propagator", "exact-nn"),
    }
    embeds = {
        "empty": bb.encode_prompt([""]),
        "target": bb.encode_prompt(["a face, eyeglasses"]),
        "uncond": bb.encode_prompt([""]),
    }
    return TinyRun(bb, comps, PipelineSettings(), _latents(rows).numpy(), list(keys), embeds, 2, scratch)


@contract("strategy", "renders_every_row")
def strategy_renders_every_row(c) -> None:
    from ipfacediff.registry import PIPELINE_SLOTS

    assert set(c.requires) <= set(PIPELINE_SLOTS), (
        f"requires {c.requires}: unknown slots (slots: {', '.join(PIPELINE_SLOTS)})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = tiny_edit_run(c, Path(tmp))
        before = _digest(run.latents)
        c.prepare(run)
        try:
            out = torch.cat([c.render(run, [0, 1, 2, 3]), c.render(run, [4, 5, 6])])
        finally:
            c.close()
        assert out.shape == run.latents.shape and _finite(out)
        assert _digest(run.latents) == before, "the strategy modified the source latents"


@contract("objective", "losses_are_differentiable_scalars")
def objective_losses_are_differentiable_scalars(c) -> None:
    from ipfacediff.registry import RECIPE_SLOTS, RecipeSettings
    from ipfacediff.runtime.training import TrainingFaces

    assert set(c.requires) <= set(RECIPE_SLOTS) and set(c.term_requires.values()) <= set(RECIPE_SLOTS)
    assert c.terms and set(c.default_weights) <= set(c.terms)
    bb = tiny_backbone()
    frames = [synthetic_face_frame(64, seed=i) for i in range(2)]
    comps = {
        "identity_encoder": c.component("identity_encoder", "mobilefacenet"),
        "localization_loss": c.component("localization_loss", "clip-directional", {"model": "tiny"}),
    }
    faces = TrainingFaces(
        bb,
        np.stack([f for f, _ in frames]),
        np.stack([lm for _, lm in frames]).astype(np.float32),
        torch.device("cpu"),
        comps["identity_encoder"],
    )
    weights = {t: 1.0 for t in c.terms}
    c.setup(bb, faces, comps, RecipeSettings(identity_max_timestep=999), weights)
    unet = bb.unet
    params = [p for p in unet.parameters()][:4]
    for p in params:
        p.requires_grad_(True)
    try:
        batch = TrainingBatch(torch.tensor([0, 1]), torch.tensor([100, 300]), _latents(2), [c.prompts[0]] * 2)
        losses = c.losses(unet, batch)
        assert set(losses) == set(c.terms), f"losses {sorted(losses)} for terms {sorted(c.terms)}"
        for name, v in losses.items():
            assert v.ndim == 0 and _finite(v), f"term {name}: {v}"
        sum(losses.values()).backward()
        assert any(p.grad is not None for p in params), "no gradient reaches the UNet"
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None


def build_for_check(catalog, kind: str, name: str, workdir: str) -> Component:
    """The registered component's test instance (``build_for_test``), wired to ``catalog``."""
    spec = catalog.get(kind, name)
    comp = spec.cls.build_for_test(workdir)
    comp.name, comp._build = name, catalog.build
    return comp


def conformance_check(component: Component) -> dict[str, str]:
    """Run every contract of ``component``'s kind; returns ``{contract: "ok"}`` or raises ``AssertionError``."""
    if component._build is None:
        from ipfacediff.catalog import get_catalog

        component._build = get_catalog().build
    return {name: (check(component), "ok")[1] for name, check in CHECKS[component.kind].items()}
