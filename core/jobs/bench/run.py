"""Running one benchmark job in this process: an edit (or a null edit) and its metrics and cost, or a
propagation job; its row is written to ``<job dir>/result.json`` (a rerun skips it)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ipfacediff.errors import InputError
from ipfacediff.jobs.bench.plan import SCHEMA
from ipfacediff.runtime.files import write_atomic


def _read_frames(path: str, n: int) -> np.ndarray:
    from ipfacediff.runtime.video import open_frames

    src = open_frames(path)
    try:
        return src.get(list(range(min(n, len(src)))))
    finally:
        src.close()


_BUILT: dict[str, Any] = {}


def _metric(name: str, device: str, params: dict[str, Any]):
    """Metric components are built once per process (their detectors and encoders are reused)."""
    from ipfacediff.catalog import get_catalog

    key = f"{name}|{device}|{json.dumps(params, sort_keys=True, default=str)}"
    if key not in _BUILT:
        _BUILT[key] = get_catalog().build("metric", name, params, f"--set metrics.{name}").to(device)
    return _BUILT[key]


def _metric_rows(
    names: list[str],
    source: np.ndarray,
    edited: np.ndarray,
    context: dict[str, Any],
    device: str,
    params: dict[str, Any],
) -> dict[str, Any]:
    from ipfacediff.jobs.bench.plan import column_metric

    out = {}
    for column in names:  # a metric's name, or METRIC@NETWORK for an identity metric (plan_identity)
        name, encoder = column_metric(column)
        m = _metric(name, device, params.get(name, {}) | ({"encoder": encoder} if encoder else {}))
        res = m.compute_with_context(source, edited, context)
        value = float(res["value"])
        out[column] = {k: v for k, v in res.items() if k != "value"} | {"value": value if np.isfinite(value) else None}
        if encoder:
            out[column]["network"] = encoder
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
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
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
    """Run one job (in this process, with the job's torch thread count); returns its row, also
    written to ``<job dir>/result.json``."""
    import torch

    job_dir = Path(job["dir"])
    done = job_dir / "result.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("job_id") == job["id"] and row.get("schema") == SCHEMA:
            return row | {"skipped": True}
    job_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(job.get("threads") or threads))
    try:
        return _run_job(job, job_dir, done)
    finally:
        torch.set_num_threads(threads)


def _run_job(job: dict[str, Any], job_dir: Path, done: Path) -> dict[str, Any]:
    from ipfacediff.jobs.edit import EditRequest, run_edit
    from ipfacediff.registry import load_registry

    if job["kind"] == "ground-truth":
        from ipfacediff.jobs.bench.groundtruth import run_groundtruth_job

        t0 = time.perf_counter()
        row = {
            "schema": SCHEMA,
            "job_id": job["id"],
            "kind": job["kind"],
            "clip": Path(job["clip"]).stem,
            "clip_path": job["clip"],
            "edit": job["edit"],
            "pipeline": "ground-truth",
            "dir": str(job_dir),
            **run_groundtruth_job(job, job_dir),
        }
        row["seconds"] = round(time.perf_counter() - t0, 3)
        write_atomic(done, json.dumps(row, indent=1, default=str))
        return row
    reg = load_registry(job["registry_file"])
    pipeline = reg.pipeline(job["pipeline"])
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "schema": SCHEMA,
        "job_id": job["id"],
        "kind": job["kind"],
        "clip": Path(job["clip"]).stem,
        "clip_path": job["clip"],
        "prompt": job["prompt"],
        "pipeline": job["pipeline"],
        "backbone": job["backbone"],
        "steps": job["steps"],
        "seed": job["seed"],
        "dir": str(job_dir),
    }
    sets = job[
        "sets"
    ]  # cache=False below: no job reuses another job's stages (bench_cost.py measures what the cache saves)
    if job["kind"] in ("edit", "null-edit"):
        out = job_dir / "edited.mp4"
        with _RssPeak() as mem:
            rep = run_edit(
                EditRequest(
                    input=Path(job["clip"]),
                    prompt=job["prompt"] or "",
                    pipeline=pipeline,
                    registry=reg,
                    output=out,
                    backbone=job["backbone"],
                    steps=job["steps"],
                    max_frames=job["max_frames"],
                    sets=sets,
                    seed=job["seed"],
                    face_processor=job["face_processor"],
                    device=job["device"],
                    overwrite=True,
                    show_progress=False,
                    null_edit=job["kind"] == "null-edit",
                    cache=False,
                )
            )
        n = rep["frames"]
        source, edited = _read_frames(job["clip"], n), _read_frames(str(out), n)
        context = {
            "target_prompt": rep["target_prompt"],
            "source_prompt": rep["settings"]["source_prompt"],
            "fps": rep["input"].get("fps"),
        }
        row["metrics"] = _metric_rows(job["metrics"], source, edited, context, job["device"], job["metric_params"])
        row["frames"] = n
        row["keyframes"] = rep["keyframes"]
        row["output"] = str(out)
        row["cost"] = {
            "unet_evals_per_frame": rep["unet_evaluations"]["per_output_frame"],
            "unet_evals": rep["unet_evaluations"]["by_stage"],
            # model loading is paid once per process, not per frame: left out of the comparison
            "seconds": rep["timings_s"]["total"] - rep["timings_s"].get("load_models", 0.0),
            "seconds_per_frame": (rep["timings_s"]["total"] - rep["timings_s"].get("load_models", 0.0)) / max(n, 1),
            "timings_s": rep["timings_s"],
            "inversion_cached": rep.get("inversion_cached"),
            "peak_memory_mb": rep["peak_memory_mb"] if job["device"].startswith("cuda") else round(mem.peak, 1),
        }
        row["backbone_random"] = rep["backbone"]["random_weights"]
        row["warnings"] = rep["warnings"]
    else:
        src, rebuilt, keys, frames = propagation_pair(job, reg, pipeline)
        np.savez_compressed(job_dir / "propagation.npz", source=src, rebuilt=rebuilt)
        row["metrics"] = _metric_rows(job["metrics"], src, rebuilt, {}, job["device"], job["metric_params"])
        row["frames"] = frames
        row["keyframes"] = keys
    row["seconds"] = round(time.perf_counter() - t0, 3)
    write_atomic(done, json.dumps(row, indent=1, default=str))
    return row


def propagation_pair(job: dict[str, Any], reg, pipeline) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """The source face crops (VAE round trip) of the non-key frames and the same crops rebuilt by the
    pipeline's propagator from the keyframes' own latents. The clip's stages run as an edit runs
    them (:class:`~ipfacediff.jobs.edit.EditJob`: components, face track, keyframes, latents)."""
    import torch

    from ipfacediff.interfaces import PropagationInput
    from ipfacediff.jobs.edit import EditJob, EditRequest, plan_stages
    from ipfacediff.runtime.frames import to_uint8

    req = EditRequest(
        input=Path(job["clip"]),
        prompt="",
        pipeline=pipeline,
        registry=reg,
        backbone=job["backbone"],
        max_frames=job["max_frames"],
        sets=job["sets"],
        seed=job["seed"],
        face_processor=job["face_processor"] or None,
        show_progress=False,
        null_edit=True,
        cache=False,
    )
    with EditJob(req, plan_stages(req)) as run:
        run.build()
        run.detect()
        if len(run.face_frames) < 2:
            raise InputError(f"{job['clip']}: propagation needs a face in at least 2 frames")
        run.encode()
        z = run.rows(range(len(run.face_frames)))
        keys, backbone, n = run.keys, run.backbone, run.n
        face_frames = list(run.face_frames)
    propagator = run.components["propagator"]
    rebuilt = propagator.propagate(
        PropagationInput(
            key_rows=keys, frames=list(range(len(face_frames))), features=z, source_latents=z, edited_latents=z[keys]
        )
    )
    others = [i for i in range(len(face_frames)) if i not in keys] or list(range(len(face_frames)))
    rt = to_uint8(torch.cat([backbone.decode_latents(z[others][i : i + 8]) for i in range(0, len(others), 8)]))
    rb = to_uint8(torch.cat([backbone.decode_latents(rebuilt[others][i : i + 8]) for i in range(0, len(others), 8)]))
    return rt, rb, [face_frames[k] for k in keys], n
