"""The edit job: a face video and a prompt in, the edited video out (same length, fps, size, audio).

One object, :class:`EditJob`, holds the run: the request's plan, the built components, the source,
the face track, the source latents, the caches, the timings and the report; it is also the
:class:`~ipfacediff.interfaces.EditRun` the pipeline's strategy sees. The job reads as its steps::

    with EditJob(req) as job:
        job.build()      # components and the backbone
        job.detect()     # face track (cached) and keyframes
        job.encode()     # alignment matrices; source latents, encoded on first use (cached)
        job.prepare()    # prompts; the strategy's clip-wide stage (e.g. the keyframe edit)
        strip = job.render()   # chunk by chunk: edited crops, pasted back and written
    report = job.write_report(strip)

Each stage is timed and shows a progress bar; beside the video go a strip of source vs edited
keyframes (PNG) and a JSON report (UNet evaluations by stage, timings, peak memory, cache use,
warnings). ``preview`` runs the same steps up to ``prepare``; the ComfyUI nodes build the same
object from IMAGE tensors.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ipfacediff.errors import InputError, ParameterError
from ipfacediff.interfaces import Backbone, EditRun, FaceDetection, Inversion
from ipfacediff.jobs.clip import ClipJob
from ipfacediff.jobs.common import count_vae, resolve_backbone
from ipfacediff.registry import PipelineEntry, PipelineSettings, Registry
from ipfacediff.runtime.cache import hash_tensor, stage_key
from ipfacediff.runtime.diffusers_backbone import RANDOM_BACKBONE_NOTE as RANDOM_NOTE
from ipfacediff.runtime.face import aligned_faces
from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.frames import caption, fade_outside, make_strip, to_tensor, to_uint8
from ipfacediff.runtime.keyframes import select_keyframes
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.video import IMAGE_EXTS, check_output, check_size, is_sequence_output, open_frames, open_writer

REAL_EDIT_HINT = (
    "for a real edit give a Stable Diffusion checkpoint: --backbone stable-diffusion --set backbone.path=DIR "
    "(or IPFACEDIFF_SD_MODEL); `ipfacediff doctor` says what is found"
)


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
    sequence: bool | None = (
        None  # output numbered PNG frames into the folder ``output``; None: when it ends with / or is a folder
    )


def pick_keyframes(
    settings: PipelineSettings, asked: dict[str, Any], face_frames: list[int], track: list[FaceDetection | None]
) -> list[int]:
    """Keyframe rows (into ``face_frames``) by the pipeline's settings; on a clip shorter than the
    pipeline's default interval / count (not asked for explicitly) the clip gets one / all."""
    interval, count = settings.keyframe_interval, settings.keyframe_count
    if "keyframe_interval" not in asked:
        interval = min(interval, len(face_frames))
    if "keyframe_count" not in asked:
        count = min(count, len(face_frames))
    return select_keyframes(
        len(face_frames), settings.keyframe_method, interval, count, [track[i] for i in face_frames]
    )


def parse_prompt(prompt: str, source_prompt: str) -> tuple[list[str], str]:
    """``"eyeglasses, beard"`` -> (edits, target prompt ``"<source>, eyeglasses, beard"``)."""
    edits = [p.strip() for p in (prompt or "").split(",") if p.strip()]
    if not edits:
        raise ParameterError(
            'the prompt is empty; say what to change, e.g. -p "eyeglasses" or -p "blonde hair, beard"'
        )
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
        data = np.lib.format.open_memmap(
            folder / "latents.npy", mode="w+", dtype=np.float32, shape=(n_rows, *z.shape[1:])
        )
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
                    part = missing[s : s + self.batch]
                    self.data[part] = self._encode(part)
                    self.data.flush()
                    self.done[part] = True
                    self.done.flush()
                    self.encoded_now += len(part)
                    bar.advance(len(part))
        return self.data[index]


@dataclass
class Plan:
    """What the request asks for, checked before any model is built."""

    settings: PipelineSettings
    edits: list[str]
    target_prompt: str
    info: Any  # the input's VideoInfo (None: frames given in memory)
    output: Path | None
    frames: int
    sequence: bool = False


def plan_edit(req: EditRequest) -> Plan:
    """Validate the request: steps, frames, ``--set``, settings, prompt, input and output."""
    pipeline = req.pipeline
    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    checker = ClipJob(pipeline, req.sets, input=req.input, max_frames=req.max_frames)
    settings = checker.check_request()
    if "strategy" not in pipeline.components:
        raise ParameterError(
            f"pipeline {pipeline.name!r} has no strategy; name one (e.g. strategy: ip-facediff) to edit with it"
        )
    edits, target = ([], settings.source_prompt) if req.null_edit else parse_prompt(req.prompt, settings.source_prompt)
    with open_frames(req.input) as src:  # validates the input before anything is built
        info = src.info
    check_size(info, settings.max_input_side)
    out = req.output or Path.cwd() / (f"{req.input.stem}-edited" + (".png" if info.kind == "image" else ".mp4"))
    sequence = req.sequence if req.sequence is not None else is_sequence_output(out)
    out = check_output(out, req.overwrite, [req.input])
    n = info.n_frames if req.max_frames is None else min(info.n_frames, req.max_frames)
    if out.suffix.lower() in IMAGE_EXTS and n != 1 and not sequence:
        raise InputError(
            f"{out}: an image output needs a one-frame input; use .mp4 for {n} frames, or a folder (ending with /) "
            "for PNG frames"
        )
    return Plan(settings, edits, target, info, out, n, sequence)


def plan_stages(req: EditRequest, frames: int | None = None) -> Plan:
    """A plan for running an edit's stages without writing an edit (no prompt, no output): the
    bench's latent propagation job and the ComfyUI nodes. ``frames``: the clip is given in memory
    with that many frames (no file to read)."""
    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    settings = ClipJob(req.pipeline, req.sets, input=req.input, max_frames=req.max_frames).check_request()
    edits, target = ([], settings.source_prompt) if req.null_edit else parse_prompt(req.prompt, settings.source_prompt)
    if frames is None:
        with open_frames(req.input) as src:
            info, frames = src.info, src.info.n_frames
    else:
        info = None
    n = frames if req.max_frames is None else min(frames, req.max_frames)
    return Plan(settings, edits, target, info, None, n)


class EditJob(ClipJob, EditRun):
    """One edit, its state in one object (see the module's docstring for its steps)."""

    job = "edit"

    def __init__(self, req: EditRequest, plan: Plan | None = None, frames: Any = None):
        """``frames``: the clip as a reader in memory instead of ``req.input`` (the ComfyUI nodes);
        then ``plan`` must be given (there is no file to plan from) and nothing is cached."""
        self.req = req
        self.plan = plan if plan is not None else plan_edit(req)
        super().__init__(
            req.pipeline,
            req.sets,
            input=None if frames is not None else req.input,
            frames=frames,
            max_frames=req.max_frames,
            device=req.device,
            cache=req.cache,
            show_progress=req.show_progress,
        )
        self.settings = self.plan.settings
        self.steps, self.seed = req.steps, req.seed
        self.report: dict[str, Any] = {}  # the strategy's facts for the report
        self.keys: list[int] = []
        self.scratch: Path | None = None
        self.strategy = None

    # ------------------------------------------------------------------------------ steps
    def build(self, backbone: Backbone | None = None, components: dict[str, Any] | None = None) -> None:
        """The pipeline's components (``--face-processor`` replaces its face processor) and the backbone
        (its UNet and VAE evaluations counted from here). ``backbone`` and ``components`` (by slot):
        ones already built (the ComfyUI nodes' loaded backbone and face processor) used as they are."""
        req = self.req
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # the report's peak is this edit's, not the process's
        torch.manual_seed(req.seed)
        self.components.update(components or {})
        slots = [s for s in req.pipeline.components if s != "identity_encoder" and s not in self.components]
        if req.face_processor:  # built last, as the catalog's own component with --set face_processor.* only
            slots = [s for s in slots if s != "face_processor"] + ["face_processor"]
        replace = (
            {"face_processor": ("face_processor", req.face_processor, "--face-processor")}
            if req.face_processor
            else {}
        )
        self.build_components(slots, replace)
        if backbone is None:
            backbone, warnings = resolve_backbone(req.backbone, req.sets, req.registry, req.pipeline.backbone)
            self.warnings += warnings
        self.backbone = backbone.to(self.device)
        self.backbone.unet_evals.clear()
        count_vae(self.backbone)
        self.strategy, self.processor = self.components["strategy"], self.components["face_processor"]
        if self.settings.keyframes == "adaptive" and not self.strategy.adaptive_keyframes:
            raise ParameterError(
                f"settings.keyframes=adaptive: the strategy {self.strategy.name!r} does not add keyframes by its "
                "self-check; use settings.keyframes=fixed or the ip-facediff strategy"
            )
        self.timings["load_models"] = time.perf_counter() - self.t_start
        self.open_source()

    def detect(self, track: list[FaceDetection | None] | None = None, keys: list[int] | None = None) -> None:
        """The face track (cached) and the keyframe rows by the pipeline's settings; ``track`` and
        ``keys``: a track and keyframes made elsewhere (the ComfyUI nodes) instead."""
        if track is None:
            super().detect(self.processor)
        else:
            self.track, self.face_frames = list(track), [i for i, d in enumerate(track) if d is not None]
        with self.timer("detect"):
            self.keys = list(keys) if keys is not None else self._pick_keyframes()

    def _pick_keyframes(self) -> list[int]:
        return pick_keyframes(self.settings, self.sets.get("settings", {}), self.face_frames, self.track)

    def encode(self) -> None:
        """Align every face frame (the matrices paste-back needs) and open the source latents, encoded
        on first use (:class:`SourceLatents`), in a cache entry per track and backbone: a re-edit of
        the clip encodes no frame twice."""
        bs, r, cache = self.settings.batch_size, self.backbone.resolution, self.cache
        key = stage_key(stage="latents", track=self.track_key, backbone=self.backbone.identity(), resolution=r, v=3)
        folder = (
            cache.find_dir("latents", key, ("latents.npy", "encoded.npy", "matrices.npy")) if self.track_key else None
        )
        if folder is not None:
            self.reused.append("encode")  # taken back if this run has to encode a frame
        else:
            tmp = cache.new_dir("latents", key if self.track_key else "in-memory")
            with self.timer("align"):
                matrices = np.zeros((len(self.face_frames), 2, 3))
                faces = aligned_faces(
                    self.processor, self.source, self.n, self.track, self.face_frames, r, self.show_progress
                )
                for row, a in faces:
                    matrices[row] = a.matrix
                np.save(tmp / "matrices.npy", matrices)
            SourceLatents.create(tmp, len(self.face_frames), self._encode_rows)
            folder = cache.commit_dir(tmp, "latents", key) if self.track_key else tmp
        self.latents = SourceLatents(folder, len(self.face_frames), self._encode_rows, bs, self.show_progress)
        self.matrices = np.load(folder / "matrices.npy")

    def _encode_rows(self, rows: list[int]) -> np.ndarray:
        with self.timer("encode"):
            # one frame per VAE call: a conv's last bits depend on the batch it runs in, and which rows
            # share a batch depends on what was asked first (keyframes, all frames, another job), so
            # batching would make a frame's latent depend on the cache's history (one call per frame
            # also measured no slower on CPU: TAESD 512 px, 8 frames 8.8 s vs 10.2 s batched)
            crops = self.crops(rows)
            return np.concatenate(
                [self.backbone.encode_images(to_tensor(c[None])).float().cpu().numpy() for c in crops]
            )

    def prepare(self) -> None:
        """The prompts' embeddings, the editor's check (its warnings hold for edits taken from the
        cache too) and the strategy's clip-wide stage (e.g. invert and edit the keyframes)."""
        bb = self.backbone
        self.embeds = {
            "empty": bb.encode_prompt([""]),
            "target": bb.encode_prompt([self.plan.target_prompt]),
            "uncond": bb.encode_prompt([self.settings.guidance_prompt]),
        }
        self.scratch = self.cache.new_dir("latents", "scratch")  # hidden .part folder: cleared if a kill leaves it
        if "editor" in self.components:
            self.components["editor"].check(bb)
        self.strategy.prepare(self)

    def render(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Chunk by chunk: the strategy's edited latents (or crops) of the chunk's face frames, decoded,
        pasted back and written (a video, PNG frames, or an image for one frame). Returns the strip's
        source and edited crops."""
        plan, settings, req = self.plan, self.settings, self.req
        n, out = plan.frames, plan.output
        pos = {f: k for k, f in enumerate(self.face_frames)}
        strip_keys = {self.face_frames[k] for k in self.keys[:8]}
        strip: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        writer = None
        if plan.sequence or out.suffix.lower() not in IMAGE_EXTS:
            info = plan.info
            audio = info.path if info.kind == "video" and info.has_audio else None
            writer = open_writer(
                out,
                info,
                n,
                overwrite=True,
                audio_from=audio,
                inputs=[req.input],
                sequence=plan.sequence,
                crf=settings.video_crf,
                preset=settings.video_preset,
            )
        try:
            with progress_bar("render", n, self.show_progress) as bar:
                for a in range(0, n, settings.chunk_frames):
                    b = min(n, a + settings.chunk_frames)
                    crops = self.edited_crops([pos[i] for i in range(a, b) if i in pos])
                    with self.timer("paste_write"):
                        for s in range(a, b, self.source.batch):
                            frames = self.source.get(list(range(s, min(b, s + self.source.batch))))
                            result = self.paste_back(s, frames, crops, pos, strip_keys, strip)
                            if writer is not None:
                                writer.write(result)
                            else:
                                png = cv2.imencode(out.suffix, cv2.cvtColor(result[0], cv2.COLOR_RGB2BGR))[1]
                                write_atomic(out, png.tobytes())
                            bar.advance(len(frames))
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return strip

    def edited_crops(self, rows: list[int]) -> dict[int, np.ndarray]:
        """The edited aligned crops of the consecutive face ``rows`` by row: the strategy's render,
        decoded when it gives latents (``batch_size`` at a time)."""
        if not rows:
            return {}
        z = self.strategy.render(self, rows)
        if isinstance(z, np.ndarray):  # edited crops (pixel-space propagation): no VAE
            crops = z
        else:
            bs = self.settings.batch_size
            with self.timer("decode"):
                decoded = [to_uint8(self.backbone.decode_latents(z[s : s + bs])) for s in range(0, len(rows), bs)]
                crops = np.concatenate(decoded)
        return {row: crops[k] for k, row in enumerate(rows)}

    def paste_back(self, first: int, frames: np.ndarray, crops: dict[int, np.ndarray], pos, strip_keys=(), strip=None):
        """``frames`` (clip frames from ``first`` on) with the edited crops pasted back (frames without a
        face pass through); keyframes in ``strip_keys`` add their source and edited crop to ``strip``."""
        result = frames.copy()
        r = self.backbone.resolution
        for j, f in enumerate(frames):
            i = first + j
            if i not in pos:
                continue
            crop, m = crops[pos[i]], self.matrices[pos[i]]
            result[j] = self.processor.paste_back(f, crop, m)
            if (
                strip is not None and i in strip_keys
            ):  # outside the frame faded, not the reflected border the model saw
                strip[0].append(fade_outside(self.processor.align(f, self.track[i], r).crop, m, f.shape))
                strip[1].append(fade_outside(crop, m, f.shape))  # a copy: a view would keep the chunk alive
        return result

    # ------------------------------------------------------------------------------ EditRun
    def crops(self, rows: Sequence[int]) -> np.ndarray:
        frames = self.source.get([self.face_frames[r] for r in rows])
        r = self.backbone.resolution
        return np.stack(
            [self.processor.align(f, self.track[self.face_frames[row]], r).crop for f, row in zip(frames, rows)]
        )

    def cached(self, category: str, parts: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        cache, bb = self.cache, self.backbone
        if not cache.enabled:
            return compute()
        key = stage_key(
            stage=category, backbone=bb.identity(), adapters=bb.adapters, steps=self.steps, seed=self.seed, **parts
        )
        value = cache.load_tensor(category, key)
        if value is None:
            value = compute()
            cache.save_tensor(category, key, value)
        return value

    def invert(self, latents: torch.Tensor) -> Inversion:
        inverter, bb, empty = self.components["inverter"], self.backbone, self.embeds["empty"]
        hit = True

        def compute() -> dict[str, Any]:
            nonlocal hit
            hit = False
            inv = inverter.invert(bb, latents, empty, self.steps, self.seed)
            return {
                "timesteps": inv.timesteps,
                "denoise_timesteps": inv.denoise_timesteps,
                "trajectory": torch.stack(inv.trajectory),
                "steps": inv.steps,
                "extras": inv.extras,
                "start": inv.start,
            }

        with self.timer("invert"):
            bb.set_adapter("identity")
            on = self.cache.enabled
            parts = {
                "inverter": [inverter.name, asdict(inverter.params)],
                "adapter": bb.active_adapter,
                "latents": hash_tensor(latents) if on else "",
                "prompt": hash_tensor(empty) if on else "",
            }
            d = self.cached("inversions", parts, compute)
            # every inversion came from the cache
            self.report["inversion_cached"] = self.report.get("inversion_cached", True) and hit
        return Inversion(
            d["timesteps"],
            list(d["trajectory"].unbind(0)),
            d["denoise_timesteps"],
            d["steps"],
            d["extras"],
            d.get("start"),
        )

    # ------------------------------------------------------------------------------ the end
    def close(self) -> None:
        """The strategy's close, the scratch folder removed, then the clip job's (source, cache)."""
        if self.strategy is not None:
            self.strategy.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if getattr(self, "latents", None) is not None and self.latents.encoded_now and "encode" in self.reused:
            self.reused.remove("encode")
        super().close()

    def write_report(self, strip) -> dict[str, Any]:
        """The strip (source vs edited keyframe crops) and the JSON report beside the output."""
        req, plan, bb = self.req, self.plan, self.backbone
        out, n = plan.output, plan.frames
        strip_path = out.with_name(out.stem + ".strip.png")
        write_strip(strip_path, [strip[0], strip[1]], bb)
        evals = dict(bb.unet_evals)
        if bb.is_random:
            self.warnings.append(f"{RANDOM_NOTE}; {REAL_EDIT_HINT}")
        common = self.report_fields()
        report = {
            "job": "edit",
            "input": plan.info.to_json(),
            "output": str(out),
            "strip": str(strip_path),
            "prompt": req.prompt,
            "edits": plan.edits,
            "target_prompt": plan.target_prompt,
            "pipeline": req.pipeline.name,
            "strategy": self.strategy.name,
            "components": common.pop("components"),
            "settings": common.pop("settings"),
            "backbone": {
                "name": bb.name,
                "random_weights": bb.is_random,
                "resolution": bb.resolution,
                "adapters": bb.adapters,
                "params": asdict(bb.params),
            },
            "seed": req.seed,
            "steps": req.steps,
            "frames": n,
            "frames_edited": len(self.face_frames),
            "frames_passed_through": n - len(self.face_frames),
            "keyframes": [self.face_frames[k] for k in self.keys],
            "chunks": -(-n // self.settings.chunk_frames),
            "unet_evaluations": {
                "by_stage": evals,
                "total": sum(evals.values()),
                "per_output_frame": sum(evals.values()) / n,
            },
            "vae_evaluations": {**bb.vae_evals, "per_output_frame": sum(bb.vae_evals.values()) / n},
            **self.report,
            **common,
        }
        json_path = out.with_name(out.stem + ".json")
        write_atomic(json_path, json.dumps(report, indent=2, default=str))
        report["report"] = str(json_path)
        return report


def run_edit(req: EditRequest) -> dict[str, Any]:
    """Edit ``req.input``: plan, build, detect, encode, the strategy's clip-wide stage, render chunk by
    chunk, then the strip and the report. Finished stages are kept in the cache (``req.cache``), so an
    interrupted run resumes after them and a re-edit of the same clip skips detection and encoding."""
    with EditJob(req) as job, job.collecting():  # what components say goes into the report
        job.build()
        job.detect()
        job.encode()
        job.prepare()
        strip = job.render()
    return job.write_report(strip)


def write_strip(path: Path, rows: list[list[np.ndarray]], backbone: Backbone) -> None:
    """A picture of crop rows (PNG, atomically); with a random-weight backbone it says so on the
    picture itself, with how to run a real edit (the first thing a new user looks at)."""
    img = make_strip(rows, height=min(256, backbone.resolution))
    if backbone.is_random:
        img = caption(
            img, [f"RANDOM WEIGHTS ({backbone.name} backbone): {RANDOM_NOTE.split(': ', 1)[-1]}.", REAL_EDIT_HINT]
        )
    write_atomic(path, cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())
