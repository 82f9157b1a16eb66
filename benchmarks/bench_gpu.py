"""The GPU path, measured (issue 13): seconds per output frame and peak memory of `ip-facediff`,
`tokenflow` and `per-frame` with a Stable Diffusion 1.5-sized backbone, and the fine-tuning step rate
of both recipes. Prints a table, writes JSON.

    # SD 1.5 sizes, fp16, 512 px, 48 frames, 50 steps
    python benchmarks/bench_gpu.py --device cuda
    # the test suite's run
    python benchmarks/bench_gpu.py --size tiny --device cpu --frames 4 --steps 2 --resolution 64

The weights are random (built offline with SD 1.5's configs, no download): the numbers are cost, not
quality. `--size sd15` writes the random checkpoint once (about 4 GB) under `--work`. Peak memory is
the GPU's (`torch.cuda.max_memory_allocated`) on CUDA and the process's resident peak on the CPU.
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


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def edits(folder: str | None, args, clip: Path, console: Console) -> list[dict]:
    from ipfacediff.jobs.edit import EditRequest, run_edit
    from ipfacediff.registry import load_registry

    reg = load_registry()
    backbone = (
        ("stable-diffusion", {"path": folder, "resolution": args.resolution})
        if folder
        else ("tiny", {"resolution": args.resolution})
    )
    rows = []
    for pipeline in args.pipelines.split(","):
        _peak_reset(args.device)
        req = EditRequest(
            input=clip,
            prompt="eyeglasses",
            pipeline=reg.pipeline(pipeline),
            registry=reg,
            output=args.work / f"{pipeline}.mp4",
            backbone=backbone[0],
            steps=args.steps,
            sets={"backbone": backbone[1]},
            device=args.device,
            overwrite=True,
            show_progress=False,
            cache=False,
        )
        rep = run_edit(req)
        work_s = rep["timings_s"]["total"] - rep["timings_s"].get("load_models", 0.0)
        rows.append(
            {
                "pipeline": pipeline,
                "frames": rep["frames"],
                "s_per_frame": round(work_s / rep["frames"], 4),
                "unet_evals_per_frame": rep["unet_evaluations"]["per_output_frame"],
                "vae_per_frame": rep["vae_evaluations"]["per_output_frame"],
                "peak_memory_mb": rep["peak_memory_mb"],
                "timings_s": rep["timings_s"],
            }
        )
        console.print(f"  {pipeline}: {rows[-1]['s_per_frame']} s/frame, peak {rows[-1]['peak_memory_mb']} MB")
    return rows


def finetune_rates(folder: str | None, args, console: Console) -> list[dict]:
    from ipfacediff.jobs.finetune import FinetuneRequest, run_finetune
    from ipfacediff.registry import load_registry

    reg = load_registry()
    faces = Path(args.faces)
    rows = []
    for recipe in ("identity", "edit"):
        sets = {
            "backbone": {"path": folder, "resolution": args.resolution} if folder else {"resolution": args.resolution},
            "settings": {"batch_size": 1},
        }
        if recipe == "edit":
            sets["localization_loss"] = {
                "model": "tiny"
            }  # no CLIP weights offline: a random open_clip of the real class
        _peak_reset(args.device)
        rep = run_finetune(
            FinetuneRequest(
                recipe=reg.recipe(recipe),
                registry=reg,
                data=faces,
                output=args.work / f"lora-{recipe}",
                backbone="stable-diffusion" if folder else "tiny",
                max_steps=args.train_steps,
                sets=sets,
                device=args.device,
                overwrite=True,
                show_progress=False,
            )
        )
        rows.append(
            {
                "recipe": recipe,
                "steps": rep["steps"],
                "seconds_per_step": rep["seconds_per_step"],
                "steps_per_s": round(1 / max(rep["seconds_per_step"], 1e-9), 3),
            }
        )
        console.print(f"  finetune {recipe}: {rows[-1]['seconds_per_step']} s/step")
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["sd15", "tiny"], default="sd15")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--pipelines", default="ip-facediff,tokenflow,per-frame")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument(
        "--faces", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images" / "faces")
    )
    ap.add_argument("--work", type=Path, default=Path("benchmarks/results/gpu-work"))
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = ap.parse_args(argv)
    from ipfacediff.runtime.sample import write_sample_clip
    from ipfacediff.testing import make_sd15_folder

    console = Console()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = make_sd15_folder(str(args.work / "sd15-random")) if args.size == "sd15" else None
    clip = write_sample_clip(
        args.work / f"clip{args.frames}.mp4", n_frames=args.frames, size=args.resolution, audio=False
    )
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    t0 = time.perf_counter()
    res = {
        "size": args.size,
        "device": args.device,
        "gpu": gpu,
        "frames": args.frames,
        "steps": args.steps,
        "resolution": args.resolution,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "edits": edits(folder, args, clip, console),
        "finetune": finetune_rates(folder, args, console),
    }
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    table = Table(
        title=(
            f"{args.size} backbone, {args.resolution} px, {args.frames} frames, {args.steps} steps, "
            f"{gpu or args.device}"
        )
    )
    for c in ("pipeline", "s/frame", "UNet evals/frame", "VAE/frame", "peak MB"):
        table.add_column(c, justify="right")
    for r in res["edits"]:
        table.add_row(
            r["pipeline"],
            f"{r['s_per_frame']:.3f}",
            f"{r['unet_evals_per_frame']:.2f}",
            f"{r['vae_per_frame']:.2f}",
            f"{r['peak_memory_mb']:.0f}",
        )
    console.print(table)
    for r in res["finetune"]:
        console.print(f"finetune {r['recipe']}: {r['seconds_per_step']} s/step ({r['steps_per_s']} steps/s)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
