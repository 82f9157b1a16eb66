"""The same seed gives the same decoded frames: golden edits of every built-in strategy.

``golden_edits.json`` holds, per case (a seeded edit: the tiny backbone, the sample clip, 10 frames,
3 steps), the sha256 of the decoded output frames, the CPU capability torch ran its kernels with,
and a thumbnail of the frames (each area-averaged to 32 x 32, ``uint8``, base64). On a CPU of the
recorded capability the sha256 must match exactly. Another capability's kernels change the last bits
of the floats (0.3's digests, recorded on another machine, all differed here from unchanged code), so
there the thumbnails must agree within ``TOLERANCE``: measured here, running the same code with
``ATEN_CPU_CAPABILITY=default`` instead of AVX2 moves them by a mean of 0.59-0.93 grey levels (the
largest single value by 6-35), so the check there is loose; the exact one holds where CI runs. The
CPU's model is recorded too and must match as well: recordings made with AVX2 on one machine kind
differed in their digests on an AMD EPYC with AVX2, from the same code.

History: 0.1.0's cases were recorded before the 0.2 layout move; re-recorded on purpose when the
``identity-injection`` editor became Plug-and-Play's injection as published, when tokenflow became
TokenFlow as published, when eps1 refinement started from each frame's own inversion, and when the
sample clip stopped showing a mirrored border (see CHANGELOG.md). 0.4 (the house issue) recorded
them with thumbnails on the CI machine of that session from 0.3.0's code, unchanged, and added the
default pipeline (``ip-facediff``, then mesh-flow); the cases are named by the pipeline they run. 0.4
re-recorded the ``ip-facediff`` case when its propagator became ``layered`` (issue 21), and then the
``ip-facediff``, ``ip-facediff-paper-fast`` and ``sdedit`` cases when RetinaFace began tracking (the
next frame searched around the previous face: landmarks move by a fraction of a pixel) and ``layered``
began estimating motion at a face width of 160 px, and the ``ip-facediff`` case when ``layered``'s
keyframes began competing where both see a pixel (``compete``) and weighing each by how well the frame matches it
(``trust``; thumbnails 0.64 grey levels from the previous recording), and the ``ip-facediff`` case
when ``layered`` began carrying each edited pixel as a local linear change of the frame's own pixel
(``opacity``; thumbnails 0.49 grey levels from the previous recording, 6 at most), and the
``ip-facediff`` case when ``layered`` began telling what a keyframe saw with the change of light taken
out (``LIGHT_SIGMA``; thumbnails 0.008 grey levels from the previous recording, 4 at most), and again when
that change of light was blurred on a coarser grid (the frames recorded before ``LIGHT_SIGMA`` came back
byte for byte).
``IPFACEDIFF_RECORD_GOLDEN=1 pytest tests/test_behaviour_unchanged.py`` records them anew (only when a
change of output is intended, and said so in the commit and the changelog).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import needs_models

pytestmark = needs_models

GOLDEN = Path(__file__).with_name("golden_edits.json")
THUMB = 32
TOLERANCE = 1.5  # mean grey levels between thumbnails, on a CPU of another capability than the recording's
CASES = {
    "ip-facediff": ["--pipeline", "ip-facediff"],  # the default: layered, pixel-space propagation
    "ip-facediff-paper": ["--pipeline", "ip-facediff-paper"],  # latent-nn, 0.1's ip-facediff
    "ip-facediff-paper-eps1-refine": [
        "--pipeline",
        "ip-facediff-paper",
        "--set",
        "settings.propagation_source=eps1",
        "--set",
        "settings.refine_steps=1",
    ],
    "ip-facediff-paper-fast": ["--pipeline", "ip-facediff-fast-paper", "--registry", "FAST_PAPER"],
    "per-frame": ["--pipeline", "per-frame"],
    "sdedit": ["--pipeline", "sdedit"],
    "tokenflow": ["--pipeline", "tokenflow"],
}


def _frames(path: Path) -> np.ndarray:
    from ipfacediff.runtime.video import open_frames

    with open_frames(path) as src:
        return np.concatenate([chunk for _, chunk in src.iter_chunks(16)])


def _thumbnails(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.resize(f, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for f in frames])


def _capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _cpu() -> str:
    """The CPU's model name: one capability's kernels still differ in their last bits between CPU
    models (AVX2 recordings made on one machine kind did not reproduce on an AMD EPYC with AVX2)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _record(frames: np.ndarray) -> dict[str, object]:
    thumbs = _thumbnails(frames)
    return {
        "sha256": hashlib.sha256(frames.tobytes()).hexdigest(),
        "cpu_capability": _capability(),
        "cpu": _cpu(),
        "thumbnails": base64.b64encode(thumbs.tobytes()).decode(),
        "shape": list(thumbs.shape),
    }


def _edit(case: str, clip: Path, tmp_path: Path) -> Path:
    from ipfacediff.cli import main

    out = tmp_path / f"{case}.mp4"
    reg = tmp_path / "registry.yaml"  # 0.1's ip-facediff-fast: ip-facediff-paper with the fast pipeline's settings
    reg.write_text(
        "pipelines:\n  ip-facediff-fast-paper:\n    extends: ip-facediff-paper\n    editor:\n"
        "      component: identity-injection\n"
        "      params: {guidance_scale: 7.5, attn_fraction: 0.3, residual_fraction: 0.5, joint: true}\n"
        "    settings: {keyframe_interval: 16}\n"
    )
    args = [str(reg) if a == "FAST_PAPER" else a for a in CASES[case]]
    common = ["--backbone", "tiny", "--steps", "3", "--max-frames", "10", "--seed", "7", "--no-cache"]
    # the encoder the frames were recorded with (x264 medium, crf 18): they record the edit, not the encoder
    common += ["--set", "settings.video_preset=medium", "--set", "settings.video_crf=18"]
    rc = main(["--quiet", "edit", str(clip), "-p", "eyeglasses", *common, "-o", str(out), *args])
    assert rc == 0
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_edit_gives_the_recorded_frames(case, sample_clip, tmp_path):
    got = _record(_frames(_edit(case, sample_clip, tmp_path)))
    if os.environ.get("IPFACEDIFF_RECORD_GOLDEN") == "1":
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[case] = got
        GOLDEN.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[case]
    if got["sha256"] == want["sha256"]:
        return
    same_kernels = (got["cpu_capability"], got["cpu"]) == (want["cpu_capability"], want.get("cpu"))
    assert not same_kernels, f"{case}: the decoded frames changed"
    a = np.frombuffer(base64.b64decode(got["thumbnails"]), np.uint8).astype(np.int16)
    b = np.frombuffer(base64.b64decode(want["thumbnails"]), np.uint8).astype(np.int16)
    assert got["shape"] == want["shape"], f"{case}: {got['shape']} frames, recorded {want['shape']}"
    diff = float(np.abs(a - b).mean())
    here = f"{got['cpu_capability']} {got['cpu']}"
    there = f"{want['cpu_capability']} {want.get('cpu', '(CPU not recorded)')}"
    print(f"{case}: {here} here, recorded on {there}: thumbnails {diff:.3f} apart")
    assert diff <= TOLERANCE, f"{case}: the decoded frames changed (thumbnails {diff:.3f} grey levels apart)"
