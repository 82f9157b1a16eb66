"""Face detection cost and agreement on the shared clips: RetinaFace alone, RetinaFace confirmed
by MTCNN (the default), MTCNN alone. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_faces.py [--data ../shared/data] [--frames 8] [-o benchmarks/results/faces.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ipfacediff.catalog import get_catalog
from ipfacediff.runtime.video import open_frames, read_image

CONFIGS = {
    "retinaface (verify=none)": ("retinaface", {"verify": "none"}),
    "retinaface + mtcnn (default)": ("retinaface", {}),
    "mtcnn": ("mtcnn", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parent.parent
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("IPFACEDIFF_TEST_DATA") or root.parent / "shared" / "data")
    )
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per video")
    ap.add_argument("-o", "--output", type=Path, default=root / "benchmarks" / "results" / "faces.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    videos = sorted((args.data / "videos").glob("*.mp4"))
    samples = []
    for v in videos:
        src = open_frames(v)
        idx = np.linspace(0, len(src) - 1, args.frames).round().astype(int).tolist()
        samples += [(f"{v.stem}#{i}", f, True) for i, f in zip(idx, src.get(idx))]
    samples += [(p.name, read_image(p), True) for p in sorted((args.data / "images" / "faces").glob("*.jpg"))]
    samples += [(p.name, read_image(p), False) for p in sorted((args.data / "images" / "non-human").glob("*.jpg"))]

    catalog = get_catalog()
    rows = []
    for label, (name, params) in CONFIGS.items():
        det = catalog.build("face_processor", name, params)
        det.detect(samples[0][1])  # warm-up
        times, correct, false_pos, missed = [], 0, 0, 0
        for _, frame, human in samples:
            t = time.perf_counter()
            n = len(det.detect(frame))
            times.append(time.perf_counter() - t)
            ok = (n == 1) if human else (n == 0)
            correct += ok
            false_pos += not human and n > 0
            missed += human and n == 0
        rows.append(
            {
                "detector": label,
                "samples": len(samples),
                "correct": correct,
                "false_positives_non_human": false_pos,
                "missed_faces": missed,
                "ms_per_frame_mean": 1000 * float(np.mean(times)),
                "ms_per_frame_p90": 1000 * float(np.percentile(times, 90)),
            }
        )

    table = Table(
        title=(
            f"face detection on {len(samples)} frames/pictures ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)"
        )
    )
    for col in ("detector", "correct", "false pos. (non-human)", "missed", "ms/frame mean", "p90"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["detector"],
            f"{r['correct']}/{r['samples']}",
            str(r["false_positives_non_human"]),
            str(r["missed_faces"]),
            f"{r['ms_per_frame_mean']:.0f}",
            f"{r['ms_per_frame_p90']:.0f}",
        )
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
