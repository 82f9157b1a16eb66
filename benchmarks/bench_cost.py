"""Cost benchmarks (issues 5 and 6): how editing cost grows with clip length, what a cached inversion
saves, latent-nn (hnswlib) against exact-nn at growing token counts, peak memory at 100 vs 1000
frames, and the warp error at chunk borders. Prints tables, writes JSON.

    IPFACEDIFF_MODELS=../shared/models .venv/bin/python benchmarks/bench_cost.py \
        [--only length,cache,nn,memory,borders] [--lengths 40,120,480] [-o benchmarks/results/cost.json]

Edits use the tiny backbone (random UNet, real TAESD) at 64 px with the RetinaFace face processor on
the synthetic sample clip: UNet evaluations are exact counts and scale as with any backbone; wall
times are this machine's, dominated by the VAE and detection at this size, so read them as ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ipfacediff.catalog import get_catalog
from ipfacediff.jobs.edit import EditRequest, run_edit
from ipfacediff.registry import load_registry
from ipfacediff.runtime.sample import write_sample_clip

SETS = {"backbone": {"resolution": 64, "vae": "taesd"}, "face_processor": {"verify": "none"}}


def edit(
    clip: Path,
    pipeline: str,
    out: Path,
    steps: int,
    registry,
    cache: bool = False,
    sets_extra: dict | None = None,
    **kw,
) -> dict:
    sets = {**SETS, **(sets_extra or {})}  # cache=False: no run reuses another pipeline's cached inversion
    req = EditRequest(
        input=clip,
        prompt="eyeglasses",
        pipeline=registry.pipeline(pipeline),
        registry=registry,
        output=out,
        backbone="tiny",
        steps=steps,
        sets=sets,
        overwrite=True,
        show_progress=False,
        cache=cache,
        **kw,
    )
    t0 = time.perf_counter()
    rep = run_edit(req)
    rep["wall_s"] = time.perf_counter() - t0
    return rep


def length_scaling(lengths: list[int], steps: int, work: Path, console: Console) -> list[dict]:
    reg = load_registry()
    rows = []
    for n in lengths:
        clip = write_sample_clip(work / f"clip{n}.mp4", n_frames=n, size=128, audio=False)
        for pipeline in ("ip-facediff", "ip-facediff-fast", "per-frame", "tokenflow", "tokenflow-published"):
            rep = edit(clip, pipeline, work / f"{pipeline}-{n}.mp4", steps, reg)
            rows.append(
                {
                    "frames": n,
                    "pipeline": pipeline,
                    "unet_evals_per_frame": rep["unet_evaluations"]["per_output_frame"],
                    "wall_s": round(rep["wall_s"], 2),
                    "s_per_frame": round(rep["wall_s"] / n, 4),
                    "peak_memory_mb": rep["peak_memory_mb"],
                }
            )
            console.print(f"  {n} frames, {pipeline}: {rows[-1]}")
    table = Table(
        title=f"editing cost vs clip length (tiny backbone, 64 px, {steps} steps); TokenFlow two ways: "
        "tokenflow inverts with the same steps as ip-facediff, tokenflow-published with 500 (its preprocessing)"
    )
    columns = ("frames", "pipeline", "UNet evals/frame", "vs tokenflow", "vs tokenflow-published", "wall s", "s/frame")
    for c in (*columns, "wall vs tokenflow", "wall vs tokenflow-published"):
        table.add_column(c, justify="right")
    for r in rows:
        for ref in ("tokenflow", "tokenflow-published"):
            tf = next(x for x in rows if x["frames"] == r["frames"] and x["pipeline"] == ref)
            r[f"evals_ratio_vs_{ref}"] = round(r["unet_evals_per_frame"] / tf["unet_evals_per_frame"], 4)
            r[f"wall_ratio_vs_{ref}"] = round(r["wall_s"] / tf["wall_s"], 4)
        table.add_row(
            str(r["frames"]),
            r["pipeline"],
            f"{r['unet_evals_per_frame']:.2f}",
            f"{r['evals_ratio_vs_tokenflow']:.1%}",
            f"{r['evals_ratio_vs_tokenflow-published']:.1%}",
            f"{r['wall_s']:.1f}",
            f"{r['s_per_frame']:.3f}",
            f"{r['wall_ratio_vs_tokenflow']:.1%}",
            f"{r['wall_ratio_vs_tokenflow-published']:.1%}",
        )
    console.print(table)
    return rows


def cached_reedit(steps: int, work: Path, console: Console) -> dict:
    import os

    reg = load_registry()
    clip = write_sample_clip(work / "clip-cache.mp4", n_frames=40, size=128, audio=False)
    os.environ["IPFACEDIFF_CACHE"] = str(work / "inv-cache")
    first = edit(clip, "per-frame", work / "first.mp4", steps, reg, cache=True)
    req = EditRequest(
        input=clip,
        prompt="blonde hair",
        pipeline=reg.pipeline("per-frame"),
        registry=reg,
        output=work / "again.mp4",
        backbone="tiny",
        steps=steps,
        sets=SETS,
        overwrite=True,
        show_progress=False,
    )
    t0 = time.perf_counter()
    again = run_edit(req)
    again["wall_s"] = time.perf_counter() - t0
    res = {
        "first": {
            "wall_s": round(first["wall_s"], 2),
            "unet_evals": first["unet_evaluations"]["total"],
            "invert_s": round(first["timings_s"].get("invert", 0), 2),
        },
        "re_edit": {
            "wall_s": round(again["wall_s"], 2),
            "unet_evals": again["unet_evaluations"]["total"],
            "invert_s": round(again["timings_s"].get("invert", 0), 2),
            "inversion_cached": again.get("inversion_cached"),
        },
    }
    table = Table(title=f"re-edit with a cached inversion (per-frame pipeline, 40 frames, {steps} steps)")
    for c in ("run", "wall s", "UNet evals", "inversion s"):
        table.add_column(c, justify="right")
    for k in ("first", "re_edit"):
        table.add_row(k, f"{res[k]['wall_s']:.1f}", str(res[k]["unet_evals"]), f"{res[k]['invert_s']:.2f}")
    console.print(table)
    return res


def nn_scaling(console: Console) -> list[dict]:
    c = get_catalog()
    rows = []
    for side in (16, 32, 64, 96):
        g = torch.Generator().manual_seed(0)
        src = (
            torch.randn(9, 4, side, side, generator=g).cumsum(0) * 0.3
        )  # frames that drift: neighbours exist but are not identical
        keys = [0, 8]
        exact, approx = c.build("propagator", "exact-nn"), c.build("propagator", "latent-nn")
        t0 = time.perf_counter()
        ne = exact.nearest(src, keys)
        te = time.perf_counter() - t0
        t0 = time.perf_counter()
        na = approx.nearest(src, keys)
        ta = time.perf_counter() - t0
        recall = sum(int((ne[k] == na[k]).sum()) for k in ne) / sum(int(v.numel()) for v in ne.values())
        rows.append(
            {
                "tokens_per_frame": side * side,
                "exact_s": round(te, 3),
                "hnswlib_s": round(ta, 3),
                "recall_at_1": round(recall, 4),
            }
        )
    table = Table(title="latent-nn (hnswlib) vs exact-nn: 7 non-key frames x 2 keyframes, 3x3 patch features")
    for col in ("tokens/frame", "exact-nn s", "latent-nn s", "recall@1"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["tokens_per_frame"]), f"{r['exact_s']:.3f}", f"{r['hnswlib_s']:.3f}", f"{r['recall_at_1']:.3f}"
        )
    console.print(table)
    return rows


def peak_memory(lengths: list[int], steps: int, work: Path, console: Console) -> list[dict]:
    """Peak memory of an ip-facediff edit per clip length, each in a fresh process (ru_maxrss is a
    process-wide maximum)."""
    import subprocess
    import sys

    rows = []
    for n in lengths:
        clip = write_sample_clip(work / f"mem{n}.mp4", n_frames=n, size=128, audio=False)
        cmd = [
            sys.executable,
            "-m",
            "ipfacediff.cli",
            "--quiet",
            "edit",
            str(clip),
            "-p",
            "eyeglasses",
            "--backbone",
            "tiny",
            "--steps",
            str(steps),
            "--set",
            "backbone.resolution=64",
            "--set",
            "face_processor.verify=none",
            "--no-cache",
            "-o",
            str(work / f"mem{n}-out.mp4"),
            "--overwrite",
            "--json",
        ]
        rep = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        rows.append({"frames": n, "peak_memory_mb": rep["peak_memory_mb"], "wall_s": rep["timings_s"]["total"]})
    table = Table(
        title=f"peak memory of an ip-facediff edit (tiny backbone, 64 px, {steps} steps, one process per run)"
    )
    for c in ("frames", "peak MB", f"vs {lengths[0]} frames", "wall s"):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            str(r["frames"]),
            f"{r['peak_memory_mb']:.0f}",
            f"{r['peak_memory_mb'] / rows[0]['peak_memory_mb']:.2f}x",
            f"{r['wall_s']:.1f}",
        )
    console.print(table)
    return rows


def chunk_borders(steps: int, work: Path, console: Console, n: int = 96, chunk: int = 24) -> list[dict]:
    """Is there a jump where one chunk ends and the next begins? Warp error (edited frame t vs frame
    t+1 warped back by the source's optical flow) at the chunk borders vs inside the chunks, for
    ip-facediff (keyframes on both sides of each border) and tokenflow (chunks denoised on their own,
    as its users split long clips), each also as one chunk."""
    import numpy as np

    from ipfacediff.runtime.video import open_frames

    reg = load_registry()
    metric = get_catalog().build("metric", "warp-error")
    clip = write_sample_clip(work / f"borders{n}.mp4", n_frames=n, size=128, audio=False)
    src = open_frames(clip).get(list(range(n)))
    borders = list(range(chunk, n, chunk))
    rows = []
    for pipeline in ("ip-facediff", "tokenflow"):
        for c in (chunk, n):
            out = work / f"borders-{pipeline}-{c}.mp4"
            rep = edit(clip, pipeline, out, steps, reg, sets_extra={"settings": {"chunk_frames": c}})
            per = metric.compute(src, open_frames(out).get(list(range(n))))["per_frame"]
            at = [per[b - 1] for b in borders]
            inside = [v for t, v in enumerate(per) if t + 1 not in borders]
            rows.append(
                {
                    "pipeline": pipeline,
                    "chunk_frames": c,
                    "chunks": rep["chunks"],
                    "warp_error_at_borders": float(np.mean(at)),
                    "warp_error_inside": float(np.mean(inside)),
                    "ratio": float(np.mean(at) / np.mean(inside)),
                }
            )
            console.print(f"  {pipeline}, chunks of {c}: {rows[-1]}")
    table = Table(
        title=(
            f"warp error at chunk borders vs inside ({n} frames, borders every {chunk}; tiny backbone, 64 px, {steps} "
            "steps)"
        )
    )
    for col in ("pipeline", "chunks", "at borders", "inside", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["pipeline"],
            str(r["chunks"]),
            f"{r['warp_error_at_borders']:.5f}",
            f"{r['warp_error_inside']:.5f}",
            f"{r['ratio']:.2f}",
        )
    console.print(table)
    return rows


def main() -> None:
    root = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="40,120,480")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ipfacediff-bench-cost"))
    ap.add_argument("--only", default="length,cache,nn,memory,borders")
    ap.add_argument("--memory-lengths", default="100,1000")
    ap.add_argument("-o", "--output", type=Path, default=root / "results" / "cost.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    console = Console(width=200) if not Console().is_terminal else Console()  # whole tables in a log
    only = set(args.only.split(","))
    res: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    if "nn" in only:
        res["nn_scaling"] = nn_scaling(console)
    if "cache" in only:
        res["cached_reedit"] = cached_reedit(args.steps, args.work, console)
    if "length" in only:
        res["length_scaling"] = length_scaling(
            [int(x) for x in args.lengths.split(",")], args.steps, args.work, console
        )
    if "borders" in only:
        res["chunk_borders"] = chunk_borders(args.steps, args.work, console)
    if "memory" in only:
        res["peak_memory"] = peak_memory(
            [int(x) for x in args.memory_lengths.split(",")], args.steps, args.work, console
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.output.is_file() and only != {
        "length",
        "cache",
        "nn",
        "memory",
        "borders",
    }:  # a partial run keeps the other sections
        res = {**json.loads(args.output.read_text()), **res}
    args.output.write_text(json.dumps(res, indent=1))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
