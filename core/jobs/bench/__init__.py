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
* ``ground-truth`` (``--ground-truth``): one (clip, truth, synthetic edit) whose edited video is
  known on every frame (:mod:`ipfacediff.jobs.bench.truth68`: moved by dlib's 68 landmarks, which no
  propagator follows; :mod:`ipfacediff.jobs.bench.groundtruth`: by FaceMesh); pixel-space
  propagators and baselines get the source frames and the edited keyframes (every 8 and 16 frames,
  or the first alone) and are scored on the others.
  Results: ``groundtruth.md`` (a table per keyframe interval) and ``results.json``.

Outputs in OUT: ``results.json`` (versioned schema, one row per job), a rich table in the terminal
(pipelines x metrics, the best of each column marked), ``report.html`` with per-clip strips, metric
per frame plots and a cost-vs-quality plot (pictures in ``report/``), and ``jobs/`` with every
edited video and report. ``--executor ray`` runs the same jobs as Ray tasks.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ipfacediff.errors import InputError, ParameterError
from ipfacediff.jobs.bench.executors import run_local, run_ray
from ipfacediff.jobs.bench.plan import (
    DEFAULT_METRICS,
    DEFAULT_PIPELINES,
    SCHEMA,
    BenchRequest,
    find_videos,
    load_prompts_file,
    plan_groundtruth,
    plan_jobs,
)
from ipfacediff.jobs.bench.report import _notes, _strip_and_plots, print_table, summarize, write_html
from ipfacediff.runtime.files import write_atomic

__all__ = [
    "BenchRequest",
    "DEFAULT_METRICS",
    "DEFAULT_PIPELINES",
    "SCHEMA",
    "find_videos",
    "load_prompts_file",
    "run_bench",
]


def run_bench(req: BenchRequest, console=None) -> dict[str, Any]:
    from ipfacediff.registry import load_registry
    from ipfacediff.runtime.progress import progress_bar

    if req.steps < 1:
        raise ParameterError(f"--steps {req.steps}: must be at least 1")
    if req.max_frames is not None and req.max_frames < 2:
        raise ParameterError(f"--max-frames {req.max_frames}: a benchmark needs at least 2 frames per clip")
    if req.executor not in ("local", "ray"):
        raise ParameterError(f"--executor {req.executor}: local or ray")
    if req.ground_truth:
        return _run_groundtruth(req, console)
    reg = load_registry(req.registry_file)
    for p in req.pipelines:
        reg.pipeline(p)
    if not req.pipelines:
        raise ParameterError("--pipelines: give at least one pipeline")
    plan = plan_jobs(req, reg)
    jobs, columns = plan.jobs, plan.columns
    if not jobs:
        raise InputError("no jobs: no prompts matched the clips (see --prompts)")
    req.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with progress_bar("bench jobs", len(jobs), req.show_progress) as bar:
        runner = run_ray if req.executor == "ray" else run_local
        rows = runner(jobs, lambda row: bar.advance(description=f"{row['pipeline']} {row['clip']}"))
    summary = summarize(rows, columns)
    notes = _notes(rows, columns)
    if plan.identity["notes"]:
        notes["identity"] = plan.identity["notes"][0]
    settings = {
        "videos": [str(v) for v in req.videos],
        "pipelines": req.pipelines,
        "metrics": req.metrics,
        "columns": columns,
        "identity_encoders": req.identity_encoders,
        "backbone": req.backbone,
        "steps": req.steps,
        "max_frames": req.max_frames,
        "seed": req.seed,
        "sets": req.sets,
        "executor": req.executor,
        "prompts": req.prompts,
    }
    assets = _strip_and_plots(rows, columns, summary, req.output)
    write_html(req.output / "report.html", rows, summary, columns, notes, assets, settings, plan.identity)
    result = _write_results(
        req,
        settings,
        rows,
        t0,
        summary=summary,
        notes=notes,
        identity=plan.identity,
        report=str(req.output / "report.html"),
    )
    if console is not None:
        print_table(summary, columns, notes, console, plan.identity)
    return result


def _run_groundtruth(req: BenchRequest, console=None) -> dict[str, Any]:
    from ipfacediff.jobs.bench.report import groundtruth_tables
    from ipfacediff.runtime.progress import progress_bar

    jobs = plan_groundtruth(req)
    req.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with progress_bar("ground-truth jobs", len(jobs), req.show_progress) as bar:
        runner = run_ray if req.executor == "ray" else run_local
        rows = runner(jobs, lambda row: bar.advance(description=f"{row['clip']} {row['edit']}"))
    markdown = groundtruth_tables(rows, console)
    write_atomic(req.output / "groundtruth.md", markdown)
    settings = {
        "videos": [str(v) for v in req.videos],
        "truths": req.truths,
        "baselines": req.baselines,
        "propagators": req.propagators,
        "intervals": req.intervals,
        "edits": req.edits,
        "max_frames": req.max_frames,
        "seed": req.seed,
        "sets": req.sets,
        "executor": req.executor,
    }
    return _write_results(req, settings, rows, t0, tables=str(req.output / "groundtruth.md"))


def _write_results(
    req: BenchRequest, settings: dict[str, Any], rows: list[dict], t0: float, **extra
) -> dict[str, Any]:
    """``results.json``: the schema, the run's settings, the jobs (skipped ones counted and marked), the
    wall time, the rows and ``extra`` (the summary, notes, where the report or tables are)."""
    result = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "jobs": len(rows),
        "jobs_skipped": sum(1 for r in rows if r.get("skipped")),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    rows_out = [{k: v for k, v in r.items() if k != "skipped"} | {"skipped": bool(r.get("skipped"))} for r in rows]
    extra_first = {k: v for k, v in extra.items() if k in ("summary", "notes", "identity")}
    result |= extra_first | {"rows": rows_out} | {k: v for k, v in extra.items() if k not in extra_first}
    write_atomic(req.output / "results.json", json.dumps(result, indent=1, default=str))
    return result
