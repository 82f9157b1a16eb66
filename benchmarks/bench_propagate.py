"""How fast `ipfacediff propagate` is at 1280x720, and whether its memory stays flat as the clip grows
(issue 21, part 4). Runs the real command, one process per clip length, and prints and writes:

    IPFACEDIFF_MODELS=../shared/models .venv/bin/python benchmarks/bench_propagate.py \
        [--video ../shared/data/videos/s18.mp4] [--lengths 60,120,240] [--keyframes 3] \
        [--set propagator.motion_size=160 ...] [-o benchmarks/results/propagate.json]

Each length L gets ``--keyframes`` edited keyframes evenly spaced from frame 0 to L - 1 (a synthetic
edit drawn at the face RetinaFace finds there: eyeglass rims and a coloured patch on the cheek), then
``ipfacediff propagate INPUT --keyframes DIR -o OUT.mp4 --max-frames L --no-cache`` (no cached face
track: detection is measured every time). The table has the report's stage timings (``timings_s``),
seconds per frame without model loading, the process's peak memory (``peak_memory_mb``) and wall time
with start-up; a PNG beside the JSON plots them and shows frames of the longest run's output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

STAGES = ("load_models", "detect", "propagate", "self_check")


def default_video() -> Path:
    data = os.environ.get("IPFACEDIFF_TEST_DATA")
    base = Path(data) if data else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "videos" / "s18.mp4"


def draw_edit(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Eyeglass rims around the eyes and a coloured patch below the nose, sized by the eye distance."""
    out = frame.copy()
    lm = np.asarray(landmarks, np.float64)
    r = max(6, int(round(0.35 * np.linalg.norm(lm[1] - lm[0]))))
    thick = max(2, r // 8)
    for eye in lm[:2]:
        cv2.circle(out, tuple(int(round(v)) for v in eye), r, (25, 25, 25), thick, cv2.LINE_AA)
    cv2.line(
        out,
        tuple(int(round(v)) for v in lm[0] + [r, 0]),
        tuple(int(round(v)) for v in lm[1] - [r, 0]),
        (25, 25, 25),
        thick,
        cv2.LINE_AA,
    )
    cv2.circle(out, tuple(int(round(v)) for v in lm[2] + [0, r]), r, (200, 40, 160), -1, cv2.LINE_AA)
    return out


def make_keyframes(video: Path, length: int, count: int, folder: Path) -> list[int]:
    from ipfacediff.catalog import get_catalog
    from ipfacediff.runtime.video import open_frames

    proc = get_catalog().build("face_processor", "retinaface")
    src = open_frames(video)
    try:
        keys = sorted({int(round(x)) for x in np.linspace(0, length - 1, count)})
        folder.mkdir(parents=True, exist_ok=True)
        for k in keys:
            frame = src.get([k])[0]
            faces = proc.detect(frame)
            if not faces:
                raise SystemExit(f"{video}: no face at frame {k} to draw the edit on")
            cv2.imwrite(str(folder / f"{k}.png"), draw_edit(frame, faces[0].landmarks)[..., ::-1])
    finally:
        src.close()
    return keys


def run_one(video: Path, length: int, count: int, work: Path, sets: list[str]) -> dict:
    keys_dir = work / f"keys-{length}"
    keys = make_keyframes(video, length, count, keys_dir)
    out = work / f"out-{length}.mp4"
    cmd = [sys.executable, "-m", "ipfacediff", "propagate", str(video), "--keyframes", str(keys_dir)]
    cmd += ["-o", str(out), "--max-frames", str(length), "--no-cache", "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"propagate failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rep = json.loads(out.with_suffix(".json").read_text())
    t = rep["timings_s"]
    work_s = t["total"] - t.get("load_models", 0.0)
    return {
        "frames": rep["frames"],
        "keyframes": keys,
        "timings_s": {k: round(t.get(k, 0.0), 2) for k in (*STAGES, "total")},
        "s_per_frame": round(work_s / rep["frames"], 4),
        "detect_s_per_frame": round(t.get("detect", 0.0) / rep["frames"], 4),
        "peak_memory_mb": rep["peak_memory_mb"],
        "wall_s": round(wall, 2),
        "self_check": rep.get("self_check"),
        "output": str(out),
    }


def picture(rows: list[dict], out_png: Path, video_out: Path, keys: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ipfacediff.runtime.video import open_frames

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    lengths = [r["frames"] for r in rows]
    bottom = np.zeros(len(rows))
    for stage in STAGES[1:]:
        v = np.array([r["timings_s"][stage] / r["frames"] for r in rows])
        ax1.bar([str(x) for x in lengths], v, bottom=bottom, label=stage)
        bottom += v
    ax1.axhline(0.15, color="red", linestyle="--", linewidth=1, label="target 0.15 s/frame")
    ax1.set_xlabel("frames")
    ax1.set_ylabel("s per frame (no model loading)")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax2.plot(lengths, [r["peak_memory_mb"] for r in rows], "o-")
    ax2.set_xlabel("frames")
    ax2.set_ylabel("peak memory (MB)")
    ax2.set_ylim(0, max(r["peak_memory_mb"] for r in rows) * 1.2)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.canvas.draw()
    plot = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    src = open_frames(video_out)
    try:
        n = len(src)
        show = sorted({keys[0], (keys[0] + keys[1]) // 2, keys[1], (keys[-2] + keys[-1]) // 2, n - 1})
        cells = []
        for i in show:
            f = np.ascontiguousarray(src.get([i])[0])
            f = cv2.resize(f, (plot.shape[1] // len(show), int(f.shape[0] * plot.shape[1] / len(show) / f.shape[1])))
            cv2.putText(f, f"frame {i}" + (" (key)" if i in keys else ""), (4, 14), 0, 0.4, (255, 255, 0), 1)
            cells.append(f)
    finally:
        src.close()
    strip = np.concatenate(cells, 1)
    strip = cv2.resize(strip, (plot.shape[1], int(strip.shape[0] * plot.shape[1] / strip.shape[1])))
    cv2.imwrite(str(out_png), np.concatenate([plot, strip], 0)[..., ::-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=default_video())
    ap.add_argument("--lengths", default="60,120,240")
    ap.add_argument("--keyframes", type=int, default=3, help="edited keyframes per run, evenly spaced")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="passed to propagate (SLOT.KEY=VALUE)")
    ap.add_argument("-o", "--output", type=Path, default=Path("benchmarks/results/propagate.json"))
    args = ap.parse_args()
    if not args.video.is_file():
        raise SystemExit(f"--video {args.video}: no such file")
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            rows.append(run_one(args.video, length, args.keyframes, Path(tmp), args.sets))
            print(f"{length} frames: {rows[-1]['s_per_frame']} s/frame, {rows[-1]['peak_memory_mb']} MB", flush=True)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        picture(rows, args.output.with_suffix(".png"), Path(rows[-1]["output"]), rows[-1]["keyframes"])
    info = cv2.VideoCapture(str(args.video))
    size = f"{int(info.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(info.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    info.release()
    table = Table(title=f"ipfacediff propagate, {args.video.name} ({size}), {args.keyframes} keyframes")
    for col in ("frames", *STAGES, "total s", "s/frame (no loading)", "detect s/frame", "peak MB", "wall s"):
        table.add_column(col, justify="right")
    for r in rows:
        t = r["timings_s"]
        table.add_row(
            str(r["frames"]),
            *(f"{t[s]:.2f}" for s in STAGES),
            f"{t['total']:.2f}",
            f"{r['s_per_frame']:.3f}",
            f"{r['detect_s_per_frame']:.3f}",
            f"{r['peak_memory_mb']:.0f}",
            f"{r['wall_s']:.1f}",
        )
    Console().print(table)
    for r in rows:
        r.pop("output")
    result = {
        "video": str(args.video),
        "size": size,
        "sets": args.sets,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rows": rows,
    }
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
