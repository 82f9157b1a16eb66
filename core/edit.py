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

import inspect
import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

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
from .video import IMAGE_EXTS, VideoWriter, check_output, check_size, open_frames

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
    cache: bool = True  # keep finished stages in the cache (resume, re-edits); False: nothing read or kept


def detect_track(processor: FaceProcessor, source, n: int, smoothing: int, show_progress: bool) -> list[FaceDetection | None]:
    """Pass 1: the primary face of each of the first ``n`` frames, landmarks smoothed over time."""
    raw: list[FaceDetection | None] = []
    previous = None
    with progress_bar("detect", n, show_progress) as bar:
        for _, chunk in source.iter_chunks(source.batch, n):
            for f in chunk:
                d = pick_primary(processor.detect(f), previous)
                raw.append(d)
                previous = d or previous
                bar.advance()
    return smooth_track(raw, smoothing)


def aligned_faces(processor: FaceProcessor, source, n: int, track: list[FaceDetection | None], face_frames: list[int], resolution: int,
                  show: bool) -> Iterator[tuple[int, Any]]:
    """(row into ``face_frames``, aligned face) for each face frame among the first ``n``, streamed
    (frames read in batches), with an ``align`` progress bar over the frames."""
    pos = {f: k for k, f in enumerate(face_frames)}
    with progress_bar("align", n, show) as bar:
        for start, chunk in source.iter_chunks(source.batch, n):
            for j, f in enumerate(chunk):
                if start + j in pos:
                    yield pos[start + j], processor.align(f, track[start + j], resolution)
            bar.advance(len(chunk))


def align_and_encode(processor: FaceProcessor, backbone: Backbone, source, n: int, track: list[FaceDetection | None], face_frames: list[int],
                     batch_size: int, show: bool) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Pass 2 in memory (short clips, the benchmark's propagation job): aligned crops at the
    backbone's resolution (``uint8 [F, r, r, 3]``), their matrices and their latents. ``edit``
    streams instead (:func:`encode_faces`)."""
    r = backbone.resolution
    crops = np.empty((len(face_frames), r, r, 3), np.uint8)
    matrices = np.empty((len(face_frames), 2, 3))
    for row, a in aligned_faces(processor, source, n, track, face_frames, r, show):
        crops[row], matrices[row] = a.crop, a.matrix
    latents = [backbone.encode_images(_to_tensor(crops[s:s + batch_size])).cpu() for s in range(0, len(face_frames), batch_size)]
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


def track_to_arrays(track: list[FaceDetection | None]) -> dict[str, np.ndarray]:
    n = len(track)
    found = np.array([d is not None for d in track], bool)
    has_lm = np.array([d is not None and d.landmarks is not None for d in track], bool)
    boxes, scores, lms = np.zeros((n, 4)), np.zeros(n), np.zeros((n, 5, 2))
    for i, d in enumerate(track):
        if d is not None:
            boxes[i], scores[i] = d.box, d.score
            if d.landmarks is not None:
                lms[i] = d.landmarks
    sources = np.array([d.source if d is not None else "" for d in track], dtype=str)
    return {"found": found, "has_landmarks": has_lm, "boxes": boxes, "scores": scores, "landmarks": lms, "sources": sources}


def track_from_arrays(a: dict[str, np.ndarray]) -> list[FaceDetection | None]:
    return [FaceDetection(a["boxes"][i].copy(), float(a["scores"][i]), a["landmarks"][i].copy() if a["has_landmarks"][i] else None, str(a["sources"][i]))
            if a["found"][i] else None for i in range(len(a["found"]))]


def encode_faces(processor: FaceProcessor, backbone: Backbone, source, n: int, track: list[FaceDetection | None], face_frames: list[int],
                 batch_size: int, folder: Path, show: bool) -> None:
    """Pass 2, streamed: align each face frame at the backbone's resolution, encode the crops in
    batches and write the latents into ``folder/latents.npy`` (memory-mapped, ``float32 [F, C, h, w]``)
    and the alignment matrices into ``folder/matrices.npy``. Only one batch of crops is in memory."""
    matrices = np.zeros((len(face_frames), 2, 3))
    store: dict[str, Any] = {}
    rows: list[int] = []
    crops: list[np.ndarray] = []

    def flush() -> None:
        z = backbone.encode_images(_to_tensor(np.stack(crops))).float().cpu().numpy()
        if "latents" not in store:
            store["latents"] = np.lib.format.open_memmap(folder / "latents.npy", mode="w+", dtype=np.float32, shape=(len(face_frames), *z.shape[1:]))
        store["latents"][rows[0]:rows[0] + len(rows)] = z
        rows.clear()
        crops.clear()

    for row, a in aligned_faces(processor, source, n, track, face_frames, backbone.resolution, show):
        rows.append(row)
        crops.append(a.crop)
        matrices[row] = a.matrix
        if len(rows) == batch_size:
            flush()
    if rows:
        flush()
    store["latents"].flush()
    del store["latents"]  # closes the memory map
    np.save(folder / "matrices.npy", matrices)


def keyframe_groups(keys: list[int], size: int) -> list[list[int]]:
    """Keyframes in groups of at most ``size`` edited jointly (extended attention within a group:
    memory grows with the group, not the clip). Each group after the first starts with the previous
    group's last keyframe: it is denoised again with the new group as an anchor shared by both
    groups' attention, and keeps its first group's edit."""
    if len(keys) <= size:
        return [list(keys)]
    groups, i = [list(keys[:size])], size
    while i < len(keys):
        groups.append([keys[i - 1], *keys[i:i + size - 1]])
        i += size - 1
    return groups


def chunk_with_borders(rows: list[int], keys: list[int]) -> tuple[list[int], list[int], int]:
    """For a run of consecutive face rows: the rows to hand the propagator (the nearest keyframe
    before the run, the run, the nearest keyframe after it), the positions of the keyframes among
    them, and where the run starts. Every frame of the run sees the same two keyframes it would see
    in the whole clip, so chunked propagation equals whole-clip propagation."""
    keyset = set(keys)
    left = [k for k in keys if k < rows[0]][-1:]
    right = [k for k in keys if k > rows[-1]][:1]
    sub = [*left, *rows, *right]
    return sub, [p for p, r in enumerate(sub) if r in keyset], len(left)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


def run_edit(req: EditRequest) -> dict[str, Any]:
    """Edit ``req.input``. Long clips stream: faces are encoded to a memory-mapped file, keyframes
    are edited in groups, and propagation, decoding and writing run ``settings.chunk_frames`` frames
    at a time with the keyframes on both sides of each chunk. Finished stages (face track, latents,
    inversions, keyframe edits) are kept in the cache (``req.cache``), so an interrupted run resumes
    after them and a re-edit of the same clip skips detection and encoding."""
    from .cache import StageCache, input_fingerprint, prune, stage_key

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
    check_size(info_in, settings.max_input_side)
    out = req.output or Path.cwd() / (f"{req.input.stem}-edited" + (".png" if info_in.kind == "image" else ".mp4"))
    out = check_output(out, req.overwrite, [req.input])
    n_in = info_in.n_frames if req.max_frames is None else min(info_in.n_frames, req.max_frames)
    if out.suffix.lower() in IMAGE_EXTS and n_in != 1:
        raise InputError(f"{out}: an image output needs a one-frame input; use .mp4 for {n_in} frames")
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
    if not req.cache and hasattr(comps["inverter"].params, "cache"):
        comps["inverter"].params.cache = False
    processor: FaceProcessor = comps["face_processor"]
    backbone, bw = resolve_backbone(req.backbone, req.sets, req.registry, pipeline.backbone)
    warnings += bw
    backbone.to(device)
    backbone.unet_evals.clear()
    timings["load_models"] = time.perf_counter() - t_start

    cache = StageCache(enabled=req.cache)
    reused: list[str] = []
    run = None
    source = open_frames(req.input)
    info = source.info
    n = len(source) if req.max_frames is None else min(len(source), req.max_frames)
    try:
        # 1. detect and track (cached per clip, processor and smoothing)
        t0 = time.perf_counter()
        k_track = stage_key(stage="track", input=input_fingerprint(req.input), frames=n, processor=processor.name,
                            params=asdict(processor.params), smoothing=settings.landmark_smoothing, v=1)
        cached_track = cache.load_npz("tracks", k_track)
        if cached_track is not None:
            track = track_from_arrays(cached_track)
            reused.append("detect")
        else:
            track = detect_track(processor, source, n, settings.landmark_smoothing, req.show_progress)
            cache.save_npz("tracks", k_track, **track_to_arrays(track))
        face_frames = [i for i, d in enumerate(track) if d is not None]
        timings["detect"] = time.perf_counter() - t0
        if not face_frames:
            raise NoFaceError(f"no face found in {req.input} (checked {n} frame{'s' if n != 1 else ''} with {processor.name})")
        if len(face_frames) < n:
            warnings.append(f"no face in {n - len(face_frames)} of {n} frames: those frames pass through unedited")
        if len(face_frames) / n < settings.min_face_frames:
            raise NoFaceError(f"a face was found in only {len(face_frames)} of {n} frames of {req.input}")
        keys = pick_keyframes(settings, req.sets.get("settings", {}), face_frames, track)

        # 2. align and encode, streamed to a memory-mapped file (cached per track and backbone)
        t0 = time.perf_counter()
        r = backbone.resolution
        k_lat = stage_key(stage="latents", track=k_track, backbone=backbone.identity(), resolution=r, batch=settings.batch_size, v=1)
        folder = cache.find_dir("latents", k_lat, ("latents.npy", "matrices.npy"))
        if folder is not None:
            reused.append("encode")
        else:
            tmp = cache.new_dir("latents", k_lat)
            encode_faces(processor, backbone, source, n, track, face_frames, settings.batch_size, tmp, req.show_progress)
            folder = cache.commit_dir(tmp, "latents", k_lat)
        latents = np.load(folder / "latents.npy", mmap_mode="r")
        matrices = np.load(folder / "matrices.npy")
        timings["align_encode"] = time.perf_counter() - t0

        # 3. edit: the strategy's global stage (keyframes), then chunk by chunk
        embeds = {"empty": backbone.encode_prompt([""]), "target": backbone.encode_prompt([target_prompt]),
                  "uncond": backbone.encode_prompt([settings.guidance_prompt])}
        stage_info: dict[str, Any] = {}
        run = _Strategy(settings, comps, backbone, latents, keys, embeds, req, timings, stage_info, cache, reused, face_frames)
        run.prepare()

        # 4. chunk by chunk: edited latents of the chunk's face frames, decode, paste back, write
        pos = {f: k for k, f in enumerate(face_frames)}
        strip_src: list[np.ndarray] = []
        strip_edit: list[np.ndarray] = []
        strip_keys = {face_frames[k] for k in keys[:8]}
        audio = info.path if info.kind == "video" and info.has_audio else None
        as_image = out.suffix.lower() in IMAGE_EXTS
        writer = None if as_image else VideoWriter(out, info.fps_fraction, info.width, info.height, audio_from=audio, overwrite=True,
                                                   timestamps=info.timestamps[:n] if info.variable_frame_rate and len(info.timestamps or []) >= n else None,
                                                   time_base=info.time_base)
        chunk = settings.chunk_frames
        try:
            with progress_bar("render", n, req.show_progress) as bar:
                for a in range(0, n, chunk):
                    b = min(n, a + chunk)
                    rows = [pos[i] for i in range(a, b) if i in pos]
                    edited_crops = None
                    if rows:
                        z = run.chunk(rows)
                        with _Timer(timings, "decode"):
                            edited_crops = np.concatenate([_to_uint8(backbone.decode_latents(z[s:s + settings.batch_size]).cpu())
                                                           for s in range(0, len(rows), settings.batch_size)])
                    with _Timer(timings, "paste_write"):
                        for s in range(a, b, source.batch):
                            frames = source.get(list(range(s, min(b, s + source.batch))))
                            result = frames.copy()
                            for j, f in enumerate(frames):
                                i = s + j
                                if i in pos:
                                    crop = edited_crops[pos[i] - rows[0]]
                                    result[j] = processor.paste_back(f, crop, matrices[pos[i]])
                                    if i in strip_keys:
                                        strip_src.append(processor.align(f, track[i], r).crop)
                                        strip_edit.append(crop.copy())  # a view would keep the chunk's array alive
                            if writer is not None:
                                writer.write(result)
                            else:
                                ok, buf = cv2.imencode(out.suffix, cv2.cvtColor(result[0], cv2.COLOR_RGB2BGR))
                                _write_atomic(out, buf.tobytes())
                            bar.advance(len(frames))
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    finally:
        if run is not None:
            run.close()
        source.close()
        cache_report = {"enabled": cache.enabled}
        if cache.enabled:
            cache_report.update(prune(protect=cache.used))
        cache.close()

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
        "chunks": -(-n // settings.chunk_frames),
        "reused_stages": reused,
        "cache": _cache_report(cache_report),
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


def _cache_report(pruned: dict[str, Any]) -> dict[str, Any]:
    """The cache's state after the run's pruning: size and limit (bytes and MB), entries evicted."""
    out: dict[str, Any] = {"enabled": pruned["enabled"]}
    for k, name in (("bytes", "size"), ("limit", "limit"), ("freed", "freed")):
        if k in pruned:
            out[f"{name}_bytes"], out[f"{name}_mb"] = pruned[k], round(pruned[k] / 2 ** 20, 2)
    if "evicted" in pruned:
        out["evicted"] = pruned["evicted"]
    return out


class _Strategy:
    """How a pipeline's strategy turns source latents into edited latents: :meth:`prepare` runs the
    clip-wide stage (ip-facediff: invert and edit the keyframes, group by group, cached), :meth:`chunk`
    the edited latents of a run of consecutive face rows."""

    def __init__(self, settings: PipelineSettings, comps: dict[str, Any], backbone: Backbone, latents: np.ndarray, keys: list[int],
                 embeds: dict[str, torch.Tensor], req: EditRequest, timings: dict[str, float], stage_info: dict[str, Any], cache, reused: list[str],
                 face_frames: list[int]):
        self.face_frames = face_frames
        self.settings, self.comps, self.backbone, self.latents, self.keys = settings, comps, backbone, latents, keys
        self.embeds, self.req, self.timings, self.stage_info, self.cache, self.reused = embeds, req, timings, stage_info, cache, reused
        self.keyset = set(keys)
        self.edited_keys: dict[int, torch.Tensor] = {}

    def rows(self, rows: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.latents[rows]))

    def invert(self, lat: torch.Tensor) -> Inversion:
        """Invert ``lat`` with eps1 (the identity adapter), timed and reported."""
        with _Timer(self.timings, "invert"):
            self.backbone.set_adapter("identity")
            inv = self.comps["inverter"].invert(self.backbone, lat, self.embeds["empty"], self.req.steps, self.req.seed)
            if inv.extras.get("cache_file"):
                self.cache.used.add(Path(inv.extras["cache_file"]))  # this run's: not evicted by its own pruning
            # true when every inversion this run asked for came from the cache
            self.stage_info["inversion_cached"] = self.stage_info.get("inversion_cached", True) and bool(inv.extras.get("cached"))
        return inv

    def prepare(self) -> None:
        if self.settings.strategy != "ip-facediff":
            return
        from .cache import stage_key
        from .diffusion import hash_tensor

        editor, inverter, e = self.comps["editor"], self.comps["inverter"], self.embeds
        groups = keyframe_groups(self.keys, self.settings.keyframe_group)
        self.stage_info["keyframe_groups"] = len(groups)
        loaded = 0
        with progress_bar("keyframes", len(self.keys), self.req.show_progress) as bar:
            for g in groups:
                lat = self.rows(g)
                key = stage_key(stage="keyframe-edit", latents=hash_tensor(lat), embeds={k: hash_tensor(v) for k, v in e.items()},
                                editor=[editor.name, asdict(editor.params)], inverter=[inverter.name, {k: v for k, v in asdict(inverter.params).items() if k != "cache"}],
                                backbone=self.backbone.identity(), adapters=self.backbone.adapters, steps=self.req.steps, seed=self.req.seed, v=1)
                edited = self.cache.load_tensor("keyframe-edits", key)
                if edited is not None:
                    loaded += 1
                else:
                    inv = self.invert(lat)
                    with _Timer(self.timings, "edit_keyframes"):
                        edited = editor.edit(self.backbone, inv, e["target"], e["uncond"], e["empty"]).float().cpu()
                    self.cache.save_tensor("keyframe-edits", key, edited)
                for row, value in zip(g, edited):
                    self.edited_keys.setdefault(row, value)  # an anchor keeps its first group's edit
                bar.advance(len(g) if g is groups[0] else len(g) - 1)
        if loaded == len(groups):
            self.reused.append("keyframe_edit")
        with _Timer(self.timings, "propagate"):
            self.stats = self._key_stats()

    def _eps1(self, rows: list[int]) -> torch.Tensor:
        from .diffusion import decoder_token_features

        self.backbone.set_adapter("identity")
        try:
            return decoder_token_features(self.backbone, self.rows(rows), self.settings.propagation_timestep, self.embeds["empty"], self.req.seed,
                                          self.settings.batch_size)
        finally:
            self.backbone.set_adapter(None)

    def _features(self, rows: list[int]) -> torch.Tensor:
        """The propagator's source features of ``rows``: their latents, or eps1's decoder features
        (keyframes' from the on-disk store written by :meth:`_key_stats`, the others computed)."""
        if self.settings.propagation_source != "eps1":
            return self.rows(rows)
        others = [r for r in rows if r not in self.key_pos]
        computed = dict(zip(others, self._eps1(others))) if others else {}
        return torch.stack([torch.from_numpy(np.array(self.key_features[self.key_pos[r]])) if r in self.key_pos else computed[r] for r in rows])

    def _key_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the keyframes' token features: one normalisation for every
        chunk, so chunked propagation equals whole-clip propagation. eps1 features of the keyframes
        are kept in a memory-mapped file (each chunk needs its border keyframes' again)."""
        total, total_sq, count = None, None, 0
        bs = self.settings.batch_size
        self.key_pos = {k: i for i, k in enumerate(self.keys)}
        for s in range(0, len(self.keys), bs):
            f = self._eps1(self.keys[s:s + bs]) if self.settings.propagation_source == "eps1" else self.rows(self.keys[s:s + bs])
            if self.settings.propagation_source == "eps1":
                if s == 0:
                    fd, name = tempfile.mkstemp(dir=self.cache.root / "latents", prefix=".key-features.", suffix=".part")  # cleared if left by a kill
                    os.close(fd)
                    self.key_features_file = Path(name)
                    self.key_features = np.lib.format.open_memmap(name, mode="w+", dtype=np.float16, shape=(len(self.keys), *f.shape[1:]))
                self.key_features[s:s + f.shape[0]] = f.half().numpy()
            f = f.double()
            total = f.sum(dim=(0, 2, 3)) + (0 if total is None else total)
            total_sq = (f * f).sum(dim=(0, 2, 3)) + (0 if total_sq is None else total_sq)
            count += f.shape[0] * f.shape[2] * f.shape[3]
        mean = total / count
        var = (total_sq - count * mean * mean) / max(count - 1, 1)
        return mean.float(), var.clamp_min(0).sqrt().float()

    def close(self) -> None:
        """Remove the temporary keyframe-feature store."""
        if getattr(self, "key_features_file", None) is not None:
            self.key_features = None
            self.key_features_file.unlink(missing_ok=True)

    def chunk(self, rows: list[int]) -> torch.Tensor:
        strategy, e, bs = self.settings.strategy, self.embeds, self.settings.batch_size
        editor = self.comps.get("editor")
        if strategy == "ip-facediff":
            with _Timer(self.timings, "propagate"):
                sub, sub_keys, first = chunk_with_borders(rows, self.keys)  # the keyframes on both sides take part
                prop = self.comps["propagator"]
                accepts = inspect.signature(prop.propagate).parameters
                kwargs = {k: v for k, v in (("stats", self.stats), ("frames", [self.face_frames[r] for r in sub])) if k in accepts}
                out = prop.propagate(self._features(sub), sub_keys, torch.stack([self.edited_keys[sub[p]] for p in sub_keys]), **kwargs)
                out = out[first:first + len(rows)].float()
                if self.settings.refine_steps > 0:
                    others = [p for p, r in enumerate(rows) if r not in self.keyset]
                    for s in range(0, len(others), bs):
                        ps = others[s:s + bs]
                        out[ps] = _refine(self.backbone, out[ps], e["target"], e["uncond"], self.settings, editor,
                                          [self.req.seed + rows[p] for p in ps])
            return out
        inv = self.invert(self.rows(rows))
        if strategy in ("per-frame", "sdedit"):
            outs = []
            with _Timer(self.timings, "edit_frames"):
                for s in range(0, len(rows), bs):
                    sel = list(range(s, min(len(rows), s + bs)))
                    outs.append(editor.edit(self.backbone, inv.select(sel), e["target"], e["uncond"], e["empty"]).float().cpu())
            return torch.cat(outs)
        if strategy == "tokenflow":
            # TokenFlow denoises the frames of one chunk together (how its users split long clips);
            # its keyframes are the clip's keyframes inside the chunk
            local = [p for p, r in enumerate(rows) if r in self.keyset] or [len(rows) // 2]
            guidance = getattr(editor.params, "guidance_scale", 7.5) if editor is not None else 7.5
            with _Timer(self.timings, "denoise_all"):
                return tokenflow_denoise(self.backbone, inv, local, e["target"], e["uncond"], guidance, False).float()
        raise ParameterError(f"unknown strategy {strategy!r}")


def _refine(backbone: Backbone, x0: torch.Tensor, target: torch.Tensor, uncond: torch.Tensor, settings: PipelineSettings, editor,
            seeds: list[int]) -> torch.Tensor:
    """A few low-noise denoising steps (eps2, target prompt, CFG) on propagated latents; each row's
    noise comes from its own seed (so the result does not depend on how frames are chunked)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(backbone.scheduler_config)
    total = max(settings.refine_steps, round(settings.refine_steps / max(settings.refine_strength, 1e-3)))
    sched.set_timesteps(total)
    ts = [int(t) for t in sched.timesteps][-settings.refine_steps:]
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = sched.add_noise(x0.float(), noise, torch.tensor([ts[0]])).to(backbone.device)
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
