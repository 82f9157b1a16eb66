"""Same-person vs different-person separation of the identity networks on the shared clips and
portraits: how well each network tells one person from another, which is what an identity metric
relies on. Prints a table, writes JSON and a histogram per network.

    .venv/bin/python benchmarks/bench_identity.py [--data ../shared/data] [--frames 8] \
        [--encoders mobilefacenet,dlib-resnet] [-o benchmarks/results/identity.json]

Same person: two frames of one clip (8 spread over each clip), a portrait and its mirror image.
Different people: a frame or portrait against one of another clip or portrait (every shared clip and
portrait shows another person). Faces are found by RetinaFace (the metrics' detector); every network
gets the same landmarks. Scores: cosine similarity of the embeddings; ``AUC`` is the probability that
a same-person pair is closer than a different-person pair, ``d'`` the gap of the two means over their
pooled standard deviation, ``EER`` the equal error rate of a threshold on the cosine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ipfacediff.catalog import get_catalog
from ipfacediff.plugins.metrics._bases import face_embeddings
from ipfacediff.runtime.video import open_frames, read_image


def faces(data: Path, frames: int, detector) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(person, label, frame, five landmarks) of every sample with a face: frames of each clip, each
    portrait and its mirror."""
    out = []
    for v in sorted((data / "videos").glob("*.mp4")):
        src = open_frames(v)
        idx = np.linspace(0, len(src) - 1, frames).round().astype(int).tolist()
        for i, f in zip(idx, src.get(idx)):
            dets = detector.detect(f)
            if dets:
                out.append((v.stem, f"{v.stem}#{i}", f, np.asarray(dets[0].landmarks)))
        src.close()
    for p in sorted((data / "images" / "faces").glob("*.jpg")):
        img = read_image(p)
        dets = detector.detect(img)
        if not dets:
            continue
        lm = np.asarray(dets[0].landmarks)
        mirrored = np.ascontiguousarray(img[:, ::-1])
        flipped = lm.copy()
        flipped[:, 0] = img.shape[1] - 1 - flipped[:, 0]
        out.append((p.stem, p.name, img, lm))
        out.append((p.stem, p.name + " (mirror)", mirrored, flipped[[1, 0, 2, 4, 3]]))  # left/right swap
    return out


def separation(same: np.ndarray, other: np.ndarray) -> dict[str, float]:
    auc = float(np.mean(same[:, None] > other[None, :]) + 0.5 * np.mean(same[:, None] == other[None, :]))
    dprime = float((same.mean() - other.mean()) / np.sqrt((same.var() + other.var()) / 2))
    thresholds = np.unique(np.concatenate([same, other]))
    far = np.array([np.mean(other >= t) for t in thresholds])  # different people accepted
    frr = np.array([np.mean(same < t) for t in thresholds])  # one person rejected
    k = int(np.argmin(np.abs(far - frr)))
    return {
        "same_mean": float(same.mean()),
        "same_min": float(same.min()),
        "different_mean": float(other.mean()),
        "different_max": float(other.max()),
        "auc": auc,
        "d_prime": dprime,
        "eer": float((far[k] + frr[k]) / 2),
        "eer_threshold": float(thresholds[k]),
        "same_pairs": int(len(same)),
        "different_pairs": int(len(other)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parent.parent
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("IPFACEDIFF_TEST_DATA") or root.parent / "shared" / "data")
    )
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip")
    ap.add_argument("--encoders", default="mobilefacenet,dlib-resnet", help="identity encoders, comma-separated")
    ap.add_argument("-o", "--output", type=Path, default=root / "benchmarks" / "results" / "identity.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    catalog = get_catalog()
    samples = faces(args.data, args.frames, catalog.build("face_processor", "retinaface"))
    people = np.array([s[0] for s in samples])
    same_mask = np.triu(people[:, None] == people[None, :], 1)
    other_mask = np.triu(people[:, None] != people[None, :], 1)

    rows, sims = [], {}
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        enc = catalog.build("identity_encoder", name)
        emb = np.concatenate(
            [face_embeddings(enc, np.stack([s[2]]), [s[3]]) for s in samples]
        )  # one at a time: frames differ in size
        s = emb @ emb.T
        sims[name] = (s[same_mask], s[other_mask])
        hard_other = np.unravel_index(np.argmax(np.where(other_mask, s, -np.inf)), s.shape)
        hard_same = np.unravel_index(np.argmin(np.where(same_mask, s, np.inf)), s.shape)
        rows.append(
            {
                "encoder": name,
                **separation(*sims[name]),
                "closest_different": [samples[hard_other[0]][1], samples[hard_other[1]][1]],
                "farthest_same": [samples[hard_same[0]][1], samples[hard_same[1]][1]],
            }
        )

    table = Table(
        title=(
            f"identity separation: {len(samples)} faces of {len(set(people))} people "
            f"({platform.processor() or platform.machine()})"
        )
    )
    for col in ("network", "same person cos mean / min", "different cos mean / max", "AUC", "d'", "EER (at cos)"):
        table.add_column(col, justify="left" if col == "network" else "right")
    for r in rows:
        table.add_row(
            r["encoder"],
            f"{r['same_mean']:.3f} / {r['same_min']:.3f}",
            f"{r['different_mean']:.3f} / {r['different_max']:.3f}",
            f"{r['auc']:.4f}",
            f"{r['d_prime']:.2f}",
            f"{r['eer']:.3f} ({r['eer_threshold']:.2f})",
        )
    Console().print(table)
    for r in rows:
        a, b = r["closest_different"]
        c, d = r["farthest_same"]
        print(f"{r['encoder']}: closest different people {a} / {b}; farthest same person {c} / {d}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3), dpi=100, squeeze=False)
    for ax, r in zip(axes[0], rows):
        same, other = sims[r["encoder"]]
        bins = np.linspace(min(same.min(), other.min()), 1, 40)
        ax.hist(other, bins, alpha=0.6, density=True, label=f"different people ({len(other)})")
        ax.hist(same, bins, alpha=0.6, density=True, label=f"same person ({len(same)})")
        ax.set_title(f"{r['encoder']}: AUC {r['auc']:.3f}, d' {r['d_prime']:.2f}", fontsize=9)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.with_suffix(".png")
    fig.savefig(png)
    args.output.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
                "faces": [s[1] for s in samples],
                "people": sorted(set(people.tolist())),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.output} and {png}")


if __name__ == "__main__":
    main()
