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

from ipfacediff.errors import InputError, NoFaceError, OutputExistsError, ParameterError
from ipfacediff.interfaces import Backbone, FaceProcessor, TrainingBatch
from ipfacediff.params import validate_params
from ipfacediff.registry import RecipeEntry, RecipeSettings, Registry
from ipfacediff.runtime.face import pick_primary
from ipfacediff.runtime.files import write_atomic
from ipfacediff.runtime.progress import progress_bar
from ipfacediff.runtime.training import TrainingFaces
from ipfacediff.runtime.video import IMAGE_EXTS, VIDEO_EXTS, open_frames


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
        raise InputError(
            f"--data {data}: the folder holds no images or videos ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})"
        )
    return files


def prepare_faces(
    data: Path, processor: FaceProcessor, size: int, frames_per_video: int, show: bool = False
) -> FaceData:
    """Detect and align the primary face of every image (and of ``frames_per_video`` evenly spaced
    frames of every video) under ``data``; cached in the ipfacediff cache, never in ``data``."""
    from ipfacediff.runtime.models import cache_dir

    files = _data_files(data)
    h = hashlib.sha256(
        json.dumps(
            [
                processor.name,
                dataclasses.asdict(processor.params) if dataclasses.is_dataclass(processor.params) else {},
                size,
                frames_per_video,
            ]
        ).encode()
    )
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:24]
    cached = cache_dir() / "finetune-data" / f"{key}.npz"
    if cached.is_file():
        z = np.load(cached)
        return FaceData(
            z["crops"], z["landmarks"], int(z["files_used"]), int(z["files_skipped"]), int(z["no_face"]), key
        )
    crops, lms = [], []
    used = skipped = no_face = 0
    with progress_bar("prepare", len(files), show) as bar:
        for f in files:
            try:
                src = open_frames(f)
                try:
                    n = len(src)
                    idx = (
                        sorted(set(np.linspace(0, n - 1, min(n, frames_per_video)).round().astype(int).tolist()))
                        if n
                        else []
                    )
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
    buf = io.BytesIO()
    np.savez(buf, crops=out.crops, landmarks=out.landmarks, files_used=used, files_skipped=skipped, no_face=no_face)
    write_atomic(cached, buf.getvalue())
    return out


# ------------------------------------------------------------------------------------ training
def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def loss_weight(settings: RecipeSettings, weights: dict[str, float], term: str, step: int) -> float:
    w = float(weights.get(term, 0.0))
    ramp = int(settings.loss_warmup.get(term, 0) or 0)
    return w * min(1.0, (step + 1) / ramp) if ramp > 0 else w


def sample_batch(
    faces: TrainingFaces, prompts: list[tuple[str, str]], settings: RecipeSettings, g: torch.Generator, n: int
) -> TrainingBatch:
    """``n`` samples: face rows, timesteps in ``settings.timestep_range``, noise, prompts."""
    lo, hi = (int(v) for v in settings.timestep_range)
    idx = torch.randint(0, len(faces), (n,), generator=g)
    t = torch.randint(max(0, lo), min(999, hi) + 1, (n,), generator=g)
    noise = torch.randn((n, *faces.z0.shape[1:]), generator=g)
    pi = torch.randint(0, len(prompts), (n,), generator=g).tolist()
    return TrainingBatch(idx, t, noise, [prompts[i] for i in pi])


def _lora_params(unet, adapter: str) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


def _fingerprint(
    recipe: RecipeEntry, settings: RecipeSettings, weights: dict, data_key: str, backbone: Backbone, seed: int
) -> str:
    blob = json.dumps(
        [recipe.name, dataclasses.asdict(settings) | {"steps": None}, weights, data_key, backbone.identity(), seed],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(
    work: Path, step: int, unet, adapter: str, optimizer, log: list[dict], fingerprint: str, eval_start: dict
) -> None:
    from safetensors.torch import save_file

    final = work / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in _lora_params(unet, adapter).items()},
        str(tmp / "lora.safetensors"),
    )
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(
        json.dumps({"step": step, "fingerprint": fingerprint, "log": log, "eval_start": eval_start})
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a folder: renamed whole once complete
    for old in sorted((work / "checkpoints").glob("step-*"))[:-1]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(work: Path) -> Path | None:
    found = sorted(
        p
        for p in (work / "checkpoints").glob("step-*")
        if not p.name.endswith(".tmp") and (p / "state.json").is_file()
    )
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


def _settings_and_weights(req: FinetuneRequest, objective) -> tuple[RecipeSettings, dict[str, float], int]:
    """The recipe's settings with ``--set`` applied, the loss weights (the objective's defaults,
    ``settings.loss_weights`` over them) and the step count, all checked."""
    recipe = req.recipe
    settings: RecipeSettings = validate_params(
        RecipeSettings,
        {**dataclasses.asdict(recipe.settings), **req.sets.get("settings", {})},
        f"recipe {recipe.name} settings",
    )
    weights = {**objective.default_weights, **{k: float(v) for k, v in settings.loss_weights.items()}}
    unknown = [k for k in {*weights, *settings.loss_warmup} if k not in objective.terms]
    if unknown:
        raise ParameterError(
            f"recipe {recipe.name}: unknown loss term(s) {', '.join(unknown)} for the {objective.name} objective "
            f"(valid: {', '.join(objective.terms)})"
        )
    if not any(w > 0 for w in weights.values()):
        raise ParameterError(f"recipe {recipe.name}: every loss weight is 0")
    for term, slot in objective.term_requires.items():
        if weights.get(term, 0) > 0 and slot not in recipe.components:
            raise ParameterError(
                f"recipe {recipe.name}: the {term} term needs {'an' if slot[0] in 'aeiou' else 'a'} {slot}"
            )
    if (
        len(settings.timestep_range) != 2
        or not 0 <= int(settings.timestep_range[0]) <= int(settings.timestep_range[1]) <= 999
    ):
        raise ParameterError(
            f"timestep_range {settings.timestep_range}: give [low, high] with 0 <= low <= high <= 999"
        )
    total_steps = req.max_steps if req.max_steps is not None else settings.steps
    if total_steps < 1:
        raise ParameterError(f"--max-steps {total_steps}: must be at least 1")
    return settings, weights, total_steps


def _work_folder(req: FinetuneRequest) -> tuple[Path, Path, Path]:
    """(data, output, work folder ``<output>.partial``), after the output and resume checks."""
    data, out = req.data.expanduser().resolve(), req.output.expanduser().resolve()
    if data.is_dir() and (out == data or data in out.parents):
        raise InputError(
            f"-o {req.output}: the adapter folder must not be inside the data folder {req.data} (the data is never "
            "written to)"
        )
    work = out.with_name(out.name + ".partial")
    if out.exists() and not (req.overwrite or req.resume):
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue its training")
    if req.resume and not work.exists() and (out / "checkpoints").is_dir():
        shutil.copytree(out, work)  # continue a finished run: train on in the work folder, replace at the end
    if not req.resume:
        shutil.rmtree(work, ignore_errors=True)
    _data_files(data)  # a missing / empty data folder fails before any model loads
    return data, out, work


def training_precision(backbone: Backbone, device: torch.device, mixed_precision: str) -> list[str]:
    """The frozen base weights' precision for training on ``device``: never an fp16 UNet and VAE
    without loss scaling (gradients through them underflow). On CUDA a backbone that would load in
    fp16 (``dtype: auto`` or ``fp16``) trains in bf16 where the GPU has it, else fp32, unless
    ``mixed_precision: fp16`` scales the loss (accelerate's GradScaler). LoRA weights are fp32 always."""
    dtype = getattr(backbone.params, "dtype", None)
    if device.type != "cuda" or dtype not in ("auto", "fp16") or mixed_precision == "fp16":
        return []
    backbone.params.dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return [
        f"training with the base model in {backbone.params.dtype}, not fp16: backward through an fp16 UNet and VAE "
        "needs loss "
        f"scaling (--set settings.mixed_precision=fp16 gives it)"
    ]


def _add_lora(backbone: Backbone, settings: RecipeSettings) -> tuple[dict[str, torch.nn.Parameter], float]:
    """A new LoRA adapter ``settings.adapter`` on the UNet's ``lora_targets``, trainable in fp32."""
    from peft import LoraConfig

    unet, adapter = backbone.unet, settings.adapter
    if adapter in backbone.adapters:
        raise ParameterError(
            f"adapter {adapter!r} is already loaded into the backbone; train another name or drop it from "
            "backbone.adapters"
        )
    alpha = settings.lora_alpha or float(settings.lora_rank)
    unet.add_adapter(
        LoraConfig(
            r=settings.lora_rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",
            target_modules=list(settings.lora_targets),
        ),
        adapter_name=adapter,
    )
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
    return params, alpha


def _resume(
    work: Path, out: Path, fingerprint: str, params, optimizer, total_steps: int
) -> tuple[int, list[dict], dict | None]:
    """Step, loss log and start evaluation of the latest checkpoint, its weights loaded."""
    from safetensors.torch import load_file

    ck = _latest_checkpoint(work)
    if ck is None:
        raise InputError(f"--resume: no checkpoint of {out.name} found in {work} or {out}; start without --resume")
    state = json.loads((ck / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        raise InputError(
            f"--resume: the checkpoint in {ck.parent} was made with other data, settings, backbone or seed; start "
            "over with --overwrite"
        )
    saved = load_file(str(ck / "lora.safetensors"))
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
    start = int(state["step"])
    if start >= total_steps:
        raise InputError(f"--resume: the checkpoint is at step {start}; ask for more with --max-steps N (N > {start})")
    return start, state["log"], state.get("eval_start")


def _train(
    req: FinetuneRequest,
    t: dict[str, Any],
    start: int,
    total_steps: int,
    log: list[dict],
    fingerprint: str,
    eval_start: dict,
) -> None:
    """The optimisation loop from ``start``; checkpoints every ``checkpoint_every`` steps and at the end."""
    settings, weights, objective, faces = t["settings"], t["weights"], t["objective"], t["faces"]
    accelerator, unet_t, optimizer, adapter = t["accelerator"], t["unet_t"], t["optimizer"], settings.adapter
    with progress_bar(f"finetune {adapter}", total_steps - start, req.show_progress) as bar:
        for step in range(start, total_steps):
            g = _step_generator(req.seed, step)
            row: dict[str, float] = {"step": step + 1}
            for _ in range(settings.gradient_accumulation):
                with accelerator.accumulate(unet_t):
                    terms = objective.losses(
                        unet_t, sample_batch(faces, objective.prompts, settings, g, settings.batch_size)
                    )
                    total = sum(loss_weight(settings, weights, k, step) * v for k, v in terms.items())
                    accelerator.backward(total)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    row[k] = row.get(k, 0.0) + float(v.detach()) / settings.gradient_accumulation
                row["total"] = row.get("total", 0.0) + float(total.detach()) / settings.gradient_accumulation
            if not all(math.isfinite(v) for v in row.values()):
                raise InputError(
                    f"step {step + 1}: the loss became {row}; lower the learning rate (settings.learning_rate)"
                )
            log.append(row)
            bar.advance(
                description=f"finetune {adapter} " + " ".join(f"{k} {row[k]:.4f}" for k in t["terms_used"] if k in row)
            )
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == total_steps:
                _save_checkpoint(
                    t["work"], step + 1, t["backbone"].unet, adapter, optimizer, log, fingerprint, eval_start
                )


def _evaluator(t: dict[str, Any], seed: int):
    """Loss terms on a fixed evaluation batch (the same at start and end, and for every seed of data)."""
    batch = sample_batch(
        t["faces"],
        t["objective"].prompts,
        t["settings"],
        torch.Generator().manual_seed(seed + 7919),
        t["settings"].eval_samples,
    )

    def evaluate() -> dict[str, float]:
        unet = t["backbone"].unet
        unet.eval()
        with torch.no_grad():
            res = {k: float(v) for k, v in t["objective"].losses(t["unet_t"], batch).items()}
        unet.train()
        return res

    return evaluate


def _setup(req: FinetuneRequest) -> dict[str, Any]:
    """Models, data, the objective, the LoRA adapter and the optimizer, as one training state."""
    from accelerate import Accelerator

    from ipfacediff.catalog import get_catalog
    from ipfacediff.jobs.common import build_slot, check_sets, resolve_backbone
    from ipfacediff.runtime.models import ARCFACE_ENV, find_arcface

    recipe = req.recipe
    check_sets(req.sets, recipe, "recipe")
    if "objective" not in recipe.components:
        raise ParameterError(
            f"recipe {recipe.name!r} has no objective; name one (objective: identity or objective: edit)"
        )
    objective = build_slot(recipe, "objective", req.sets)
    settings, weights, total_steps = _settings_and_weights(req, objective)
    data, out, work = _work_folder(req)
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        gradient_accumulation_steps=settings.gradient_accumulation,
        cpu=req.device == "cpu",
    )
    device = accelerator.device
    torch.manual_seed(req.seed)
    comps = {slot: build_slot(recipe, slot, req.sets, device) for slot in recipe.components if slot != "objective"}
    arcface = find_arcface()
    if (
        arcface is not None and getattr(comps.get("identity_encoder"), "name", None) == "mobilefacenet"
    ):  # the user's ArcFace wins
        comps["identity_encoder"] = (
            get_catalog()
            .build(
                "identity_encoder",
                "insightface-arcface",
                {"model_path": str(arcface)},
                f"{ARCFACE_ENV} / ~/.insightface",
            )
            .to(device)
        )
    encoder = comps.get("identity_encoder")
    if weights.get("identity", 0) > 0 and encoder is not None and not encoder.differentiable:
        raise ParameterError(
            f"identity encoder {encoder.name!r} is not differentiable: it can score identity "
            "(--set metrics.id-similarity.encoder=...) but not train it; use mobilefacenet or insightface-arcface"
        )
    backbone, warnings = resolve_backbone(req.backbone, req.sets, req.registry, recipe.backbone)
    warnings += training_precision(backbone, device, settings.mixed_precision)
    backbone.to(device)
    size = settings.resolution or backbone.resolution
    if size % 8:
        raise ParameterError(f"resolution {size}: must be a multiple of 8")
    prepared = prepare_faces(data, comps["face_processor"], size, settings.frames_per_video, req.show_progress)
    if prepared.files_skipped:
        warnings.append(f"{prepared.files_skipped} unreadable file(s) skipped")
    if prepared.images_without_face:
        warnings.append(f"no face in {prepared.images_without_face} image(s)/frame(s): not used")
    warnings += [
        f"{c.name} has random weights: its loss shows the mechanics, not a real objective"
        for c in comps.values()
        if getattr(c, "is_random", False)
    ]
    if backbone.is_random:
        warnings.append("random-weight backbone: shows the mechanics, not a real fine-tune")
    params, alpha = _add_lora(backbone, settings)
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.learning_rate, weight_decay=1e-2)
    unet_t, optimizer = accelerator.prepare(backbone.unet, optimizer)
    faces = TrainingFaces(
        backbone,
        prepared.crops,
        prepared.landmarks,
        device,
        comps.get("identity_encoder") if weights.get("identity", 0) > 0 else None,
    )
    objective.setup(backbone, faces, comps, settings, weights)
    return {
        "recipe": recipe,
        "objective": objective,
        "settings": settings,
        "weights": weights,
        "total_steps": total_steps,
        "out": out,
        "work": work,
        "accelerator": accelerator,
        "device": device,
        "comps": comps,
        "backbone": backbone,
        "warnings": warnings,
        "prepared": prepared,
        "size": size,
        "params": params,
        "alpha": alpha,
        "optimizer": optimizer,
        "unet_t": unet_t,
        "faces": faces,
        "terms_used": [k for k in objective.terms if weights.get(k, 0) > 0],
    }


def run_finetune(req: FinetuneRequest) -> dict[str, Any]:
    """Train the recipe's LoRA adapter: set up, evaluate, train (resumable), evaluate, save."""
    t_start = time.perf_counter()
    t = _setup(req)
    fingerprint = _fingerprint(t["recipe"], t["settings"], t["weights"], t["prepared"].key, t["backbone"], req.seed)
    evaluate = _evaluator(t, req.seed)
    start, log, eval_start = 0, [], None
    if req.resume:
        start, log, eval_start = _resume(
            t["work"], t["out"], fingerprint, t["params"], t["optimizer"], t["total_steps"]
        )
    t["work"].mkdir(parents=True, exist_ok=True)
    if eval_start is None:
        eval_start = evaluate()
    t_train = time.perf_counter()
    _train(req, t, start, t["total_steps"], log, fingerprint, eval_start)
    train_s = time.perf_counter() - t_train
    eval_end = evaluate()
    t["backbone"].unet.eval()
    return _save(req, t, log, start, eval_start, eval_end, train_s, t_start)


def _save(
    req: FinetuneRequest,
    t: dict[str, Any],
    log: list[dict],
    start: int,
    eval_start: dict,
    eval_end: dict,
    train_s: float,
    t_start: float,
) -> dict[str, Any]:
    """The adapter in the format diffusers reads, the loss log (CSV, JSON, plot), the report and a
    model card, written in the work folder and renamed to the output folder."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    settings, work, out, terms_used, backbone = t["settings"], t["work"], t["out"], t["terms_used"], t["backbone"]
    # peft's key format throughout (lora_A/lora_B): converting to diffusers' older lora.down/up renames
    # only the attention layers, and a file with both formats loads without them in diffusers (the conv
    # layers' LoRA alone)
    lora_sd = get_peft_model_state_dict(backbone.unet, adapter_name=settings.adapter)
    config = backbone.unet.peft_config[
        settings.adapter
    ]  # rank and alpha: in the safetensors metadata (diffusers) and adapter_config.json (peft)
    StableDiffusionPipeline.save_lora_weights(
        str(work), unet_lora_layers=lora_sd, safe_serialization=True, unet_lora_adapter_metadata=config.to_dict()
    )
    config.save_pretrained(str(work))
    with (work / "losses.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", *terms_used, "total"])
        w.writeheader()
        for r in log:
            w.writerow({k: r.get(k, "") for k in ["step", *terms_used, "total"]})
    (work / "losses.json").write_text(json.dumps({"terms": terms_used, "weights": t["weights"], "log": log}, indent=1))
    _plot(log, terms_used, work / "losses.png")
    prepared, total_steps = t["prepared"], t["total_steps"]
    report = {
        "job": "finetune",
        "recipe": t["recipe"].name,
        "objective": t["objective"].name,
        "adapter": settings.adapter,
        "output": str(out),
        "data": {
            "path": str(req.data),
            "faces": int(prepared.crops.shape[0]),
            "files_used": prepared.files_used,
            "files_skipped": prepared.files_skipped,
            "frames_without_face": prepared.images_without_face,
            "resolution": t["size"],
        },
        "backbone": {**backbone.identity(), "random_weights": backbone.is_random},
        "components": {
            slot: {"component": c.name, "params": dataclasses.asdict(c.params)}
            for slot, c in {"objective": t["objective"], **t["comps"]}.items()
        },
        "settings": dataclasses.asdict(settings),
        "loss_weights": t["weights"],
        "steps": total_steps,
        "resumed_from": start or None,
        "seed": req.seed,
        "lora": {
            "rank": settings.lora_rank,
            "alpha": t["alpha"],
            "targets": list(settings.lora_targets),
            "parameters": int(sum(p.numel() for p in t["params"].values())),
        },
        "eval_start": eval_start,
        "eval_end": eval_end,
        "final_losses": {k: log[-1].get(k) for k in [*terms_used, "total"]} if log else {},
        "seconds_per_step": round(train_s / max(total_steps - start, 1), 4),
        "timings_s": {"train": round(train_s, 3), "total": round(time.perf_counter() - t_start, 3)},
        "device": str(t["device"]),
        "warnings": t["warnings"],
    }
    (work / "finetune.json").write_text(json.dumps(report, indent=2, default=str))
    (work / "README.md").write_text(_model_card(report))
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)  # the whole folder appears under its final name at once
    return report


def _model_card(r: dict[str, Any]) -> str:
    bb = r["backbone"]
    lines = [
        f"# ipfacediff LoRA adapter `{r['adapter']}` ({r['objective']} objective)",
        "",
        f"Made by `ipfacediff finetune {r['recipe']}` (recipe `{r['recipe']}`).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {bb.get('name')} (weights sha256 "
        f"{bb.get('weights_sha256', 'n/a')}){' - random weights, a test run' if bb.get('random_weights') else ''} |",
        f"| data | {r['data']['path']}: {r['data']['faces']} aligned faces from {r['data']['files_used']} files at "
        f"{r['data']['resolution']} px"
        f" ({r['data']['files_skipped']} unreadable skipped) |",
        f"| steps | {r['steps']} (batch {r['settings']['batch_size']}, accumulation "
        f"{r['settings']['gradient_accumulation']},"
        f" lr {r['settings']['learning_rate']}, seed {r['seed']}) |",
        f"| LoRA | rank {r['lora']['rank']}, alpha {r['lora']['alpha']}, on {', '.join(r['lora']['targets'])}; "
        f"{r['lora']['parameters']} parameters |",
        "| losses | " + ", ".join(f"{k} x {v}" for k, v in r["loss_weights"].items() if v) + " |",
        "| components | " + ", ".join(f"{s}: {c['component']}" for s, c in r["components"].items()) + " |",
        "",
        "Loss terms on a fixed evaluation batch:",
        "",
        "| term | start | end |",
        "|---|---|---|",
        *[
            f"| {k} | {r['eval_start'].get(k, float('nan')):.4f} | {r['eval_end'].get(k, float('nan')):.4f} |"
            for k in r["eval_end"]
        ],
        "",
        "Use it:",
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained(BASE_MODEL)",
        f'pipe.load_lora_weights("{r["output"]}", adapter_name="{r["adapter"]}")',
        "```",
        "",
        f"or in an edit: `ipfacediff edit VIDEO -p ... --set backbone.adapters.{r['adapter']}={r['output']}`",
        "",
        "Training curves: `losses.png`, `losses.csv`; the full report: `finetune.json`.",
    ]
    if r["warnings"]:
        lines += ["", "Warnings:", *[f"- {w}" for w in r["warnings"]]]
    return "\n".join(lines) + "\n"
