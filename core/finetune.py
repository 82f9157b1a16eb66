"""The fine-tuning job: LoRA adapters for eps1 (``identity``) and eps2 (``edit``).

``ipfacediff finetune RECIPE --data PATH -o ADAPTER_DIR``. A recipe (registry.yaml) names the face
processor that prepares the data, the identity encoder R of the identity term, the localization
loss of the edit objective, and the settings (:class:`ipfacediff.registry.RecipeSettings`).

Objectives, on faces detected and aligned from a folder of images / videos (cached once):

* ``identity`` (eps1): the empty prompt; the noise-prediction loss plus ``L_id = 1 - cos(R(x0_hat),
  R(x0))``, x0_hat the one-step clean estimate decoded by the VAE, aligned to the ArcFace template
  (differentiably) and embedded by R; only at timesteps where x0_hat is still a face.
* ``edit`` (eps2): a target prompt per sample; the directional loss of the localization-loss plugin
  (``clip-directional``), a locality term that keeps pixels outside the prompt's face part (a mask
  from the landmarks) close to the source, and the identity term as a regulariser.

Training runs through HF accelerate (the same command under ``accelerate launch``); every sample,
timestep and noise of step ``k`` comes from a generator seeded with (seed, k), so a run resumed from
a checkpoint is the same as an uninterrupted one. Everything is written into ``<ADAPTER_DIR>.partial``
and renamed to ``ADAPTER_DIR`` at the end; the last checkpoint is kept for ``--resume``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .catalog import get_catalog
from .errors import InputError, NoFaceError, OutputExistsError, ParameterError
from .face import ARCFACE_TEMPLATE, pick_primary, similarity_transform
from .interfaces import Backbone, FaceProcessor
from .params import validate_params
from .progress import progress_bar
from .registry import RecipeEntry, RecipeSettings, Registry
from .video import IMAGE_EXTS, open_frames

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
LOSS_TERMS = ("noise", "identity", "directional", "locality")
DEFAULT_WEIGHTS = {"identity": {"noise": 1.0, "identity": 0.1},
                   "edit": {"directional": 1.0, "locality": 1.0, "identity": 0.1}}
DEFAULT_PROMPTS = ["blonde hair | hair", "black hair | hair", "eyeglasses | eyes", "beard | lower", "smiling | lower", "older | face"]
PARTS = ("eyes", "lower", "hair", "face", "all")
PART_WORDS = {"eyes": ("eyeglass", "glasses", "sunglass", "eye"), "lower": ("beard", "mustache", "moustache", "smil", "mouth", "lip", "teeth"),
              "hair": ("hair", "bald", "bangs"), "face": ("old", "young", "age", "makeup", "tan", "skin")}


@dataclass
class FinetuneRequest:
    recipe: RecipeEntry
    registry: Registry
    data: Path
    output: Path
    backbone: str = "auto"
    max_steps: int | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    show_progress: bool = True


# ----------------------------------------------------------------------------------------- data
@dataclass
class FaceData:
    crops: np.ndarray  # [N, S, S, 3] uint8 aligned faces
    landmarks: np.ndarray  # [N, 5, 2] in crop pixels
    files_used: int
    files_skipped: int  # unreadable
    images_without_face: int
    key: str


def _data_files(data: Path) -> list[Path]:
    if not data.exists():
        raise InputError(f"--data {data}: no such file or folder")
    if data.is_file():
        return [data]
    files = sorted(f for f in data.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    if not files:
        raise InputError(f"--data {data}: the folder holds no images or videos ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
    return files


def prepare_faces(data: Path, processor: FaceProcessor, size: int, frames_per_video: int, show: bool = False) -> FaceData:
    """Detect and align the primary face of every image (and of ``frames_per_video`` evenly spaced
    frames of every video) under ``data``; cached in the ipfacediff cache, never in ``data``."""
    from .models import cache_dir

    files = _data_files(data)
    h = hashlib.sha256(json.dumps([processor.name, dataclasses.asdict(processor.params) if dataclasses.is_dataclass(processor.params) else {},
                                   size, frames_per_video]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:24]
    cached = cache_dir() / "finetune-data" / f"{key}.npz"
    if cached.is_file():
        z = np.load(cached)
        return FaceData(z["crops"], z["landmarks"], int(z["files_used"]), int(z["files_skipped"]), int(z["no_face"]), key)
    crops, lms = [], []
    used = skipped = no_face = 0
    with progress_bar("prepare", len(files), show) as bar:
        for f in files:
            try:
                src = open_frames(f)
                try:
                    n = len(src)
                    idx = sorted(set(np.linspace(0, n - 1, min(n, frames_per_video)).round().astype(int).tolist())) if n else []
                    frames = src.get(idx) if idx else []
                finally:
                    src.close()
            except Exception:  # noqa: BLE001 - any unreadable file is skipped and counted
                skipped += 1
                bar.advance()
                continue
            if len(frames) == 0:
                skipped += 1
                bar.advance()
                continue
            used += 1
            for frame in frames:
                det = pick_primary(processor.detect(frame), None)
                if det is None:
                    no_face += 1
                    continue
                a = processor.align(frame, det, size)
                pts = np.c_[det.landmarks, np.ones(5)] @ a.matrix.T
                crops.append(a.crop)
                lms.append(pts.astype(np.float32))
            bar.advance()
    if used == 0:
        raise InputError(f"--data {data}: none of the {len(files)} files could be read as an image or a video")
    if not crops:
        raise NoFaceError(f"--data {data}: no face found in any of the {used} readable files ({processor.name})")
    out = FaceData(np.stack(crops), np.stack(lms), used, skipped, no_face, key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, crops=out.crops, landmarks=out.landmarks, files_used=used, files_skipped=skipped, no_face=no_face)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, cached)
    return out


def load_prompts(path: str) -> list[tuple[str, str]]:
    """(edit, face part) pairs: a file of lines ``edit`` or ``edit | part`` (``#`` comments), or the
    built-in list. A part left out is guessed from the words (eyeglasses -> eyes, beard -> lower...)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"prompts file {p} does not exist")
        lines = [ln.split("#", 1)[0].strip() for ln in p.read_text(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise InputError(f"prompts file {p} is empty: give one edit per line, e.g. 'eyeglasses' or 'blonde hair | hair'")
    else:
        lines = DEFAULT_PROMPTS
    out = []
    for ln in lines:
        text, _, part = (s.strip() for s in ln.partition("|"))
        if part and part not in PARTS:
            raise InputError(f"prompt {ln!r}: unknown face part {part!r} (valid: {', '.join(PARTS)})")
        if not part:
            low = text.lower()
            part = next((k for k, words in PART_WORDS.items() if any(w in low for w in words)), "face")
        out.append((text, part))
    return out


def part_mask(landmarks: np.ndarray, size: int, part: str) -> np.ndarray:
    """A soft ``[size, size]`` mask (1 inside) of a face part from five landmarks (eyes, nose, mouth
    corners) in crop pixels: where an edit of that part may change pixels."""
    if part == "all":
        return np.ones((size, size), np.float32)
    le, re_, nose, lm, rm = landmarks.astype(np.float64)
    d = max(np.linalg.norm(re_ - le), 1.0)
    eyes, mouth = (le + re_) / 2, (lm + rm) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def ellipse(c, rx, ry):
        r = ((xs - c[0]) / rx) ** 2 + ((ys - c[1]) / ry) ** 2
        return 1 / (1 + np.exp((np.sqrt(r) - 1) * 12))

    face = ellipse((eyes + mouth) / 2 + [0, 0.15 * d], 1.05 * d, 1.45 * d)
    if part == "eyes":
        m = ellipse(eyes, 1.0 * d, 0.45 * d)
    elif part == "lower":
        m = ellipse(mouth + [0, 0.25 * d], 0.95 * d, 0.75 * d)
    elif part == "hair":
        m = 1 - face
    else:
        m = face
    return m.astype(np.float32)


# ------------------------------------------------------------------------------------ training
def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2 ** 63))


def loss_weight(settings: RecipeSettings, weights: dict[str, float], term: str, step: int) -> float:
    w = float(weights.get(term, 0.0))
    ramp = int(settings.loss_warmup.get(term, 0) or 0)
    return w * min(1.0, (step + 1) / ramp) if ramp > 0 else w


class Trainer:
    """The loss terms of one recipe on prepared faces; ``terms(batch)`` is differentiable."""

    def __init__(self, backbone: Backbone, settings: RecipeSettings, weights: dict[str, float], faces: FaceData, identity_encoder,
                 localization_loss, prompts: list[tuple[str, str]], device: torch.device):
        from diffusers import DDIMScheduler

        self.bb, self.s, self.w, self.dev = backbone, settings, weights, device
        self.encoder, self.loc = identity_encoder, localization_loss
        self.prompts = prompts
        sched = DDIMScheduler.from_config(backbone.scheduler_config)
        self.alphas = sched.alphas_cumprod.to(device, torch.float32)
        size = faces.crops.shape[1]
        images = torch.from_numpy(faces.crops).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            self.z0 = torch.cat([backbone.encode_images(images[i:i + 8]) for i in range(0, len(images), 8)]).to(device)
            self.rt = torch.cat([backbone.decode_latents(self.z0[i:i + 8]) for i in range(0, len(images), 8)]).to(device)
        # pixel-space matrices crop -> ArcFace 112 crop, from each face's own landmarks
        self.m112 = torch.from_numpy(np.stack([similarity_transform(lm, ARCFACE_TEMPLATE) for lm in faces.landmarks])).float().to(device)
        self.ref_id = None
        if weights.get("identity", 0) > 0:
            from .face import arcface_crop_tensor

            with torch.no_grad():
                self.ref_id = identity_encoder.embed(arcface_crop_tensor(self.rt, self.m112))
        self.masks = {part: torch.from_numpy(np.stack([part_mask(lm, size, part) for lm in faces.landmarks])).to(device)
                      for part in {p for _, p in prompts}} if settings.objective == "edit" else {}
        self.empty = backbone.encode_prompt([""]).to(device)

    def batch(self, g: torch.Generator, n: int) -> dict[str, Any]:
        lo, hi = (int(v) for v in self.s.timestep_range)
        idx = torch.randint(0, self.z0.shape[0], (n,), generator=g)
        t = torch.randint(max(0, lo), min(999, hi) + 1, (n,), generator=g)
        noise = torch.randn((n, *self.z0.shape[1:]), generator=g)
        pi = torch.randint(0, len(self.prompts), (n,), generator=g).tolist()
        return {"idx": idx, "t": t, "noise": noise, "prompts": [self.prompts[i] for i in pi]}

    def terms(self, unet, b: dict[str, Any]) -> dict[str, torch.Tensor]:
        from .face import arcface_crop_tensor

        idx, t, noise = b["idx"].to(self.dev), b["t"].to(self.dev), b["noise"].to(self.dev)
        a = self.alphas[t].view(-1, 1, 1, 1)
        z0 = self.z0[idx]
        xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        if self.s.objective == "edit":
            targets = [f"{self.s.reference_prompt}, {text}" if self.s.reference_prompt else text for text, _ in b["prompts"]]
            emb = self.bb.encode_prompt(targets).to(self.dev)
        else:
            emb = self.empty.expand(len(idx), -1, -1)
        dtype = next(unet.parameters()).dtype
        eps = unet(xt.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample.float()
        out: dict[str, torch.Tensor] = {}
        if self.w.get("noise", 0) > 0:
            out["noise"] = F.mse_loss(eps, noise)
        if not any(self.w.get(k, 0) > 0 for k in ("identity", "directional", "locality")):
            return out
        x0_hat = (xt - (1 - a).sqrt() * eps) / a.sqrt()
        img = self.bb.decode_latents(x0_hat, grad=True).to(self.dev)
        src = self.rt[idx]
        if self.w.get("identity", 0) > 0:
            keep = t <= self.s.identity_max_timestep
            if bool(keep.any()):
                e = self.encoder.embed(arcface_crop_tensor(img[keep], self.m112[idx][keep]))
                out["identity"] = (1 - (e * self.ref_id[idx][keep]).sum(-1)).mean()
            else:
                out["identity"] = img.sum() * 0.0
        if self.s.objective == "edit":
            if self.w.get("directional", 0) > 0:
                tar = [f"{self.s.reference_prompt}, {text}" if self.s.reference_prompt else text for text, _ in b["prompts"]]
                out["directional"] = self.loc.forward(img, src, tar, [self.s.reference_prompt or "a face"] * len(tar))
            if self.w.get("locality", 0) > 0:
                outside = torch.stack([1 - self.masks[part][i] for (_, part), i in zip(b["prompts"], idx.tolist())])[:, None]
                out["locality"] = (((img - src) ** 2) * outside).sum() / (outside.sum() * 3 + 1e-6)
        return out


def _lora_params(unet, adapter: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


def _fingerprint(recipe: RecipeEntry, settings: RecipeSettings, weights: dict, data_key: str, backbone: Backbone, seed: int) -> str:
    blob = json.dumps([recipe.name, dataclasses.asdict(settings) | {"steps": None}, weights, data_key,
                       backbone.identity(), seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(work: Path, step: int, unet, adapter: str, optimizer, log: list[dict], fingerprint: str, eval_start: dict) -> None:
    from safetensors.torch import save_file

    final = work / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in _lora_params(unet, adapter).items()}, str(tmp / "lora.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "log": log, "eval_start": eval_start}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted((work / "checkpoints").glob("step-*"))[:-1]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(work: Path) -> Path | None:
    found = sorted(p for p in (work / "checkpoints").glob("step-*") if not p.name.endswith(".tmp") and (p / "state.json").is_file())
    return found[-1] if found else None


def _plot(log: list[dict], terms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = [r["step"] for r in log]
    for term in terms + ["total"]:
        ax.plot(steps, [r.get(term, float("nan")) for r in log], label=term, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_finetune(req: FinetuneRequest) -> dict[str, Any]:
    from accelerate import Accelerator
    from peft import LoraConfig

    from .edit import resolve_backbone

    t_start = time.perf_counter()
    recipe, catalog = req.recipe, get_catalog()
    for slot in req.sets:
        if slot not in (*recipe.components, "settings", "backbone"):
            raise ParameterError(f"--set {slot}...: the recipe {recipe.name!r} has no {slot!r} (has: {', '.join([*recipe.components, 'settings', 'backbone'])})")
    settings: RecipeSettings = validate_params(RecipeSettings, {**dataclasses.asdict(recipe.settings), **req.sets.get("settings", {})},
                                               f"recipe {recipe.name} settings")
    weights = {**DEFAULT_WEIGHTS[settings.objective], **{k: float(v) for k, v in settings.loss_weights.items()}}
    unknown = [k for k in {*weights, *settings.loss_warmup} if k not in LOSS_TERMS]
    if unknown:
        raise ParameterError(f"recipe {recipe.name}: unknown loss term(s) {', '.join(unknown)} (valid: {', '.join(LOSS_TERMS)})")
    if not any(w > 0 for w in weights.values()):
        raise ParameterError(f"recipe {recipe.name}: every loss weight is 0")
    if len(settings.timestep_range) != 2 or not 0 <= int(settings.timestep_range[0]) <= int(settings.timestep_range[1]) <= 999:
        raise ParameterError(f"timestep_range {settings.timestep_range}: give [low, high] with 0 <= low <= high <= 999")
    total_steps = req.max_steps if req.max_steps is not None else settings.steps
    if total_steps < 1:
        raise ParameterError(f"--max-steps {total_steps}: must be at least 1")
    data, out = req.data.expanduser().resolve(), req.output.expanduser().resolve()
    if data.is_dir() and (out == data or data in out.parents):
        raise InputError(f"-o {req.output}: the adapter folder must not be inside the data folder {req.data} (the data is never written to)")
    prompts = load_prompts(settings.prompts) if settings.objective == "edit" else [("", "all")]
    work = out.with_name(out.name + ".partial")
    if out.exists() and not (req.overwrite or req.resume):
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue its training")
    if req.resume and not work.exists() and (out / "checkpoints").is_dir():
        shutil.copytree(out, work)  # continue a finished run: train on in the work folder, replace at the end
    if not req.resume:
        shutil.rmtree(work, ignore_errors=True)
    _data_files(data)  # a missing / empty data folder fails before any model loads

    # models
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, gradient_accumulation_steps=settings.gradient_accumulation,
                              cpu=req.device == "cpu")
    device = accelerator.device
    torch.manual_seed(req.seed)
    comps = {slot: catalog.build(ref.kind, ref.name, {**ref.raw_params(), **req.sets.get(slot, {})}, ref.where).to(device)
             for slot, ref in recipe.components.items()}
    if "face_processor" not in comps:
        raise ParameterError(f"recipe {recipe.name} needs a face_processor")
    if weights.get("identity", 0) > 0 and "identity_encoder" not in comps:
        raise ParameterError(f"recipe {recipe.name}: the identity term needs an identity_encoder")
    if settings.objective == "edit" and weights.get("directional", 0) > 0 and "localization_loss" not in comps:
        raise ParameterError(f"recipe {recipe.name}: the directional term needs a localization_loss (e.g. clip-directional)")
    backbone, warnings = resolve_backbone(req.backbone, req.sets, req.registry, recipe.backbone)
    backbone.to(device)
    size = settings.resolution or backbone.resolution
    if size % 8:
        raise ParameterError(f"resolution {size}: must be a multiple of 8")

    faces = prepare_faces(data, comps["face_processor"], size, settings.frames_per_video, req.show_progress)
    if faces.files_skipped:
        warnings.append(f"{faces.files_skipped} unreadable file(s) skipped")
    if faces.images_without_face:
        warnings.append(f"no face in {faces.images_without_face} image(s)/frame(s): not used")
    for comp in comps.values():
        if getattr(comp, "is_random", False):
            warnings.append(f"{comp.name} has random weights: its loss shows the mechanics, not a real objective")
    if backbone.is_random:
        warnings.append("random-weight backbone: shows the mechanics, not a real fine-tune")

    unet = backbone.unet
    adapter = settings.adapter
    if adapter in backbone.adapters:
        raise ParameterError(f"adapter {adapter!r} is already loaded into the backbone; train another name or drop it from backbone.adapters")
    alpha = settings.lora_alpha or float(settings.lora_rank)
    lora_config = LoraConfig(r=settings.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(settings.lora_targets))
    unet.add_adapter(lora_config, adapter_name=adapter)
    unet.set_adapters([adapter])
    unet.requires_grad_(False)
    params = _lora_params(unet, adapter)
    if not params:
        raise ParameterError(f"lora_targets {settings.lora_targets}: no UNet module matches")
    for p in params.values():
        p.data = p.data.float()  # LoRA weights train in fp32 even when the base UNet is fp16/bf16 on a GPU
        p.requires_grad_(True)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.learning_rate, weight_decay=1e-2)
    unet_t, optimizer = accelerator.prepare(unet, optimizer)
    trainer = Trainer(backbone, settings, weights, faces, comps.get("identity_encoder"), comps.get("localization_loss"), prompts, device)
    fingerprint = _fingerprint(recipe, settings, weights, faces.key, backbone, req.seed)
    terms_used = [k for k in LOSS_TERMS if weights.get(k, 0) > 0]

    eval_batch = trainer.batch(torch.Generator().manual_seed(req.seed + 7919), settings.eval_samples)

    def evaluate() -> dict[str, float]:
        unet.eval()
        with torch.no_grad():
            res = {k: float(v) for k, v in trainer.terms(unet_t, eval_batch).items()}
        unet.train()
        return res

    start, log, eval_start = 0, [], None
    if req.resume:
        ck = _latest_checkpoint(work)
        if ck is None:
            raise InputError(f"--resume: no checkpoint of {out.name} found in {work} or {out}; start without --resume")
        state = json.loads((ck / "state.json").read_text())
        if state["fingerprint"] != fingerprint:
            raise InputError(f"--resume: the checkpoint in {ck.parent} was made with other data, settings, backbone or seed; "
                             f"start over with --overwrite")
        from safetensors.torch import load_file

        saved = load_file(str(ck / "lora.safetensors"))
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
        optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
        start, log = int(state["step"]), state["log"]
        eval_start = state.get("eval_start")
        if start >= total_steps:
            raise InputError(f"--resume: the checkpoint is at step {start}; ask for more with --max-steps N (N > {start})")
    work.mkdir(parents=True, exist_ok=True)
    if eval_start is None:
        eval_start = evaluate()
    t_train = time.perf_counter()
    with progress_bar(f"finetune {adapter}", total_steps - start, req.show_progress) as bar:
        for step in range(start, total_steps):
            g = _step_generator(req.seed, step)
            row: dict[str, float] = {"step": step + 1}
            for _ in range(settings.gradient_accumulation):
                with accelerator.accumulate(unet_t):
                    terms = trainer.terms(unet_t, trainer.batch(g, settings.batch_size))
                    total = sum(loss_weight(settings, weights, k, step) * v for k, v in terms.items())
                    accelerator.backward(total)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    row[k] = row.get(k, 0.0) + float(v.detach()) / settings.gradient_accumulation
                row["total"] = row.get("total", 0.0) + float(total.detach()) / settings.gradient_accumulation
            if not all(math.isfinite(v) for v in row.values()):
                raise InputError(f"step {step + 1}: the loss became {row}; lower the learning rate (settings.learning_rate)")
            log.append(row)
            bar.advance(description=f"finetune {adapter} " + " ".join(f"{k} {row[k]:.4f}" for k in terms_used if k in row))
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == total_steps:
                _save_checkpoint(work, step + 1, unet, adapter, optimizer, log, fingerprint, eval_start)
    train_s = time.perf_counter() - t_train
    eval_end = evaluate()
    unet.eval()

    # the adapter, in the format diffusers reads
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    lora_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter))
    StableDiffusionPipeline.save_lora_weights(str(work), unet_lora_layers=lora_sd, safe_serialization=True)
    with (work / "losses.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", *terms_used, "total"])
        w.writeheader()
        for r in log:
            w.writerow({k: r.get(k, "") for k in ["step", *terms_used, "total"]})
    (work / "losses.json").write_text(json.dumps({"terms": terms_used, "weights": weights, "log": log}, indent=1))
    _plot(log, terms_used, work / "losses.png")
    steps_run = total_steps - start
    report = {
        "job": "finetune",
        "recipe": recipe.name,
        "objective": settings.objective,
        "adapter": adapter,
        "output": str(out),
        "data": {"path": str(req.data), "faces": int(faces.crops.shape[0]), "files_used": faces.files_used,
                 "files_skipped": faces.files_skipped, "frames_without_face": faces.images_without_face, "resolution": size},
        "backbone": {**backbone.identity(), "random_weights": backbone.is_random},
        "components": {slot: {"component": c.name, "params": dataclasses.asdict(c.params)} for slot, c in comps.items()},
        "settings": dataclasses.asdict(settings),
        "loss_weights": weights,
        "steps": total_steps,
        "resumed_from": start or None,
        "seed": req.seed,
        "lora": {"rank": settings.lora_rank, "alpha": alpha, "targets": list(settings.lora_targets),
                 "parameters": int(sum(p.numel() for p in params.values()))},
        "eval_start": eval_start,
        "eval_end": eval_end,
        "final_losses": {k: log[-1].get(k) for k in [*terms_used, "total"]} if log else {},
        "seconds_per_step": round(train_s / max(steps_run, 1), 4),
        "timings_s": {"train": round(train_s, 3), "total": round(time.perf_counter() - t_start, 3)},
        "device": str(device),
        "warnings": warnings,
    }
    (work / "finetune.json").write_text(json.dumps(report, indent=2, default=str))
    (work / "README.md").write_text(_model_card(report))
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)
    return report


def _model_card(r: dict[str, Any]) -> str:
    bb = r["backbone"]
    lines = [
        f"# ipfacediff LoRA adapter `{r['adapter']}` ({r['objective']} objective)", "",
        f"Made by `ipfacediff finetune {r['recipe']}` (recipe `{r['recipe']}`).", "",
        "| | |", "|---|---|",
        f"| base model | {bb.get('name')} (weights sha256 {bb.get('weights_sha256', 'n/a')}){' - random weights, a test run' if bb.get('random_weights') else ''} |",
        f"| data | {r['data']['path']}: {r['data']['faces']} aligned faces from {r['data']['files_used']} files at {r['data']['resolution']} px"
        f" ({r['data']['files_skipped']} unreadable skipped) |",
        f"| steps | {r['steps']} (batch {r['settings']['batch_size']}, accumulation {r['settings']['gradient_accumulation']},"
        f" lr {r['settings']['learning_rate']}, seed {r['seed']}) |",
        f"| LoRA | rank {r['lora']['rank']}, alpha {r['lora']['alpha']}, on {', '.join(r['lora']['targets'])}; {r['lora']['parameters']} parameters |",
        "| losses | " + ", ".join(f"{k} x {v}" for k, v in r["loss_weights"].items() if v) + " |",
        "| components | " + ", ".join(f"{s}: {c['component']}" for s, c in r["components"].items()) + " |",
        "", "Loss terms on a fixed evaluation batch:", "", "| term | start | end |", "|---|---|---|",
        *[f"| {k} | {r['eval_start'].get(k, float('nan')):.4f} | {r['eval_end'].get(k, float('nan')):.4f} |" for k in r["eval_end"]],
        "", "Use it:", "", "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained(BASE_MODEL)",
        f"pipe.load_lora_weights(\"{r['output']}\", adapter_name=\"{r['adapter']}\")", "```", "",
        f"or in an edit: `ipfacediff edit VIDEO -p ... --set backbone.adapters.{r['adapter']}={r['output']}`", "",
        "Training curves: `losses.png`, `losses.csv`; the full report: `finetune.json`.",
    ]
    if r["warnings"]:
        lines += ["", "Warnings:", *[f"- {w}" for w in r["warnings"]]]
    return "\n".join(lines) + "\n"
