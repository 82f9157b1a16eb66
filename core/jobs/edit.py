"""The edit job: a face video and a prompt in, the edited video out (same length, fps, size, audio).

Stages (each timed, each with a progress bar): detect and track the face (cached), align crops at the
backbone's resolution and encode them to latents (streamed to a memory-mapped cache entry), then the
pipeline's *strategy* (a plugin: ``ip-facediff``, ``per-frame``, ``sdedit``, ``tokenflow``, ...) runs its
clip-wide stage and renders the edited latents chunk by chunk; each chunk is decoded, pasted back into
its frames and written. Beside the video: a strip of source vs edited keyframes (PNG) and a JSON
report (UNet evaluations by stage, timings, peak memory, cache use, warnings).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import torch

from ipfacediff.errors import InputError, NoFaceError, ParameterError
from ipfacediff.interfaces import Backbone, EditRun, FaceDetection, FaceProcessor, Inversion
from ipfacediff.jobs.common import Timings, build_slot, check_sets, collect_warnings, count_vae, peak_memory_mb, resolve_backbone
from ipfacediff.params import validate_params
from ipfacediff.registry import PipelineEntry, PipelineSettings, Registry
from ipfacediff.runtime.cache import StageCache, hash_tensor, input_fingerprint, prune, stage_key
from ipfacediff.runtime.diffusers_backbone import RANDOM_BACKBONE_NOTE as RANDOM_NOTE
from ipfacediff.runtime.face import aligned_faces, detect_track, track_from_arrays, track_to_arrays
from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.frames import caption, fade_outside, make_strip, to_tensor, to_uint8
from ipfacediff.runtime.keyframes import select_keyframes
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.video import IMAGE_EXTS, check_output, check_size, is_sequence_output, open_frames, open_writer

REAL_EDIT_HINT = ("for a real edit give a Stable Diffusion checkpoint: --backbone stable-diffusion --set backbone.path=DIR "
                  "(or IPFACEDIFF_SD_MODEL); `ipfacediff doctor` says what is found")


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
    sequence: bool | None = None  # output numbered PNG frames into the folder ``output``; None: when it ends with / or is a folder


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
    latents = [backbone.encode_images(to_tensor(crops[s:s + batch_size])).cpu() for s in range(0, len(face_frames), batch_size)]
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


class SourceLatents:
    """The source latents of every face frame ("row"), encoded on first use.

    Indexed like the ``float32 [F, C, h, w]`` array it stands for (``latents[rows]``): rows not
    encoded yet are read, aligned and encoded (``batch`` at a time) first, so a strategy that only
    reads its keyframes' latents (pixel-space propagation) never pays for the other frames' VAE
    encodes. The latents live in a memory-mapped ``latents.npy`` in a cache folder with a mask of
    the rows encoded (``encoded.npy``, set after the latents are flushed: a killed run re-encodes
    at most the batch it was writing, and a later run finds the rest).
    """

    def __init__(self, folder: Path, n_rows: int, encode: Callable[[list[int]], np.ndarray], batch: int, show: bool):
        self.folder, self.n, self._encode, self.batch, self.show = folder, n_rows, encode, batch, show
        self.encoded_now = 0  # rows this run encoded
        self.data = np.load(folder / "latents.npy", mmap_mode="r+")
        self.done = np.load(folder / "encoded.npy", mmap_mode="r+")

    @classmethod
    def create(cls, folder: Path, n_rows: int, encode: Callable[[list[int]], np.ndarray]) -> None:
        """Write an entry's files into ``folder``: row 0 encoded (its shape sizes the file), the rest to do."""
        z = encode([0])
        data = np.lib.format.open_memmap(folder / "latents.npy", mode="w+", dtype=np.float32, shape=(n_rows, *z.shape[1:]))
        data[0] = z[0]
        data.flush()
        done = np.lib.format.open_memmap(folder / "encoded.npy", mode="w+", dtype=bool, shape=(n_rows,))
        done[0] = True
        done.flush()
        del data, done  # closes the memory maps

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __len__(self) -> int:
        return self.n

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.atleast_1d(np.arange(self.n)[index])
        missing = [int(r) for r in np.unique(rows) if not self.done[r]]
        if missing:
            with progress_bar("encode", len(missing), self.show and len(missing) > self.batch) as bar:
                for s in range(0, len(missing), self.batch):
                    part = missing[s:s + self.batch]
                    self.data[part] = self._encode(part)
                    self.data.flush()
                    self.done[part] = True
                    self.done.flush()
                    self.encoded_now += len(part)
                    bar.advance(len(part))
        return self.data[index]


@dataclass
class _Plan:
    """What the request asks for, checked before any model is built."""

    settings: PipelineSettings
    edits: list[str]
    target_prompt: str
    info: Any
    output: Path
    frames: int
    sequence: bool = False


def plan_edit(req: EditRequest) -> _Plan:
    """Validate the request: steps, frames, ``--set``, settings, prompt, input and output."""
    pipeline = req.pipeline
    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    if req.max_frames is not None and req.max_frames < 1:
        raise ParameterError(f"--max-frames {req.max_frames}: must be at least 1")
    check_sets(req.sets, pipeline, "pipeline")
    settings = validate_params(PipelineSettings, {**asdict(pipeline.settings), **req.sets.get("settings", {})}, f"pipeline {pipeline.name} settings")
    if "strategy" not in pipeline.components:
        raise ParameterError(f"pipeline {pipeline.name!r} has no strategy; name one (e.g. strategy: ip-facediff) to edit with it")
    edits, target = ([], settings.source_prompt) if req.null_edit else parse_prompt(req.prompt, settings.source_prompt)
    info = open_frames(req.input).info  # validates the input before anything is built
    check_size(info, settings.max_input_side)
    out = req.output or Path.cwd() / (f"{req.input.stem}-edited" + (".png" if info.kind == "image" else ".mp4"))
    sequence = req.sequence if req.sequence is not None else is_sequence_output(out)
    out = check_output(out, req.overwrite, [req.input])
    n = info.n_frames if req.max_frames is None else min(info.n_frames, req.max_frames)
    if out.suffix.lower() in IMAGE_EXTS and n != 1 and not sequence:
        raise InputError(f"{out}: an image output needs a one-frame input; use .mp4 for {n} frames, or a folder (ending with /) for PNG frames")
    return _Plan(settings, edits, target, info, out, n, sequence)


def build_components(req: EditRequest, device: torch.device) -> tuple[dict[str, Any], Backbone, list[str]]:
    """The pipeline's components (``--face-processor`` replaces its face processor) and the backbone."""
    comps = {slot: build_slot(req.pipeline, slot, req.sets, device) for slot in req.pipeline.components
             if slot != "identity_encoder" and not (slot == "face_processor" and req.face_processor)}
    if req.face_processor:
        from ipfacediff.catalog import get_catalog

        comps["face_processor"] = get_catalog().build("face_processor", req.face_processor, req.sets.get("face_processor", {}),
                                                      "--face-processor").to(device)
    backbone, warnings = resolve_backbone(req.backbone, req.sets, req.registry, req.pipeline.backbone)
    backbone.to(device)
    backbone.unet_evals.clear()
    return comps, backbone, warnings


def detect_stage(req: EditRequest, plan: _Plan, processor: FaceProcessor, source, cache: StageCache, reused: list[str],
                 warnings: list[str]) -> tuple[str, list[FaceDetection | None], list[int], list[int]]:
    """Detect and track (cached per clip, processor and smoothing); the face frames and keyframe rows."""
    n, settings = plan.frames, plan.settings
    key = stage_key(stage="track", input=input_fingerprint(req.input), frames=n, processor=processor.name,
                    params=asdict(processor.params), smoothing=settings.landmark_smoothing, v=1)
    cached = cache.load_npz("tracks", key)
    if cached is not None:
        track = track_from_arrays(cached)
        reused.append("detect")
    else:
        track = detect_track(processor, source, n, settings.landmark_smoothing, req.show_progress)
        cache.save_npz("tracks", key, **track_to_arrays(track))
    face_frames = [i for i, d in enumerate(track) if d is not None]
    if not face_frames:
        raise NoFaceError(f"no face found in {req.input} (checked {n} frame{'s' if n != 1 else ''} with {processor.name})")
    if len(face_frames) < n:
        warnings.append(f"no face in {n - len(face_frames)} of {n} frames: those frames pass through unedited")
    if len(face_frames) / n < settings.min_face_frames:
        raise NoFaceError(f"a face was found in only {len(face_frames)} of {n} frames of {req.input}")
    return key, track, face_frames, pick_keyframes(settings, req.sets.get("settings", {}), face_frames, track)


def encode_stage(req: EditRequest, plan: _Plan, processor: FaceProcessor, backbone: Backbone, source, track_key: str, track,
                 face_frames: list[int], cache: StageCache, reused: list[str], timings: Timings) -> tuple[SourceLatents, np.ndarray]:
    """Align every face frame (the matrices paste-back needs) and open the source latents, encoded on
    first use (:class:`SourceLatents`), in a cache entry per track and backbone: a re-edit of the
    clip encodes no frame twice."""
    bs, r = plan.settings.batch_size, backbone.resolution
    key = stage_key(stage="latents", track=track_key, backbone=backbone.identity(), resolution=r, v=3)

    def encode(rows: list[int]) -> np.ndarray:
        with timings("encode"):
            frames = source.get([face_frames[i] for i in rows])
            crops = [processor.align(f, track[face_frames[i]], r).crop for f, i in zip(frames, rows)]
            # one frame per VAE call: a conv's last bits depend on the batch it runs in, and which rows
            # share a batch depends on what was asked first (keyframes, all frames, another job), so
            # batching would make a frame's latent depend on the cache's history (one call per frame
            # also measured no slower on CPU: TAESD 512 px, 8 frames 8.8 s vs 10.2 s batched)
            return np.concatenate([backbone.encode_images(to_tensor(c[None])).float().cpu().numpy() for c in crops])

    folder = cache.find_dir("latents", key, ("latents.npy", "encoded.npy", "matrices.npy"))
    if folder is not None:
        reused.append("encode")  # taken back if this run has to encode a frame
    else:
        tmp = cache.new_dir("latents", key)
        with timings("align"):
            matrices = np.zeros((len(face_frames), 2, 3))
            for row, a in aligned_faces(processor, source, plan.frames, track, face_frames, r, req.show_progress):
                matrices[row] = a.matrix
            np.save(tmp / "matrices.npy", matrices)
        SourceLatents.create(tmp, len(face_frames), encode)
        folder = cache.commit_dir(tmp, "latents", key)
    return SourceLatents(folder, len(face_frames), encode, bs, req.show_progress), np.load(folder / "matrices.npy")


def make_run(req: EditRequest, plan: _Plan, comps: dict[str, Any], backbone: Backbone, latents: np.ndarray, keys: list[int],
             face_frames: list[int], cache: StageCache, timings: Timings, reused: list[str], source, track) -> EditRun:
    """The strategy's view of the edit, with the job's cached inversion and cached stages."""
    embeds = {"empty": backbone.encode_prompt([""]), "target": backbone.encode_prompt([plan.target_prompt]),
              "uncond": backbone.encode_prompt([plan.settings.guidance_prompt])}
    report: dict[str, Any] = {}

    def cached(category: str, parts: dict[str, Any], compute) -> torch.Tensor:
        key = stage_key(stage=category, backbone=backbone.identity(), adapters=backbone.adapters, steps=req.steps, seed=req.seed, **parts) \
            if cache.enabled else ""
        value = cache.load_tensor(category, key) if cache.enabled else None
        if value is None:
            value = compute()
            if cache.enabled:
                cache.save_tensor(category, key, value)
        return value

    def invert(lat: torch.Tensor) -> Inversion:
        inverter = comps["inverter"]
        hit = True

        def compute() -> dict[str, Any]:
            nonlocal hit
            hit = False
            inv = inverter.invert(backbone, lat, embeds["empty"], req.steps, req.seed)
            return {"timesteps": inv.timesteps, "denoise_timesteps": inv.denoise_timesteps, "trajectory": torch.stack(inv.trajectory),
                    "steps": inv.steps, "extras": inv.extras}

        with timings("invert"):
            backbone.set_adapter("identity")
            parts = {"inverter": [inverter.name, asdict(inverter.params)], "adapter": backbone.active_adapter,
                     "latents": hash_tensor(lat) if cache.enabled else "", "prompt": hash_tensor(embeds["empty"]) if cache.enabled else ""}
            d = cached("inversions", parts, compute)
            report["inversion_cached"] = report.get("inversion_cached", True) and hit  # every inversion came from the cache
        return Inversion(d["timesteps"], list(d["trajectory"].unbind(0)), d["denoise_timesteps"], d["steps"], d["extras"])

    def crops(rows) -> np.ndarray:
        frames = source.get([face_frames[r] for r in rows])
        return np.stack([comps["face_processor"].align(f, track[face_frames[r]], backbone.resolution).crop for f, r in zip(frames, rows)])

    scratch = cache.new_dir("latents", "scratch")  # hidden .part folder: cleared by the cache if a kill leaves it
    return EditRun(backbone, comps, plan.settings, latents, keys, face_frames, embeds, req.steps, req.seed, req.show_progress,
                   invert, cached, timings, scratch, report, reused, crops)


def render_stage(req: EditRequest, plan: _Plan, run: EditRun, strategy, processor: FaceProcessor, source, track, matrices: np.ndarray,
                 timings: Timings) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Chunk by chunk: the strategy's edited latents of the chunk's face frames, decoded, pasted back
    and written (a video, or an image for one frame). Returns the strip's source and edited crops."""
    n, settings, info, out = plan.frames, plan.settings, plan.info, plan.output
    backbone, r = run.backbone, run.backbone.resolution
    pos = {f: k for k, f in enumerate(run.face_frames)}
    strip_keys = {run.face_frames[k] for k in run.keys[:8]}
    strip: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    writer = None
    if plan.sequence or out.suffix.lower() not in IMAGE_EXTS:
        audio = info.path if info.kind == "video" and info.has_audio else None
        writer = open_writer(out, info, n, overwrite=True, audio_from=audio, inputs=[req.input], sequence=plan.sequence)
    try:
        with progress_bar("render", n, req.show_progress) as bar:
            for a in range(0, n, settings.chunk_frames):
                b = min(n, a + settings.chunk_frames)
                rows = [pos[i] for i in range(a, b) if i in pos]
                crops = None
                if rows:
                    z = strategy.render(run, rows)
                    if isinstance(z, np.ndarray):  # edited crops (pixel-space propagation): no VAE
                        crops = z
                    else:
                        with timings("decode"):
                            crops = np.concatenate([to_uint8(backbone.decode_latents(z[s:s + settings.batch_size]))
                                                    for s in range(0, len(rows), settings.batch_size)])
                with timings("paste_write"):
                    for s in range(a, b, source.batch):
                        frames = source.get(list(range(s, min(b, s + source.batch))))
                        result = frames.copy()
                        for j, f in enumerate(frames):
                            if s + j in pos:
                                crop = crops[pos[s + j] - rows[0]]
                                result[j] = processor.paste_back(f, crop, matrices[pos[s + j]])
                                if s + j in strip_keys:  # outside the frame shown faded, not as the reflected border the model saw
                                    m = matrices[pos[s + j]]
                                    strip[0].append(fade_outside(processor.align(f, track[s + j], r).crop, m, f.shape))
                                    strip[1].append(fade_outside(crop, m, f.shape))  # a copy: a view would keep the chunk alive
                        if writer is not None:
                            writer.write(result)
                        else:
                            write_atomic(out, cv2.imencode(out.suffix, cv2.cvtColor(result[0], cv2.COLOR_RGB2BGR))[1].tobytes())
                        bar.advance(len(frames))
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return strip


@dataclass
class EditSession:
    """What :func:`edit_session` set up: the built pipeline, the source, the face track and the
    strategy's run, its clip-wide stage (``prepare``: the keyframe edit) done."""

    plan: _Plan
    device: torch.device
    comps: dict[str, Any]
    backbone: Backbone
    source: Any
    track: list
    matrices: np.ndarray
    run: EditRun
    timings: Timings
    warnings: list[str]
    reused: list[str]
    t_start: float
    pruned: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def edit_session(req: EditRequest, plan: _Plan) -> Iterator[EditSession]:
    """Build, detect, encode and run the strategy's clip-wide stage; inside, the caller renders (the
    edit) or looks at the keyframes (the preview). Finished stages are kept in the cache
    (``req.cache``); warnings that components raise are collected; everything is closed on exit."""
    t_start = time.perf_counter()
    timings, warnings, reused = Timings(), [], []
    device = torch.device(req.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the report's peak is this edit's, not the process's
    torch.manual_seed(req.seed)
    comps, backbone, bw = build_components(req, device)
    count_vae(backbone)
    warnings += bw
    strategy, processor = comps["strategy"], comps["face_processor"]
    timings["load_models"] = time.perf_counter() - t_start
    cache, run = StageCache(enabled=req.cache), None
    source = open_frames(req.input)
    session = None
    try:
        with collect_warnings(warnings):  # what components say (EditWarning): in the report and on the terminal
            with timings("detect"):
                track_key, track, face_frames, keys = detect_stage(req, plan, processor, source, cache, reused, warnings)
            latents, matrices = encode_stage(req, plan, processor, backbone, source, track_key, track, face_frames, cache, reused, timings)
            run = make_run(req, plan, comps, backbone, latents, keys, face_frames, cache, timings, reused, source, track)
            if "editor" in comps:
                comps["editor"].check(backbone)  # its warnings hold for edits taken from the cache too
            strategy.prepare(run)
            session = EditSession(plan, device, comps, backbone, source, track, matrices, run, timings, warnings, reused, t_start)
            yield session
        if latents.encoded_now and "encode" in reused:
            reused.remove("encode")
    finally:
        strategy.close()
        if run is not None:
            shutil.rmtree(run.scratch, ignore_errors=True)
        source.close()
        pruned = {"enabled": cache.enabled, **(prune(protect=cache.used) if cache.enabled else {})}
        if session is not None:
            session.pruned = pruned
        cache.close()


def run_edit(req: EditRequest) -> dict[str, Any]:
    """Edit ``req.input``: plan, build, detect, encode, the strategy's clip-wide stage, render chunk by
    chunk, then the strip and the report. Finished stages are kept in the cache (``req.cache``), so an
    interrupted run resumes after them and a re-edit of the same clip skips detection and encoding."""
    plan = plan_edit(req)
    with edit_session(req, plan) as s:  # (its warnings are collected while inside)
        strip = render_stage(req, plan, s.run, s.comps["strategy"], s.comps["face_processor"], s.source, s.track, s.matrices, s.timings)
    return write_report(req, plan, s.comps, s.backbone, s.run, strip, s.timings, s.warnings, s.pruned, s.t_start, s.device)


def write_strip(path: Path, rows: list[list[np.ndarray]], backbone: Backbone) -> None:
    """A picture of crop rows (PNG, atomically); with a random-weight backbone it says so on the
    picture itself, with how to run a real edit (the first thing a new user looks at)."""
    img = make_strip(rows, height=min(256, backbone.resolution))
    if backbone.is_random:
        img = caption(img, [f"RANDOM WEIGHTS ({backbone.name} backbone): {RANDOM_NOTE.split(': ', 1)[-1]}.", REAL_EDIT_HINT])
    write_atomic(path, cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())


def write_report(req: EditRequest, plan: _Plan, comps: dict[str, Any], backbone: Backbone, run: EditRun, strip, timings: Timings,
                 warnings: list[str], pruned: dict[str, Any], t_start: float, device: torch.device) -> dict[str, Any]:
    """The strip (source vs edited keyframe crops) and the JSON report beside the output."""
    out, n, settings = plan.output, plan.frames, plan.settings
    strip_path = out.with_name(out.stem + ".strip.png")
    write_strip(strip_path, [strip[0], strip[1]], backbone)
    evals = dict(backbone.unet_evals)
    if backbone.is_random:
        warnings.append(f"{RANDOM_NOTE}; {REAL_EDIT_HINT}")
    report = {
        "job": "edit", "input": plan.info.to_json(), "output": str(out), "strip": str(strip_path), "prompt": req.prompt,
        "edits": plan.edits, "target_prompt": plan.target_prompt, "pipeline": req.pipeline.name, "strategy": comps["strategy"].name,
        "components": {slot: {"component": c.name, "params": asdict(c.params)} for slot, c in comps.items()},
        "settings": asdict(settings),
        "backbone": {"name": backbone.name, "random_weights": backbone.is_random, "resolution": backbone.resolution,
                     "adapters": backbone.adapters, "params": asdict(backbone.params)},
        "seed": req.seed, "steps": req.steps, "frames": n, "frames_edited": len(run.face_frames),
        "frames_passed_through": n - len(run.face_frames), "keyframes": [run.face_frames[k] for k in run.keys],
        "chunks": -(-n // settings.chunk_frames), "reused_stages": run.reused, "cache": _cache_report(pruned),
        "unet_evaluations": {"by_stage": evals, "total": sum(evals.values()), "per_output_frame": sum(evals.values()) / n},
        "vae_evaluations": {**backbone.vae_evals, "per_output_frame": sum(backbone.vae_evals.values()) / n},
        **run.report,
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total": time.perf_counter() - t_start}.items()},
        "peak_memory_mb": round(peak_memory_mb(device), 1), "device": str(device), "warnings": warnings,
    }
    json_path = out.with_name(out.stem + ".json")
    write_atomic(json_path, json.dumps(report, indent=2, default=str))
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
