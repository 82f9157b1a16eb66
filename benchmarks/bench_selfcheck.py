"""Does the propagation self-check tell the truth? On the shared clips, against the independent
ground truth (dlib's 68 landmarks, ``bench --ground-truth``'s default):

1. the leave-one-keyframe-out PSNR (what ``propagate`` reports without knowing the answer) against the
   true face PSNR of the propagated frames, across clips: their rank correlation;
2. one more round of keyframes: the frames the self-check suggests first vs as many evenly spaced
   ones, each added to the same keyframes; the true PSNR after each;
3. each keyframe interval's own check (``across_intervals``: each end predicted from the other) against
   the true PSNR of the frames inside it, and what splitting it at its middle gains, by its check (the
   threshold of ``edit --set settings.keyframes=adaptive``).

    .venv/bin/python benchmarks/bench_selfcheck.py [--data ../shared/data] [--frames 49] [--interval 24] \
        [--add 2] [--edit paint+glasses] [-o benchmarks/results/selfcheck.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ipfacediff.catalog import get_catalog
from ipfacediff.jobs.bench import truth68
from ipfacediff.jobs.bench.groundtruth import _masked_scores
from ipfacediff.jobs.propagate import across_intervals, carry_edits, leave_one_out, suggest_keyframes
from ipfacediff.runtime.face import detect_track
from ipfacediff.runtime.video import open_frames


def true_scores(frames, gt, faces, keys, track, processor, propagator) -> dict[int, float]:
    """The true face PSNR of every propagated (non-key) frame."""
    chunks: list[np.ndarray] = []
    carry_edits(
        lambda idx: frames[idx],
        len(frames),
        {k: gt[k] for k in keys},
        track,
        processor,
        propagator,
        on_frames=lambda first, f: chunks.append(f),
    )
    out = np.concatenate(chunks)
    return {t: float(_masked_scores(out[t], gt[t], faces[t])[0]) for t in range(len(frames)) if t not in keys}


def true_psnr(frames, gt, faces, keys, track, processor, propagator) -> float:
    return float(np.nanmean(list(true_scores(frames, gt, faces, keys, track, processor, propagator).values())))


def evenly(keys: list[int], n: int, count: int) -> list[int]:
    """``count`` frames at the middles of the longest gaps between keyframes (the tail after the last
    keyframe counts twice its length, its end frame the pick): the even way to add keyframes."""
    picks: list[int] = []
    for _ in range(count):
        have = sorted(keys + picks)
        gaps = [(b - a, (a + b) // 2) for a, b in zip(have[:-1], have[1:])]
        if have[-1] < n - 1:
            gaps.append((2 * (n - 1 - have[-1]), n - 1))
        picks.append(max(gaps)[1])
    return picks


def main() -> None:
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parent.parent
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("IPFACEDIFF_TEST_DATA") or root.parent / "shared" / "data")
    )
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--interval", type=int, default=24, help="the starting keyframes: every N-th frame")
    ap.add_argument("--add", type=int, default=2, help="keyframes added by each strategy")
    ap.add_argument("--edit", default="paint+glasses")
    ap.add_argument("--propagator", default="layered")
    ap.add_argument("-o", "--output", type=Path, default=root / "benchmarks" / "results" / "selfcheck.json")
    args = ap.parse_args()
    catalog = get_catalog()
    processor = catalog.build("face_processor", "retinaface")
    propagator = catalog.build("propagator", args.propagator)
    rows = []
    for clip in sorted((args.data / "videos").glob("*.mp4")):
        src = open_frames(clip)
        n = min(len(src), args.frames)
        frames = src.get(list(range(n)))
        track = detect_track(processor, src, n, 3, False)
        src.close()
        if track[0] is None:
            continue
        lms = truth68.dlib68_landmarks(frames, track)
        gt, _ = truth68.ground_truth(frames, lms, args.edit)
        faces = [truth68.face_mask(lm, frames.shape[1:3]) for lm in lms]
        keys = list(range(0, n, args.interval))
        given = {k: gt[k] for k in keys}
        loo = leave_one_out(frames.__getitem__, given, track, processor, propagator)
        spans = across_intervals(frames.__getitem__, given, track, processor, propagator)
        truth = true_scores(frames, gt, faces, keys, track, processor, propagator)
        middles = [(x["from"] + x["to"]) // 2 for x in spans if x["to"] - x["from"] >= 2]
        split = true_scores(frames, gt, faces, sorted(keys + middles), track, processor, propagator)
        for x in spans:  # each interval's true PSNR (mean over the frames inside it); split at its middle, the rest
            inside = range(x["from"] + 1, x["to"])
            x["true_psnr"] = float(np.nanmean([truth[t] for t in inside]))
            rest = [t for t in inside if t in split]
            x["split_gain"] = float(np.nanmean([split[t] for t in rest]) - np.nanmean([truth[t] for t in rest]))
        suggested = [s["frame"] for s in suggest_keyframes(track, keys, args.add)]
        spaced = evenly(keys, n, args.add)
        row = {
            "clip": clip.stem,
            "keyframes": keys,
            "leave_one_out_psnr": float(np.mean([x["psnr"] for x in loo])),
            "true_psnr": float(np.nanmean(list(truth.values()))),
            "intervals": spans,
            "suggested": suggested,
            "evenly_spaced": spaced,
            "true_psnr_with_suggested": true_psnr(
                frames, gt, faces, sorted(keys + suggested), track, processor, propagator
            ),
            "true_psnr_with_evenly_spaced": true_psnr(
                frames, gt, faces, sorted(keys + spaced), track, processor, propagator
            ),
        }
        rows.append(row)
        print(json.dumps(row))
    from scipy.stats import spearmanr

    rho = float(spearmanr([r["leave_one_out_psnr"] for r in rows], [r["true_psnr"] for r in rows])[0])
    spans = [x for r in rows for x in r["intervals"]]
    rho_spans = float(spearmanr([x["psnr"] for x in spans], [x["true_psnr"] for x in spans])[0])
    table = Table(title=f"self-check vs the truth ({args.edit}, {args.propagator}, {args.frames} frames)")
    for col in ("clip", "LOO PSNR", "true PSNR", "intervals: check / true", "+ suggested", "true", "+ evenly", "true"):
        table.add_column(col, justify="left" if col in ("clip", "intervals: check / true") else "right")
    for r in rows:
        table.add_row(
            r["clip"],
            f"{r['leave_one_out_psnr']:.2f}",
            f"{r['true_psnr']:.2f}",
            ", ".join(f"{x['psnr']:.1f}/{x['true_psnr']:.1f}" for x in r["intervals"]),
            str(r["suggested"]),
            f"{r['true_psnr_with_suggested']:.2f}",
            str(r["evenly_spaced"]),
            f"{r['true_psnr_with_evenly_spaced']:.2f}",
        )
    Console().print(table)
    gain_s = np.mean([r["true_psnr_with_suggested"] - r["true_psnr"] for r in rows])
    gain_e = np.mean([r["true_psnr_with_evenly_spaced"] - r["true_psnr"] for r in rows])
    print(f"rank correlation (Spearman) of LOO and true PSNR across clips: {rho:.3f}")
    print(f"rank correlation (Spearman) of the interval check and the interval's true PSNR: {rho_spans:.3f}")
    print(f"mean gain: suggested {gain_s:+.2f} dB, evenly spaced {gain_e:+.2f} dB")
    for t in (26, 28, 30, 32):
        low = [x["split_gain"] for x in spans if x["psnr"] < t]
        high = [x["split_gain"] for x in spans if x["psnr"] >= t]
        if low and high:
            print(
                f"intervals split at their middle, mean true gain: check below {t} dB {np.mean(low):+.2f} dB "
                f"({len(low)} intervals), the others {np.mean(high):+.2f} dB ({len(high)})"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "settings": vars(args) | {"data": str(args.data), "output": str(args.output)},
                "spearman": rho,
                "spearman_intervals": rho_spans,
                "mean_gain_suggested": float(gain_s),
                "mean_gain_evenly_spaced": float(gain_e),
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
