"""The benchmark harness: pipelines compared on clips and prompts, like a paper's tables, with the cost of each.

``ipfacediff bench --videos DIR --pipelines ip-facediff,per-frame,tokenflow,sdedit --backbone tiny -o OUT``.

Jobs (each resumable: a finished job's ``result.json`` is kept and the job skipped on a rerun with
the same settings):

* ``edit``: one (clip, prompt, pipeline) edit, then the ``edit`` metrics of the edited video
  against the source (identity, CLIP, temporal) and the edit report's cost (UNet evaluations per
  frame, wall time per stage, peak memory);
* ``null-edit``: one (clip, pipeline) run with the source prompt only, for ``reconstruction``;
* ``propagation``: one (clip, pipeline with a propagator): the keyframes' own latents propagated to
  the other frames, for ``propagation`` (what the propagator loses, independent of any edit).

Outputs in OUT: ``results.json`` (versioned schema, one row per job), a rich table in the terminal
(pipelines x metrics, the best of each column marked), ``report.html`` with per-clip strips, metric
per frame plots and a cost-vs-quality plot (pictures in ``report/``), and ``jobs/`` with every
edited video and report. ``--executor ray`` runs the same jobs as Ray tasks.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import html
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError, ParameterError

SCHEMA = "ipfacediff.bench/1"
DEFAULT_PIPELINES = ["ip-facediff", "per-frame", "tokenflow", "sdedit"]
DEFAULT_METRICS = ["id-similarity", "tl-id", "tg-id", "clip-text", "clip-directional", "warp-error", "flicker", "reconstruction", "propagation"]
VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


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
                if not row or row[0].startswith("#") or (i == 0 and [c.strip().lower() for c in row[:2]] == ["clip", "prompt"]):
                    continue
                if len(row) < 2 or not row[1].strip():
                    raise InputError(f"--prompts {p}: line {i + 1}: expected 'clip,prompt'")
                out.setdefault(row[0].strip(), []).append(row[1].strip())
    else:
        import yaml

        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"--prompts {p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
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
def plan_jobs(req: BenchRequest, registry) -> list[dict[str, Any]]:
    from .catalog import get_catalog

    catalog = get_catalog()
    for m in req.metrics:
        catalog.get("metric", m, "--metrics")  # unknown metric: the registry error names the valid ones
    inputs = {m: catalog.get("metric", m, "--metrics").cls.inputs for m in req.metrics}
    jobs: list[dict[str, Any]] = []
    sets = {k: v for k, v in req.sets.items() if k != "metrics"}
    metric_params = req.sets.get("metrics", {})
    if not isinstance(metric_params, dict) or not all(isinstance(v, dict) for v in metric_params.values()):
        raise ParameterError("--set metrics...: give metrics.NAME.PARAM=VALUE, e.g. metrics.clip-text.weights=/path/clip.safetensors")
    for m, p in metric_params.items():
        if m not in req.metrics:
            raise ParameterError(f"--set metrics.{m}...: {m!r} is not among the metrics of this run ({', '.join(req.metrics)})")
        catalog.validate("metric", m, p, f"--set metrics.{m}")
    common = {"backbone": req.backbone, "steps": req.steps, "max_frames": req.max_frames, "sets": sets, "metric_params": metric_params, "seed": req.seed,
              "registry_file": req.registry_file, "face_processor": req.face_processor, "device": req.device}
    for clip in req.videos:
        prompts = req.prompts.get(clip.stem, req.prompts.get(clip.name, req.prompts.get("*", [])))
        for name in req.pipelines:
            pipe = registry.pipeline(name)
            for prompt in prompts:
                jobs.append({"kind": "edit", "clip": str(clip), "prompt": prompt, "pipeline": name,
                             "metrics": [m for m in req.metrics if inputs[m] == "edit"], **common})
            if any(v == "null-edit" for v in inputs.values()):
                jobs.append({"kind": "null-edit", "clip": str(clip), "prompt": None, "pipeline": name,
                             "metrics": [m for m in req.metrics if inputs[m] == "null-edit"], **common})
            if any(v == "propagation" for v in inputs.values()) and "propagator" in pipe.components:
                jobs.append({"kind": "propagation", "clip": str(clip), "prompt": None, "pipeline": name,
                             "metrics": [m for m in req.metrics if inputs[m] == "propagation"], **common})
    for j in jobs:
        j["id"] = hashlib.sha256(json.dumps({k: v for k, v in j.items()}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        where = slug(j["prompt"]) if j["kind"] == "edit" else j["kind"]
        j["dir"] = str(req.output / "jobs" / Path(j["clip"]).stem / j["pipeline"] / where)
    return jobs


def _read_frames(path: str, n: int) -> np.ndarray:
    from .video import open_frames

    src = open_frames(path)
    try:
        return src.get(list(range(min(n, len(src)))))
    finally:
        src.close()


_BUILT: dict[str, Any] = {}


def _metric(name: str, device: str, params: dict[str, Any]):
    """Metric components are built once per process (their detectors and encoders are reused)."""
    from .catalog import get_catalog

    key = f"{name}|{device}|{json.dumps(params, sort_keys=True, default=str)}"
    if key not in _BUILT:
        _BUILT[key] = get_catalog().build("metric", name, params, f"--set metrics.{name}").to(device)
    return _BUILT[key]


def _metric_rows(names: list[str], source: np.ndarray, edited: np.ndarray, context: dict[str, Any], device: str,
                 params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in names:
        m = _metric(name, device, params.get(name, {}))
        res = m.compute_with_context(source, edited, context)
        value = float(res["value"])
        out[name] = {k: v for k, v in res.items() if k != "value"} | {"value": value if np.isfinite(value) else None}
    return out


class _RssPeak:
    """Peak resident memory of this process *during* a job, sampled every 50 ms from /proc (the
    edit report's ``ru_maxrss`` is a maximum since the process started, which jobs sharing one
    process would inherit from each other)."""

    def __enter__(self):
        import threading

        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _rss() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (in this process); returns its row, also written to ``<job dir>/result.json``."""
    from .edit import EditRequest, run_edit
    from .registry import load_registry

    job_dir = Path(job["dir"])
    done = job_dir / "result.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("job_id") == job["id"] and row.get("schema") == SCHEMA:
            return row | {"skipped": True}
    job_dir.mkdir(parents=True, exist_ok=True)
    reg = load_registry(job["registry_file"])
    pipeline = reg.pipeline(job["pipeline"])
    t0 = time.perf_counter()
    row: dict[str, Any] = {"schema": SCHEMA, "job_id": job["id"], "kind": job["kind"], "clip": Path(job["clip"]).stem, "clip_path": job["clip"],
                           "prompt": job["prompt"], "pipeline": job["pipeline"], "backbone": job["backbone"], "steps": job["steps"],
                           "seed": job["seed"], "dir": str(job_dir)}
    sets = job["sets"]
    inv = pipeline.components.get("inverter")
    if inv is not None and hasattr(inv.params, "cache") and "cache" not in sets.get("inverter", {}):
        # cost is compared across pipelines: no job may reuse another job's cached inversion
        # (bench_cost.py measures what the cache saves)
        sets = {**sets, "inverter": {**sets.get("inverter", {}), "cache": False}}
    if job["kind"] in ("edit", "null-edit"):
        out = job_dir / "edited.mp4"
        with _RssPeak() as mem:
            rep = run_edit(EditRequest(input=Path(job["clip"]), prompt=job["prompt"] or "", pipeline=pipeline, registry=reg, output=out,
                                       backbone=job["backbone"], steps=job["steps"], max_frames=job["max_frames"], sets=sets, seed=job["seed"],
                                       face_processor=job["face_processor"], device=job["device"], overwrite=True, show_progress=False,
                                       null_edit=job["kind"] == "null-edit", cache=False))
        n = rep["frames"]
        source, edited = _read_frames(job["clip"], n), _read_frames(str(out), n)
        context = {"target_prompt": rep["target_prompt"], "source_prompt": rep["settings"]["source_prompt"], "fps": rep["input"].get("fps")}
        row["metrics"] = _metric_rows(job["metrics"], source, edited, context, job["device"], job["metric_params"])
        row["frames"] = n
        row["keyframes"] = rep["keyframes"]
        row["output"] = str(out)
        row["cost"] = {"unet_evals_per_frame": rep["unet_evaluations"]["per_output_frame"], "unet_evals": rep["unet_evaluations"]["by_stage"],
                       # model loading is paid once per process, not per frame: left out of the comparison
                       "seconds": rep["timings_s"]["total"] - rep["timings_s"].get("load_models", 0.0),
                       "seconds_per_frame": (rep["timings_s"]["total"] - rep["timings_s"].get("load_models", 0.0)) / max(n, 1),
                       "timings_s": rep["timings_s"], "inversion_cached": rep.get("inversion_cached"),
                       "peak_memory_mb": rep["peak_memory_mb"] if job["device"].startswith("cuda") else round(mem.peak, 1)}
        row["backbone_random"] = rep["backbone"]["random_weights"]
        row["warnings"] = rep["warnings"]
    else:
        src, rebuilt, keys, frames = propagation_pair(job, reg, pipeline)
        np.savez_compressed(job_dir / "propagation.npz", source=src, rebuilt=rebuilt)
        row["metrics"] = _metric_rows(job["metrics"], src, rebuilt, {}, job["device"], job["metric_params"])
        row["frames"] = frames
        row["keyframes"] = keys
    row["seconds"] = round(time.perf_counter() - t0, 3)
    tmp = done.with_name(f".result.{os.getpid()}.json")
    tmp.write_text(json.dumps(row, indent=1, default=str))
    os.replace(tmp, done)
    return row


def propagation_pair(job: dict[str, Any], reg, pipeline) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """The source face crops (VAE round trip) of the non-key frames and the same crops rebuilt by the
    pipeline's propagator from the keyframes' own latents."""
    import torch

    from .catalog import get_catalog
    from .edit import _to_uint8, align_and_encode, detect_track, pick_keyframes, resolve_backbone
    from .params import validate_params
    from .registry import PipelineSettings
    from .video import open_frames

    catalog = get_catalog()
    sets = job["sets"]
    settings = validate_params(PipelineSettings, {**dataclasses.asdict(pipeline.settings), **sets.get("settings", {})}, f"pipeline {pipeline.name}")
    fp = job["face_processor"]
    ref = pipeline.components["face_processor"]
    processor = (catalog.build("face_processor", fp, sets.get("face_processor", {})) if fp else
                 catalog.build(ref.kind, ref.name, {**ref.raw_params(), **sets.get("face_processor", {})}, ref.where))
    pref = pipeline.components["propagator"]
    propagator = catalog.build(pref.kind, pref.name, {**pref.raw_params(), **sets.get("propagator", {})}, pref.where)
    backbone, _ = resolve_backbone(job["backbone"], sets, reg, pipeline.backbone)
    torch.manual_seed(job["seed"])
    source = open_frames(job["clip"])
    try:
        n = len(source) if job["max_frames"] is None else min(len(source), job["max_frames"])
        track = detect_track(processor, source, n, settings.landmark_smoothing, False)
        face_frames = [i for i, d in enumerate(track) if d is not None]
        if len(face_frames) < 2:
            raise InputError(f"{job['clip']}: propagation needs a face in at least 2 frames")
        _, _, z = align_and_encode(processor, backbone, source, n, track, face_frames, settings.batch_size, False)
    finally:
        source.close()
    keys = pick_keyframes(settings, sets.get("settings", {}), face_frames, track)
    rebuilt = propagator.propagate(z, keys, z[keys])
    others = [i for i in range(len(face_frames)) if i not in keys] or list(range(len(face_frames)))
    rt = _to_uint8(torch.cat([backbone.decode_latents(z[others][i:i + 8]) for i in range(0, len(others), 8)]))
    rb = _to_uint8(torch.cat([backbone.decode_latents(rebuilt[others][i:i + 8]) for i in range(0, len(others), 8)]))
    return rt, rb, [face_frames[k] for k in keys], n


# ---------------------------------------------------------------------------------------- executors
def run_local(jobs: list[dict[str, Any]], on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    rows = []
    for job in jobs:
        row = run_job(job)
        on_done(row)
        rows.append(row)
    return rows


def run_ray(jobs: list[dict[str, Any]], on_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """The same jobs as Ray tasks (a running cluster when RAY_ADDRESS is set, else a local Ray)."""
    try:
        import ray
    except ImportError as exc:
        raise ParameterError("--executor ray needs Ray: pip install 'ipfacediff[ray]'") from exc
    env = {k: v for k, v in os.environ.items() if k.startswith(("IPFACEDIFF_", "HF_"))}
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False}
        if not os.environ.get("RAY_ADDRESS"):
            kw["num_cpus"] = os.cpu_count() or 2
        ray.init(**kw)
        started = True
    try:
        task = ray.remote(num_cpus=1)(run_job)
        pending = {task.remote(job): i for i, job in enumerate(jobs)}
        rows: list[dict[str, Any] | None] = [None] * len(jobs)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    rows[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    raise cause if isinstance(cause, Exception) else exc
                on_done(rows[i])
        return [r for r in rows if r is not None]
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------ report
def summarize(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, float | None]]:
    """pipeline -> metric -> mean over its jobs (and the cost columns)."""
    out: dict[str, dict[str, float | None]] = {}
    for pipe in dict.fromkeys(r["pipeline"] for r in rows):
        mine = [r for r in rows if r["pipeline"] == pipe]
        col: dict[str, float | None] = {}
        for m in metrics:
            vals = [r["metrics"][m]["value"] for r in mine if m in r.get("metrics", {}) and r["metrics"][m]["value"] is not None]
            col[m] = float(np.mean(vals)) if vals else None
        edits = [r for r in mine if r["kind"] == "edit"]
        col["unet_evals_per_frame"] = float(np.mean([r["cost"]["unet_evals_per_frame"] for r in edits])) if edits else None
        col["seconds_per_frame"] = float(np.mean([r["cost"]["seconds_per_frame"] for r in edits])) if edits else None
        col["peak_memory_mb"] = float(np.max([r["cost"]["peak_memory_mb"] for r in edits])) if edits else None
        out[pipe] = col
    return out


def _notes(rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, str]:
    notes = {}
    for m in metrics:
        for r in rows:
            res = r.get("metrics", {}).get(m)
            if res and res["value"] is None and res.get("note"):
                notes[m] = res["note"]
                break
    return notes


def best_of(summary: dict[str, dict[str, float | None]], column: str, higher: bool) -> str | None:
    vals = {p: c[column] for p, c in summary.items() if c.get(column) is not None}
    if len(vals) < 2:
        return None
    return (max if higher else min)(vals, key=vals.get)


def direction(name: str) -> bool:
    from .catalog import get_catalog

    if name in ("unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"):
        return False
    return bool(get_catalog().get("metric", name).cls.higher_is_better)


def print_table(summary, metrics: list[str], notes: dict[str, str], console) -> None:
    from rich.table import Table

    cols = [*metrics, "unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"]
    table = Table(title="ipfacediff bench: mean per pipeline (* best of the column)")
    table.add_column("pipeline")
    for c in cols:
        table.add_column(c.replace("_", " ") + (" ↑" if direction(c) else " ↓"), justify="right")
    best = {c: best_of(summary, c, direction(c)) for c in cols}
    for pipe, col in summary.items():
        cells = []
        for c in cols:
            v = col.get(c)
            cells.append("n/a" if v is None else (f"[bold green]{v:.4g}*[/]" if best[c] == pipe else f"{v:.4g}"))
        table.add_row(pipe, *cells)
    if not console.is_terminal:  # a log or a pipe: print the whole table, not one squeezed to 80 columns
        from rich.console import Console

        console = Console(file=console.file, width=max(console.width, 40 + 12 * len(cols)))
    console.print(table)
    for m, note in notes.items():
        console.print(f"  {m}: {note}")


def _strip_and_plots(rows: list[dict[str, Any]], metrics: list[str], summary, out: Path) -> dict[str, Any]:
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from .facejob import make_strip

    assets = out / "report"
    assets.mkdir(parents=True, exist_ok=True)
    made: dict[str, Any] = {"clips": {}}
    edits = [r for r in rows if r["kind"] == "edit"]
    for clip in dict.fromkeys(r["clip"] for r in edits):
        mine = [r for r in edits if r["clip"] == clip]
        first_prompt = mine[0]["prompt"]
        shown = [r for r in mine if r["prompt"] == first_prompt]
        n = shown[0]["frames"]
        keys = shown[0]["keyframes"]
        idx = sorted(set(np.linspace(0, n - 1, min(n, 6)).round().astype(int).tolist()) | set(keys[:2]))[:8]
        src = _read_frames(shown[0]["clip_path"], n)
        strip_rows, labels = [[src[i] for i in idx]], ["source"]
        for r in shown:
            ed = _read_frames(r["output"], n)
            strip_rows.append([ed[i] for i in idx])
            labels.append(f"{r['pipeline']} (keyframes {', '.join(map(str, r['keyframes'][:6]))}{'...' if len(r['keyframes']) > 6 else ''})")
        strip = make_strip(strip_rows, height=112)
        name = f"strip-{clip}.png"
        cv2.imwrite(str(assets / name), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        entry = {"strip": f"report/{name}", "rows": labels, "frames": idx, "prompt": first_prompt}
        per_frame_metric = next((m for m in ("id-similarity", "tl-id", "warp-error", "flicker") if m in metrics), None)
        if per_frame_metric:
            fig, ax = plt.subplots(figsize=(6.5, 3), dpi=100)
            for r in shown:
                pf = r["metrics"].get(per_frame_metric, {}).get("per_frame")
                if pf:
                    ax.plot([np.nan if v is None else v for v in pf], label=r["pipeline"], lw=1.3)
            ax.set_xlabel("frame" if per_frame_metric in ("id-similarity",) else "frame pair")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel(per_frame_metric)
            ax.set_title(f"{clip}: {per_frame_metric} per frame ({first_prompt})", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            pname = f"per-frame-{clip}.png"
            fig.savefig(assets / pname)
            plt.close(fig)
            entry["plot"] = f"report/{pname}"
        made["clips"][clip] = entry
    quality = next((m for m in ("id-similarity", "clip-directional", "tl-id", "reconstruction") if m in metrics
                    and any(c.get(m) is not None for c in summary.values())), None)
    if quality:
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        for pipe, col in summary.items():
            if col.get("unet_evals_per_frame") is not None and col.get(quality) is not None:
                ax.scatter(col["unet_evals_per_frame"], col[quality], s=40)
                ax.annotate(pipe, (col["unet_evals_per_frame"], col[quality]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("UNet evaluations per output frame (cost)")
        ax.set_ylabel(quality)
        ax.set_title("cost vs quality", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(assets / "cost-vs-quality.png")
        plt.close(fig)
        made["cost_vs_quality"] = "report/cost-vs-quality.png"
    return made


_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var s = document.getElementById('image-check');
  s.setAttribute('data-images', imgs.length);
  s.setAttribute('data-broken', broken.length);
  s.textContent = broken.length ? broken.length + ' of ' + imgs.length + ' pictures did not load' : '';
});
</script>"""


def write_html(path: Path, rows, summary, metrics, notes, assets, settings: dict[str, Any]) -> None:
    e = html.escape
    cols = [*metrics, "unet_evals_per_frame", "seconds_per_frame", "peak_memory_mb"]
    best = {c: best_of(summary, c, direction(c)) for c in cols}
    head = "".join(f"<th>{e(c.replace('_', ' '))} {'↑' if direction(c) else '↓'}</th>" for c in cols)
    body = []
    for pipe, col in summary.items():
        cells = "".join(
            f"<td class='{'best' if best[c] == pipe else ''}'>{'n/a' if col.get(c) is None else f'{col[c]:.4g}'}</td>" for c in cols)
        body.append(f"<tr><th>{e(pipe)}</th>{cells}</tr>")
    note_html = "".join(f"<li><b>{e(m)}</b>: {e(n)}</li>" for m, n in notes.items())
    clips = []
    for clip, c in assets["clips"].items():
        labels = "".join(f"<li>{e(lbl)}</li>" for lbl in c["rows"])
        plot = f"<img src='{e(c['plot'])}' alt='metric per frame, {e(clip)}'>" if c.get("plot") else ""
        clips.append(f"<section><h3>{e(clip)} — “{e(c['prompt'])}”</h3><p>frames {e(', '.join(map(str, c['frames'])))}; rows:</p>"
                     f"<ol>{labels}</ol><img class='strip' src='{e(c['strip'])}' alt='strip {e(clip)}'>{plot}</section>")
    cq = f"<h2>Cost vs quality</h2><img src='{e(assets['cost_vs_quality'])}' alt='cost vs quality'>" if assets.get("cost_vs_quality") else ""
    random_note = "<p class='warn'>Random-weight backbone: these numbers show the mechanics, not the methods' real quality.</p>" \
        if any(r.get("backbone_random") for r in rows) else ""
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ipfacediff bench</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td.best {{ background: #d9f2d9; font-weight: bold; }} img {{ max-width: 100%; }} img.strip {{ display: block; margin: 0.5em 0; }}
.warn {{ color: #a40; }} #image-check {{ color: #c00; }}
</style></head><body>
<h1>ipfacediff bench</h1>
<p id="image-check" data-images="" data-broken=""></p>
<p>{len(rows)} jobs; backbone {e(str(settings['backbone']))}, {settings['steps']} steps, up to {settings['max_frames']} frames per clip; schema {SCHEMA}.</p>
{random_note}
<h2>Mean per pipeline</h2><table><tr><th>pipeline</th>{head}</tr>{''.join(body)}</table>
<ul>{note_html}</ul>
{cq}
<h2>Clips</h2>{''.join(clips)}
{_CHECK_SCRIPT}
</body></html>
"""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(doc)
    os.replace(tmp, path)


def run_bench(req: BenchRequest, console=None) -> dict[str, Any]:
    from .progress import progress_bar
    from .registry import load_registry

    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    if req.max_frames is not None and req.max_frames < 2:
        raise ParameterError(f"--max-frames {req.max_frames}: a benchmark needs at least 2 frames per clip")
    if req.executor not in ("local", "ray"):
        raise ParameterError(f"--executor {req.executor}: local or ray")
    reg = load_registry(req.registry_file)
    for p in req.pipelines:
        reg.pipeline(p)
    if not req.pipelines:
        raise ParameterError("--pipelines: give at least one pipeline")
    jobs = plan_jobs(req, reg)
    if not jobs:
        raise InputError("no jobs: no prompts matched the clips (see --prompts)")
    req.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with progress_bar("bench jobs", len(jobs), req.show_progress) as bar:
        runner = run_ray if req.executor == "ray" else run_local
        rows = runner(jobs, lambda row: bar.advance(description=f"{row['pipeline']} {row['clip']}"))
    summary = summarize(rows, req.metrics)
    notes = _notes(rows, req.metrics)
    settings = {"videos": [str(v) for v in req.videos], "pipelines": req.pipelines, "metrics": req.metrics, "backbone": req.backbone,
                "steps": req.steps, "max_frames": req.max_frames, "seed": req.seed, "sets": req.sets, "executor": req.executor,
                "prompts": req.prompts}
    assets = _strip_and_plots(rows, req.metrics, summary, req.output)
    write_html(req.output / "report.html", rows, summary, req.metrics, notes, assets, settings)
    result = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings,
              "jobs": len(rows), "jobs_skipped": sum(1 for r in rows if r.get("skipped")), "seconds": round(time.perf_counter() - t0, 3),
              "summary": summary, "notes": notes, "rows": [{k: v for k, v in r.items() if k != "skipped"} | {"skipped": bool(r.get("skipped"))}
                                                           for r in rows],
              "report": str(req.output / "report.html")}
    tmp = req.output / f".results.{os.getpid()}.json"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, req.output / "results.json")
    if console is not None:
        print_table(summary, req.metrics, notes, console)
    return result
