"""Propagation fidelity (first cut; issue 5 extends it): non-key frames rebuilt from the keyframes'
own latents (real clips, real TAESD, a fixed crop window so the motion stays in the crop), PSNR of
the decoded result against the TAESD round trip. Caveat: when the carried values are the matched
features themselves (as here), raw-token matching is an oracle; read the raw rows as an upper bound.

    IPFACEDIFF_MODELS=../shared/models .venv/bin/python benchmarks/bench_propagation.py \
        [-o benchmarks/results/propagation.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ipfacediff.catalog import get_catalog
from ipfacediff.interfaces import PropagationInput
from ipfacediff.runtime.flow import optical_flow, warp_back
from ipfacediff.runtime.video import open_frames


def _inp(features, keys, z) -> PropagationInput:
    """The keyframes' own latents as the edit, matched on ``features``."""
    return PropagationInput(
        key_rows=list(keys),
        frames=list(range(z.shape[0])),
        features=features,
        source_latents=z,
        edited_latents=z[keys],
    )


CONFIGS = {
    "patch, pos 0.3 (default)": {},
    "patch, pos 0": {"pos_weight": 0.0},
    "patch, pos 1": {"pos_weight": 1.0},
    "raw, pos 0": {"features": "raw", "pos_weight": 0.0},
    "raw, pos 0.3": {"features": "raw", "pos_weight": 0.3},
    "patch 5x5, pos 0.3": {"patch": 5},
}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("IPFACEDIFF_TEST_DATA") or root.parent / "shared" / "data")
    )
    ap.add_argument("--videos", default="d0,d3,d12,d18,s18")
    ap.add_argument("-o", "--output", type=Path, default=root / "benchmarks" / "results" / "propagation.json")
    args = ap.parse_args()
    c = get_catalog()
    bb = c.build("backbone", "tiny", {"resolution": 256})  # only its real TAESD is used here
    det = c.build("face_processor", "retinaface", {"verify": "none"})
    rows = {}
    for v in args.videos.split(","):
        frames = open_frames(args.data / "videos" / f"{v}.mp4").get(list(range(0, 33, 2)))
        d0 = det.detect(frames[0])[0]
        crops = np.stack([det.align(f, d0, 256).crop for f in frames])
        z = bb.encode_images(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
        rt = bb.decode_latents(z)
        keys = [0, 8, 16]
        others = [i for i in range(len(frames)) if i not in keys]
        copy = torch.stack([z[min(keys, key=lambda k: (abs(k - i), k))] for i in range(len(frames))])
        lerp = z.clone()
        for i in others:
            a, b = max(k for k in keys if k < i), min(k for k in keys if k > i)
            lerp[i] = (1 - (i - a) / (b - a)) * z[a] + (i - a) / (b - a) * z[b]
        row = {
            "nearest-keyframe copy": _psnr(bb.decode_latents(copy[others]), rt[others]),
            "linear blend of keyframes": _psnr(bb.decode_latents(lerp[others]), rt[others]),
        }
        # optical-flow warping (the usual bar): each key's decoded image warped to the non-key frame by
        # the flow between the *source* crops (known at edit time), the two keys blended by distance
        rt_np = (rt.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for name, both in (
            ("flow warp (DIS), nearest keyframe", False),
            ("flow warp (DIS), two keyframes blended", True),
        ):
            warped = []
            for i in others:
                a, b = max(k for k in keys if k < i), min(k for k in keys if k > i)
                pairs = (
                    [(a, 1 - (i - a) / (b - a)), (b, (i - a) / (b - a))]
                    if both
                    else [(min((a, b), key=lambda k: (abs(k - i), k)), 1.0)]
                )
                acc = 0.0
                for k, wgt in pairs:
                    flow = optical_flow(crops[i], crops[k])  # frame i -> key k on the source
                    acc = acc + wgt * warp_back(rt_np[k], flow).astype(np.float32) / 255
                warped.append(acc)
            warped_t = torch.from_numpy(np.stack(warped)).permute(0, 3, 1, 2).float()
            row[name] = _psnr(warped_t, rt[others])
        for name, p in CONFIGS.items():
            prop = c.build("propagator", "exact-nn", p).propagate(_inp(z, keys, z))
            row[f"exact-nn {name}"] = _psnr(bb.decode_latents(prop[others]), rt[others])
        prop = c.build("propagator", "latent-nn").propagate(_inp(z, keys, z))
        row["latent-nn (hnswlib), default"] = _psnr(bb.decode_latents(prop[others]), rt[others])
        # eps1 source: the UNet's last decoder features (here the tiny random UNet: a random conv feature,
        # not what a fine-tuned SD gives; read it as "does a deeper token feature help at all")
        from ipfacediff.runtime.diffusion import decoder_token_features

        feats = decoder_token_features(bb, z, 100, bb.encode_prompt([""]), seed=0)
        for name, p in {
            "eps1 features (tiny UNet), patch 1": {"patch": 1},
            "eps1 features (tiny UNet), patch 3": {},
        }.items():
            prop = c.build("propagator", "exact-nn", p).propagate(_inp(feats, keys, z))
            row[f"exact-nn {name}"] = _psnr(bb.decode_latents(prop[others]), rt[others])
        rows[v] = row
    names = list(next(iter(rows.values())))
    table = Table(title="non-key frames rebuilt from keyframes (PSNR dB vs TAESD round trip; 17 frames, keys 0/8/16)")
    table.add_column("method")
    for v in rows:
        table.add_column(v)
    table.add_column("mean")
    for n in names:
        table.add_row(n, *[f"{rows[v][n]:.2f}" for v in rows], f"{np.mean([rows[v][n] for v in rows]):.2f}")
    Console().print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
