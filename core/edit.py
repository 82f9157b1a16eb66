"""The edit job: a face video and a prompt in, the edited video out (same length, fps, size, audio).

Stages (each timed, each with a progress bar): detect and track the face, align crops at the
backbone's resolution, encode them to latents, then by the pipeline's ``strategy``:

* ``ip-facediff``: select keyframes; DDIM-invert only the keyframes (cached); edit them jointly
  with identity injection (eps1 features into eps2); propagate the edit to every other frame by
  nearest-neighbour token matching on the source latents; optional low-noise refinement;
* ``per-frame``: invert and edit every frame independently with the same editor;
* ``sdedit``: noise every frame part-way (``ddpm-noise``) and denoise it with the editor;
* ``tokenflow``: invert every frame; denoise all frames together, keyframes with extended attention,
  the others taking the keyframes' attention outputs at their nearest tokens;

then decode, paste the edited crops back into the frames and write the video, a strip of source vs
edited keyframes (PNG) and a JSON report beside it. UNet evaluations are counted exactly, by stage.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .catalog import get_catalog
from .errors import InputError, NoFaceError, ParameterError
from .face import pick_primary, smooth_track
from .interfaces import Backbone, FaceDetection, FaceProcessor, Inversion
from .keyframes import select_keyframes
from .params import validate_params
from .progress import progress_bar
from .registry import PipelineEntry, PipelineSettings, Registry
from .video import IMAGE_EXTS, VideoWriter, check_output, open_frames

RANDOM_NOTE = "random-weight backbone: shows the mechanics, not a real edit"
SD_HUB_IDS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5", "CompVis/stable-diffusion-v1-4")


@dataclass
class EditRequest:
    input: Path
    prompt: str
    pipeline: PipelineEntry
    registry: Registry
    output: Path | None = None
    backbone: str = "auto"
    steps: int = 50
    max_frames: int | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    face_processor: str | None = None  # replaces the pipeline's face processor (e.g. full-frame for talking heads)
    device: str = "cpu"
    overwrite: bool = False
    show_progress: bool = True
    null_edit: bool = False  # the source prompt only (no edit): what the pipeline does to a face it should keep


def detect_track(processor: FaceProcessor, source, n: int, smoothing: int, show_progress: bool) -> list[FaceDetection | None]:
    """Pass 1: the primary face of each of the first ``n`` frames, landmarks smoothed over time."""
    raw: list[FaceDetection | None] = []
    previous = None
    with progress_bar("detect", n, show_progress) as bar:
        for _, chunk in source.iter_chunks(16, n):
            for f in chunk:
                d = pick_primary(processor.detect(f), previous)
                raw.append(d)
                previous = d or previous
                bar.advance()
    return smooth_track(raw, smoothing)


def align_and_encode(processor: FaceProcessor, backbone: Backbone, source, n: int, track: list[FaceDetection | None], face_frames: list[int],
                     batch_size: int, show: bool) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Pass 2: aligned crops at the backbone's resolution (``uint8 [F, r, r, 3]``), their matrices
    and their latents, for the frames in ``face_frames``."""
    r = backbone.resolution
    crops = np.empty((len(face_frames), r, r, 3), np.uint8)
    matrices = np.empty((len(face_frames), 2, 3))
    pos = {f: k for k, f in enumerate(face_frames)}
    with progress_bar("align", n, show) as bar:
        for start, chunk in source.iter_chunks(16, n):
            for j, f in enumerate(chunk):
                i = start + j
                if i in pos:
                    a = processor.align(f, track[i], r)
                    crops[pos[i]], matrices[pos[i]] = a.crop, a.matrix
                bar.advance()
    latents = []
    with progress_bar("encode", len(face_frames), show) as bar:
        for s in range(0, len(face_frames), batch_size):
            latents.append(backbone.encode_images(_to_tensor(crops[s:s + batch_size])).cpu())
            bar.advance(min(batch_size, len(face_frames) - s))
    return crops, matrices, torch.cat(latents)


def pick_keyframes(settings: PipelineSettings, asked: dict[str, Any], face_frames: list[int], track: list[FaceDetection | None]) -> list[int]:
    """Keyframe rows (into ``face_frames``) by the pipeline's settings; on a clip shorter than the
    pipeline's default interval / count (not asked for explicitly) the clip gets one / all."""
    interval, count = settings.keyframe_interval, settings.keyframe_count
    if "keyframe_interval" not in asked:
        interval = min(interval, len(face_frames))
    if "keyframe_count" not in asked:
        count = min(count, len(face_frames))
    return select_keyframes(len(face_frames), settings.keyframe_method, interval, count, [track[i] for i in face_frames])


def parse_prompt(prompt: str, source_prompt: str) -> tuple[list[str], str]:
    """``"eyeglasses, beard"`` -> (edits, target prompt ``"<source>, eyeglasses, beard"``)."""
    edits = [p.strip() for p in (prompt or "").split(",") if p.strip()]
    if not edits:
        raise ParameterError("the prompt is empty; say what to change, e.g. -p \"eyeglasses\" or -p \"blonde hair, beard\"")
    target = ", ".join([source_prompt.strip(), *edits]) if source_prompt.strip() else ", ".join(edits)
    return edits, target


def _slot_params(ref, sets: dict[str, Any], slot: str) -> dict[str, Any]:
    extra = sets.get(slot, {})
    if not isinstance(extra, dict):
        raise ParameterError(f"--set {slot}={extra!r}: give a parameter, e.g. {slot}.NAME=VALUE")
    return {**ref.raw_params(), **extra}


def resolve_backbone(name: str, sets: dict[str, Any], registry: Registry, default: str = "auto") -> tuple[Backbone, list[str]]:
    """``auto``: ``default`` (the pipeline's or recipe's backbone) unless that is ``auto`` too, then a
    configured or locally cached Stable Diffusion, else ``tiny`` (with a warning); otherwise a
    backbone entry of the registry or a registered backbone component. ``sets["backbone"]``
    overrides parameters."""
    catalog = get_catalog()
    warnings: list[str] = []
    extra = sets.get("backbone", {})
    if not isinstance(extra, dict):
        raise ParameterError(f"--set backbone={extra!r}: give a parameter, e.g. backbone.NAME=VALUE")
    if name == "auto":
        name = default
    if name == "auto":
        found = None
        if os.environ.get("IPFACEDIFF_SD_MODEL"):
            found = ("stable-diffusion", {"path": os.environ["IPFACEDIFF_SD_MODEL"]})
        for entry in registry.backbones.values():
            path = entry.component.raw_params().get("path")
            if found is None and entry.component.name == "stable-diffusion" and path and Path(path).expanduser().exists():
                found = ("stable-diffusion", entry.component.raw_params())
        if found is None:
            from .models import resolve_sd_checkpoint

            for hub_id in SD_HUB_IDS:
                try:
                    resolve_sd_checkpoint(hub_id)
                    found = ("stable-diffusion", {"path": hub_id})
                    break
                except Exception:  # noqa: BLE001 - not cached
                    continue
        if found is None:
            warnings.append(f"no Stable Diffusion checkpoint configured or cached: using the tiny backbone ({RANDOM_NOTE})")
            found = ("tiny", {})
        comp, params = found
        return catalog.build("backbone", comp, {**params, **extra}, "--backbone auto"), warnings
    if name in registry.backbones:
        entry = registry.backbones[name]
        return catalog.build("backbone", entry.component.name, {**entry.component.raw_params(), **extra}, entry.component.where), warnings
    return catalog.build("backbone", name, extra, "--backbone"), warnings


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
    os.replace(tmp, path)


def run_edit(req: EditRequest) -> dict[str, Any]:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    catalog = get_catalog()
    pipeline = req.pipeline
    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    if req.max_frames is not None and req.max_frames < 1:
        raise ParameterError(f"--max-frames {req.max_frames}: must be at least 1")
    for slot in req.sets:
        if slot not in (*pipeline.components, "settings", "backbone"):
            raise ParameterError(f"--set {slot}...: the pipeline {pipeline.name!r} has no {slot!r} "
                                 f"(has: {', '.join([*pipeline.components, 'settings', 'backbone'])})")
    settings: PipelineSettings = validate_params(PipelineSettings, {**asdict(pipeline.settings), **req.sets.get("settings", {})},
                                                 f"pipeline {pipeline.name} settings")
    if req.null_edit:
        edits, target_prompt = [], settings.source_prompt
    else:
        edits, target_prompt = parse_prompt(req.prompt, settings.source_prompt)
    info_in = open_frames(req.input).info  # validates the input before anything is built
    out = req.output or Path.cwd() / (f"{req.input.stem}-edited" + (".png" if info_in.kind == "image" else ".mp4"))
    out = check_output(out, req.overwrite, [req.input])
    needed = {"ip-facediff": ("face_processor", "inverter", "editor", "propagator"), "per-frame": ("face_processor", "inverter", "editor"),
              "sdedit": ("face_processor", "inverter", "editor"), "tokenflow": ("face_processor", "inverter")}[settings.strategy]
    for slot in needed:
        if slot not in pipeline.components:
            raise ParameterError(f"pipeline {pipeline.name!r} (strategy {settings.strategy}) needs a {slot}")
    device = torch.device(req.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the report's peak is this edit's, not the process's
    torch.manual_seed(req.seed)

    comps = {slot: catalog.build(ref.kind, ref.name, _slot_params(ref, req.sets, slot), ref.where).to(device)
             for slot, ref in pipeline.components.items() if slot != "identity_encoder" and not (slot == "face_processor" and req.face_processor)}
    if req.face_processor:
        comps["face_processor"] = catalog.build("face_processor", req.face_processor, req.sets.get("face_processor", {}), "--face-processor").to(device)
    processor: FaceProcessor = comps["face_processor"]
    backbone, bw = resolve_backbone(req.backbone, req.sets, req.registry, pipeline.backbone)
    warnings += bw
    backbone.to(device)
    backbone.unet_evals.clear()
    timings["load_models"] = time.perf_counter() - t_start

    source = open_frames(req.input)
    info = source.info
    n = len(source) if req.max_frames is None else min(len(source), req.max_frames)
    try:
        # 1. detect and track
        t0 = time.perf_counter()
        track = detect_track(processor, source, n, settings.landmark_smoothing, req.show_progress)
        face_frames = [i for i, d in enumerate(track) if d is not None]
        timings["detect"] = time.perf_counter() - t0
        if not face_frames:
            raise NoFaceError(f"no face found in {req.input} (checked {n} frame{'s' if n != 1 else ''} with {processor.name})")
        if len(face_frames) < n:
            warnings.append(f"no face in {n - len(face_frames)} of {n} frames: those frames pass through unedited")
        if len(face_frames) / n < settings.min_face_frames:
            raise NoFaceError(f"a face was found in only {len(face_frames)} of {n} frames of {req.input}")

        # 2. align and encode
        t0 = time.perf_counter()
        r = backbone.resolution
        pos = {f: k for k, f in enumerate(face_frames)}
        crops, matrices, latents = align_and_encode(processor, backbone, source, n, track, face_frames, settings.batch_size, req.show_progress)
        timings["align_encode"] = time.perf_counter() - t0

        # 3. edit
        empty = backbone.encode_prompt([""])
        target_emb = backbone.encode_prompt([target_prompt])
        uncond = backbone.encode_prompt([settings.guidance_prompt])
        keys = pick_keyframes(settings, req.sets.get("settings", {}), face_frames, track)
        stage_info: dict[str, Any] = {}
        edited = _run_strategy(settings, comps, backbone, latents, keys, empty, target_emb, uncond, req, timings, stage_info)

        # 4. decode, paste back, write
        t0 = time.perf_counter()
        edited_crops = np.empty_like(crops)
        with progress_bar("decode", len(face_frames), req.show_progress) as bar:
            for s in range(0, len(face_frames), settings.batch_size):
                edited_crops[s:s + settings.batch_size] = _to_uint8(backbone.decode_latents(edited[s:s + settings.batch_size]).cpu())
                bar.advance(min(settings.batch_size, len(face_frames) - s))
        timings["decode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        strip_src, strip_edit = [], []
        key_frames_abs = {face_frames[k] for k in keys}
        as_image = out.suffix.lower() in IMAGE_EXTS
        if as_image and n != 1:
            raise InputError(f"{out}: an image output needs a one-frame input; use .mp4 for {n} frames")
        audio = info.path if info.kind == "video" and info.has_audio else None
        writer = None if as_image else VideoWriter(out, info.fps_fraction, info.width, info.height, audio_from=audio, overwrite=True)
        try:
            with progress_bar("write", n, req.show_progress) as bar:
                for start, chunk in source.iter_chunks(16, n):
                    result = chunk.copy()
                    for j, f in enumerate(chunk):
                        i = start + j
                        if i in pos:
                            result[j] = processor.paste_back(f, edited_crops[pos[i]], matrices[pos[i]])
                        if i in key_frames_abs and len(strip_src) < 8:
                            strip_src.append(crops[pos[i]])
                            strip_edit.append(edited_crops[pos[i]])
                        bar.advance()
                    if writer is not None:
                        writer.write(result)
                    else:
                        ok, buf = cv2.imencode(out.suffix, cv2.cvtColor(result[0], cv2.COLOR_RGB2BGR))
                        _write_atomic(out, buf.tobytes())
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        timings["paste_write"] = time.perf_counter() - t0
    finally:
        source.close()

    from .facejob import make_strip

    strip_path = out.with_name(out.stem + ".strip.png")
    strip = make_strip([strip_src, strip_edit], height=min(256, r))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    _write_atomic(strip_path, buf.tobytes())
    evals = dict(backbone.unet_evals)
    total_evals = sum(evals.values())
    if backbone.is_random:
        warnings.append(RANDOM_NOTE)
    report = {
        "job": "edit",
        "input": info.to_json(),
        "output": str(out),
        "strip": str(strip_path),
        "prompt": req.prompt,
        "edits": edits,
        "target_prompt": target_prompt,
        "pipeline": pipeline.name,
        "strategy": settings.strategy,
        "components": {slot: {"component": c.name, "params": asdict(c.params)} for slot, c in comps.items()},
        "settings": asdict(settings),
        "backbone": {"name": backbone.name, "random_weights": backbone.is_random, "resolution": backbone.resolution,
                     "adapters": backbone.adapters, "params": asdict(backbone.params)},
        "seed": req.seed,
        "steps": req.steps,
        "frames": n,
        "frames_edited": len(face_frames),
        "frames_passed_through": n - len(face_frames),
        "keyframes": [face_frames[k] for k in keys],
        "unet_evaluations": {"by_stage": evals, "total": total_evals, "per_output_frame": total_evals / n},
        **stage_info,
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t_start}.items()},
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "device": str(device),
        "warnings": warnings,
    }
    json_path = out.with_name(out.stem + ".json")
    _write_atomic(json_path, json.dumps(report, indent=2, default=str).encode())
    report["report"] = str(json_path)
    return report


def _run_strategy(settings: PipelineSettings, comps: dict[str, Any], backbone: Backbone, latents: torch.Tensor, keys: list[int],
                  empty: torch.Tensor, target: torch.Tensor, uncond: torch.Tensor, req: EditRequest, timings: dict[str, float],
                  stage_info: dict[str, Any]) -> torch.Tensor:
    strategy = settings.strategy
    steps, bs, show = req.steps, settings.batch_size, req.show_progress
    inverter, editor = comps["inverter"], comps.get("editor")

    def invert(lat: torch.Tensor) -> Inversion:
        """Invert ``lat`` with eps1 (the identity adapter), timed and reported."""
        t0 = time.perf_counter()
        backbone.set_adapter("identity")
        with progress_bar("invert", lat.shape[0], show) as bar:
            inv = inverter.invert(backbone, lat, empty, steps, req.seed)
            bar.advance(lat.shape[0])
        stage_info["inversion_cached"] = bool(inv.extras.get("cached"))
        timings["invert"] = time.perf_counter() - t0
        return inv

    if strategy == "ip-facediff":
        inv = invert(latents[keys])
        t0 = time.perf_counter()
        with progress_bar("edit keys", len(keys), show) as bar:
            edited_keys = editor.edit(backbone, inv, target, uncond, empty).cpu()
            bar.advance(len(keys))
        timings["edit_keyframes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        source = latents
        if settings.propagation_source == "eps1":
            from .diffusion import decoder_token_features

            backbone.set_adapter("identity")
            with progress_bar("features", latents.shape[0], show) as bar:
                source = decoder_token_features(backbone, latents, settings.propagation_timestep, empty, req.seed, bs)
                bar.advance(latents.shape[0])
            backbone.set_adapter(None)
        with progress_bar("propagate", latents.shape[0], show) as bar:
            out = comps["propagator"].propagate(source, keys, edited_keys)
            bar.advance(latents.shape[0])
        if settings.refine_steps > 0:
            others = [i for i in range(latents.shape[0]) if i not in keys]
            for s in range(0, len(others), bs):
                rows = others[s:s + bs]
                out[rows] = _refine(backbone, out[rows], target, uncond, settings, editor, req.seed + s)
        timings["propagate"] = time.perf_counter() - t0
        return out
    if strategy in ("per-frame", "sdedit"):
        inv = invert(latents)
        t0 = time.perf_counter()
        outs = []
        with progress_bar("edit", latents.shape[0], show) as bar:
            for s in range(0, latents.shape[0], bs):
                rows = list(range(s, min(latents.shape[0], s + bs)))
                outs.append(editor.edit(backbone, inv.select(rows), target, uncond, empty).cpu())
                bar.advance(len(rows))
        timings["edit_frames"] = time.perf_counter() - t0
        return torch.cat(outs)
    if strategy == "tokenflow":
        inv = invert(latents)
        t0 = time.perf_counter()
        guidance = getattr(editor.params, "guidance_scale", 7.5) if editor is not None else 7.5
        out = tokenflow_denoise(backbone, inv, keys, target, uncond, guidance, show)
        timings["denoise_all"] = time.perf_counter() - t0
        return out
    raise ParameterError(f"unknown strategy {strategy!r}")


def _refine(backbone: Backbone, x0: torch.Tensor, target: torch.Tensor, uncond: torch.Tensor, settings: PipelineSettings, editor, seed: int) -> torch.Tensor:
    """A few low-noise denoising steps (eps2, target prompt, CFG) on propagated latents."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    total = max(settings.refine_steps, round(settings.refine_steps / max(settings.refine_strength, 1e-3)))
    sched.set_timesteps(total)
    ts = [int(t) for t in sched.timesteps][-settings.refine_steps:]
    g = torch.Generator().manual_seed(seed)
    x = sched.add_noise(x0.float(), torch.randn(x0.shape, generator=g), torch.tensor([ts[0]])).to(backbone.device)
    guidance = getattr(editor.params, "guidance_scale", 7.5)
    backbone.set_adapter("edit")
    k = x.shape[0]
    emb = torch.cat([uncond.expand(k, -1, -1), target.expand(k, -1, -1)])
    from .diffusion import cfg_combine

    for t in ts:
        eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "propagation"), guidance)
        x = sched.step(eps, t, x).prev_sample
    backbone.set_adapter(None)
    return x.cpu()


def tokenflow_denoise(backbone: Backbone, inv: Inversion, keys: list[int], target: torch.Tensor, uncond: torch.Tensor,
                      guidance: float, show: bool = False) -> torch.Tensor:
    """TokenFlow-style: all frames denoised together; keyframes share extended attention, the
    others take the keyframes' attention outputs at their nearest tokens."""
    from diffusers import DDIMScheduler

    from .diffusion import FeatureController, cfg_combine, controlled_unet

    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    sched.set_timesteps(inv.extras["steps"])
    x = inv.trajectory[-1].to(backbone.device)
    t_frames = x.shape[0]
    emb = torch.cat([uncond.expand(t_frames, -1, -1), target.expand(t_frames, -1, -1)])
    ctrl = FeatureController(mode="tokenflow", group_size=t_frames, key_positions=list(keys))
    backbone.set_adapter("edit")
    with controlled_unet(backbone.unet, ctrl, []), progress_bar("denoise", len(inv.denoise_timesteps), show) as bar:
        for t in inv.denoise_timesteps:
            eps = cfg_combine(backbone.predict_noise(torch.cat([x, x]), t, emb, "denoise"), guidance)
            x = sched.step(eps, t, x).prev_sample
            bar.advance()
    backbone.set_adapter(None)
    return x.cpu()
