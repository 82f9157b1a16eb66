"""Planning a benchmark: the request, the clips and prompts it reads, and its jobs (one dict each,
JSON-able, so any executor can run it)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipfacediff.errors import InputError, ParameterError
from ipfacediff.runtime.messages import first_line
from ipfacediff.runtime.video import VIDEO_EXTS

SCHEMA = "ipfacediff.jobs.bench/1"
DEFAULT_PIPELINES = ["ip-facediff", "per-frame", "tokenflow", "sdedit"]
DEFAULT_METRICS = [
    "id-similarity",
    "tl-id",
    "tg-id",
    "clip-text",
    "clip-directional",
    "warp-error",
    "flicker",
    "reconstruction",
    "propagation",
]


@dataclass
class BenchRequest:
    videos: list[Path]
    output: Path
    prompts: dict[str, list[str]] = field(default_factory=dict)  # clip stem (or "*") -> prompts
    pipelines: list[str] = field(default_factory=lambda: list(DEFAULT_PIPELINES))
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    backbone: str = "auto"
    steps: int = 10
    max_frames: int | None = 16
    sets: dict[str, Any] = field(default_factory=dict)
    registry_file: str | None = None
    face_processor: str | None = None
    seed: int = 0
    device: str = "cpu"
    executor: str = "local"
    show_progress: bool = True
    ground_truth: bool = False  # the ground-truth propagation benchmark instead of pipelines (groundtruth.py)
    propagators: list[str] = field(default_factory=lambda: ["flow-residual", "mesh-flow", "layered"])
    intervals: list[int] = field(default_factory=lambda: [8, 16])  # 0: the first frame only
    edits: list[str] = field(default_factory=lambda: ["paint+glasses", "lips", "smile"])
    truths: list[str] = field(default_factory=lambda: ["dlib68"])  # groundtruth.TRUTHS
    baselines: list[str] = field(
        default_factory=lambda: ["source", "copy-nearest", "flow-warp-edited", "taesd-roundtrip", "truth-resmoothed"]
    )  # groundtruth.BASELINES
    # which networks score the identity metrics: auto (an independent one and the identity loss's),
    # independent, loss, or encoder names (see plan_identity)
    identity_encoders: list[str] = field(default_factory=lambda: ["auto"])


# ------------------------------------------------------------------------------------------ inputs
def find_videos(items: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            p = Path(part.strip()).expanduser()
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTS)
                if not found:
                    raise InputError(f"--videos {p}: the folder holds no videos ({', '.join(sorted(VIDEO_EXTS))})")
                out += found
            elif p.is_file():
                out.append(p)
            else:
                raise InputError(f"--videos {p}: no such file or folder")
    if not out:
        raise InputError("--videos: give clips (files or a folder)")
    stems = [p.stem for p in out]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise InputError(f"--videos: two clips are named {dup[0]!r}; clips are keyed by file name")
    return out


def load_prompts_file(path: str | Path | None) -> dict[str, list[str]]:
    """clip -> prompts from YAML (``{clip: [prompts], "*": [...]}``) or CSV (``clip,prompt`` rows;
    ``*`` for every clip). Without a file: ``eyeglasses`` for every clip."""
    if not path:
        return {"*": ["eyeglasses"]}
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--prompts {p}: no such file")
    out: dict[str, list[str]] = {}
    if p.suffix.lower() == ".csv":
        with p.open(newline="") as fh:
            for i, row in enumerate(csv.reader(fh)):
                if (
                    not row
                    or row[0].startswith("#")
                    or (i == 0 and [c.strip().lower() for c in row[:2]] == ["clip", "prompt"])
                ):
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise InputError(f"--prompts {p}: line {i + 1}: expected 'clip,prompt'")
                out.setdefault(row[0].strip(), []).append(row[1].strip())
    else:
        import yaml

        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"--prompts {p}: not valid YAML ({first_line(exc)})") from exc
        if not isinstance(data, dict):
            raise InputError(f"--prompts {p}: expected a mapping clip -> list of prompts")
        for clip, prompts in data.items():
            prompts = [prompts] if isinstance(prompts, str) else prompts
            if not isinstance(prompts, list) or not all(isinstance(x, str) and x.strip() for x in prompts):
                raise InputError(f"--prompts {p}: {clip}: expected a list of prompts")
            out[str(clip)] = [x.strip() for x in prompts]
    if not out:
        raise InputError(f"--prompts {p}: no prompts in the file")
    return out


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"
    return f"{s}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


# -------------------------------------------------------------------------------------------- jobs
def plan_groundtruth(req: BenchRequest) -> list[dict[str, Any]]:
    """One job per (clip, truth, synthetic edit): every propagator and baseline at every keyframe
    interval. The dlib68 truth takes any edit of its layers (``paint+glasses``); the FaceMesh truth
    runs each of the requested layers it has (paint, glasses) on its own."""
    import ipfacediff.jobs.bench.truth68 as truth68
    from ipfacediff.catalog import get_catalog
    from ipfacediff.jobs.bench.groundtruth import BASELINES, EDITS, TRUTHS

    catalog = get_catalog()
    for p in req.propagators:
        if catalog.get("propagator", p, "--propagators").cls.space != "pixels":
            raise ParameterError(
                f"--propagators {p}: the ground-truth benchmark runs pixel-space propagators (as `propagate` does)"
            )
    for b in req.baselines:
        if b not in BASELINES:
            raise ParameterError(f"--baselines {b}: one of {', '.join(BASELINES)}")
    for t in req.truths:
        if t not in TRUTHS:
            raise ParameterError(f"--truth {t}: one of {', '.join(TRUTHS)}")
    for e in req.edits:
        try:
            truth68.parse_edit(e)
        except ValueError:
            raise ParameterError(
                f"--edits {e}: layers {', '.join(truth68.LAYERS)}, one or several joined with + (paint+glasses)"
            ) from None
    if not req.intervals or any(i == 1 or i < 0 for i in req.intervals):
        raise ParameterError("--intervals: keyframe intervals of at least 2 (or first: the first frame only)")
    per_truth = {
        "dlib68": list(req.edits),
        "facemesh": [x for x in EDITS if any(x in truth68.parse_edit(e) for e in req.edits)],
    }
    jobs = []
    for clip in req.videos:
        for truth, e in [(t, e) for t in req.truths for e in per_truth[t]]:
            j = {
                "kind": "ground-truth",
                "clip": str(clip),
                "truth": truth,
                "edit": e,
                "baselines": list(req.baselines),
                "prompt": None,
                "pipeline": "ground-truth",
                "propagators": list(req.propagators),
                "intervals": list(req.intervals),
                "max_frames": req.max_frames,
                "sets": req.sets,
                "seed": req.seed,
                "face_processor": req.face_processor,
                "backbone": None,
                "steps": None,
                "registry_file": req.registry_file,
                "device": req.device,
                "threads": None,
            }
            j["id"] = hashlib.sha256(json.dumps(j, sort_keys=True, default=str).encode()).hexdigest()[:16]
            j["dir"] = str(req.output / "jobs" / Path(j["clip"]).stem / f"ground-truth-{truth}" / e)
            jobs.append(j)
    return jobs


# ------------------------------------------------------------------------------------ identity
# independent identity networks, preferred in this order (then any other registered one that builds)
INDEPENDENT_PREFERENCE = ("dlib-resnet",)


def column_metric(column: str) -> tuple[str, str | None]:
    """A results column's metric and the identity network that scored it: ``id-similarity@dlib-resnet``
    -> (``id-similarity``, ``dlib-resnet``); other columns are their metric's name."""
    name, _, encoder = column.partition("@")
    return name, encoder or None


def is_identity_metric(catalog, name: str) -> bool:
    """A metric scored by an identity network: its parameters have an ``encoder``."""
    params = catalog.get("metric", name).cls.Params
    return params is not None and "encoder" in {f.name for f in dataclasses.fields(params)}


def loss_network(pipe, req: BenchRequest, registry) -> tuple[str | None, str]:
    """The identity network the pipeline's identity loss trained with, and how that is known: the
    identity adapter's ``finetune.json`` (written by ``ipfacediff finetune``) when the run's backbone
    loads one, else the pipeline's ``identity_encoder`` (the network its recipe trains with)."""
    extra = req.sets.get("backbone", {}) if isinstance(req.sets.get("backbone"), dict) else {}
    name = req.backbone if req.backbone != "auto" else pipe.backbone
    params: dict[str, Any] = {}
    if name in registry.backbones:
        params = registry.backbones[name].component.raw_params()
    elif name == "auto":
        from ipfacediff.jobs.common import find_stable_diffusion

        found = find_stable_diffusion(registry)
        params = found[0] if found else {}
    adapters = {**(params.get("adapters") or {}), **(extra.get("adapters") or {})}
    adapter = adapters.get("identity")
    if adapter:
        folder = Path(str(adapter)).expanduser()
        report = (folder if folder.is_dir() else folder.parent) / "finetune.json"  # a folder or its .safetensors
        try:
            used = json.loads(report.read_text())["components"]["identity_encoder"]["component"]
            return str(used), f"the identity adapter's {report}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    ref = pipe.components.get("identity_encoder")
    return (ref.name if ref else None), f"pipeline {pipe.name}'s identity_encoder"


def independent_network(catalog, exclude: set[str]) -> tuple[str | None, str]:
    """The first identity network outside ``exclude`` that builds here (``dlib-resnet`` first), or
    None and why not."""
    from ipfacediff.errors import IPFaceDiffError

    names = [n for n in INDEPENDENT_PREFERENCE if n in catalog.specs["identity_encoder"]]
    names += sorted(n for n in catalog.specs["identity_encoder"] if n not in names)
    problems = []
    for n in names:
        if n in exclude:
            continue
        try:
            catalog.build("identity_encoder", n)
            return n, ""
        except IPFaceDiffError as exc:
            problems.append(f"{n}: {exc.one_line()}")
    return None, "; ".join(problems) or "no identity network other than the loss's is registered"


def plan_identity(req: BenchRequest, registry, catalog, metric_params: dict[str, Any]) -> tuple[list[str], dict]:
    """The results columns (``req.metrics`` with each identity metric split into one column per
    network, ``METRIC@NETWORK``) and the ``identity`` section of the results: which network is
    independent of every pipeline's identity loss, which one each pipeline's loss trained with.

    ``req.identity_encoders``: ``auto`` (the independent network and the loss networks; the loss's
    alone, with a note, when no independent one builds here), ``independent``, ``loss``, or names.
    ``--set metrics.NAME.encoder=X`` scores that metric with X alone."""
    losses = {p: loss_network(registry.pipeline(p), req, registry) for p in req.pipelines}
    loss_names = sorted({n for n, _ in losses.values() if n})
    independent, why_not = independent_network(catalog, set(loss_names))
    chosen: list[str] = []
    for item in req.identity_encoders:
        if item == "auto":
            chosen += ([independent] if independent else []) + loss_names
        elif item == "independent":
            if independent is None:
                raise ParameterError(f"--identity-encoders independent: no independent identity network ({why_not})")
            chosen.append(independent)
        elif item == "loss":
            chosen += loss_names
        else:
            catalog.get("identity_encoder", item, "--identity-encoders")
            chosen.append(item)
    chosen = list(dict.fromkeys(chosen))
    columns = []
    for m in req.metrics:
        if not is_identity_metric(catalog, m):
            columns.append(m)
            continue
        fixed = metric_params.get(m, {}).get("encoder")
        columns += [f"{m}@{enc}" for enc in ([fixed] if fixed else chosen)]
    notes = []
    if independent is None and any("@" in c for c in columns):
        notes.append(
            f"no identity network independent of the identity loss here ({why_not}): identity is scored by "
            f"the loss's own network ({', '.join(loss_names)}), which overstates it for adapters trained against it"
        )
    info = {
        "networks": chosen,
        "independent": independent,
        "loss_networks": {p: {"network": n, "from": how} for p, (n, how) in losses.items()},
        "notes": notes,
    }
    return columns, info


@dataclass
class BenchPlan:
    """The jobs of a benchmark, its results columns (metrics, identity ones per network) and the
    ``identity`` section of its results (:func:`plan_identity`)."""

    jobs: list[dict[str, Any]]
    columns: list[str]
    identity: dict[str, Any]


def plan_jobs(req: BenchRequest, registry) -> BenchPlan:
    from ipfacediff.catalog import get_catalog

    catalog = get_catalog()
    for m in req.metrics:
        catalog.get("metric", m, "--metrics")  # unknown metric: the registry error names the valid ones
    jobs: list[dict[str, Any]] = []
    sets = {k: v for k, v in req.sets.items() if k != "metrics"}
    metric_params = req.sets.get("metrics", {})
    if not isinstance(metric_params, dict) or not all(isinstance(v, dict) for v in metric_params.values()):
        raise ParameterError(
            "--set metrics...: give metrics.NAME.PARAM=VALUE, e.g. metrics.clip-text.weights=/path/clip.safetensors"
        )
    for m, p in metric_params.items():
        if m not in req.metrics:
            raise ParameterError(
                f"--set metrics.{m}...: {m!r} is not among the metrics of this run ({', '.join(req.metrics)})"
            )
        catalog.validate("metric", m, p, f"--set metrics.{m}")
    columns, identity = plan_identity(req, registry, catalog, metric_params)
    inputs = {c: catalog.get("metric", column_metric(c)[0]).cls.inputs for c in columns}
    import torch

    # every job computes with the planning process's torch thread count, whichever executor runs it:
    # Ray's workers default to one thread, and a float sum split over other threads differs in its
    # last bits, which a diffusion loop amplifies (0.1401 vs 0.1385 id-similarity on the same job)
    common = {
        "backbone": req.backbone,
        "steps": req.steps,
        "max_frames": req.max_frames,
        "sets": sets,
        "metric_params": metric_params,
        "seed": req.seed,
        "registry_file": req.registry_file,
        "face_processor": req.face_processor,
        "device": req.device,
        "threads": torch.get_num_threads(),
    }
    for clip in req.videos:
        prompts = req.prompts.get(clip.stem, req.prompts.get(clip.name, req.prompts.get("*", [])))
        for name in req.pipelines:
            pipe = registry.pipeline(name)
            for prompt in prompts:
                jobs.append(
                    {
                        "kind": "edit",
                        "clip": str(clip),
                        "prompt": prompt,
                        "pipeline": name,
                        "metrics": [c for c in columns if inputs[c] == "edit"],
                        **common,
                    }
                )
            if any(v == "null-edit" for v in inputs.values()):
                jobs.append(
                    {
                        "kind": "null-edit",
                        "clip": str(clip),
                        "prompt": None,
                        "pipeline": name,
                        "metrics": [c for c in columns if inputs[c] == "null-edit"],
                        **common,
                    }
                )
            if (
                any(v == "propagation" for v in inputs.values())
                and "propagator" in pipe.components  # latents: the job propagates the keyframes' own latents
                and catalog.get("propagator", pipe.components["propagator"].name).cls.space == "latents"
            ):
                jobs.append(
                    {
                        "kind": "propagation",
                        "clip": str(clip),
                        "prompt": None,
                        "pipeline": name,
                        "metrics": [c for c in columns if inputs[c] == "propagation"],
                        **common,
                    }
                )
    for j in jobs:
        j["id"] = hashlib.sha256(
            json.dumps({k: v for k, v in j.items()}, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        where = slug(j["prompt"]) if j["kind"] == "edit" else j["kind"]
        j["dir"] = str(req.output / "jobs" / Path(j["clip"]).stem / j["pipeline"] / where)
    return BenchPlan(jobs, columns, identity)
