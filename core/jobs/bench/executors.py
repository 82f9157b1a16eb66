"""Executors: the same jobs in this process, one after the other, or as Ray tasks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ipfacediff.errors import ParameterError
from ipfacediff.jobs.bench.run import run_job


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
    import torch

    env = {k: v for k, v in os.environ.items() if k.startswith(("IPFACEDIFF_", "HF_"))}
    # workers start with the driver's thread settings (Ray's default is one OpenMP thread), and MKL may
    # not pick fewer threads on its own: a float sum split otherwise differs in its last bits
    threads = str(jobs[0].get("threads") or torch.get_num_threads()) if jobs else "1"
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "MKL_DYNAMIC": "FALSE"})
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
                    raise (cause if isinstance(cause, Exception) else exc) from None
                on_done(rows[i])
        return [r for r in rows if r is not None]
    finally:
        if started:
            ray.shutdown()
