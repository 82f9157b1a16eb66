"""The same seed gives the same decoded frames as before the 0.2 layout move.

``golden_edits.json`` holds the sha256 of the decoded output frames of a few seeded edits (each
built-in strategy, the tiny backbone, the sample clip) recorded on 0.1.0's code before anything was
moved. Re-recorded once, on purpose: the cases that run the ``identity-injection`` editor
(ip-facediff*, per-frame) when it became Plug-and-Play's injection as published (the residual
branch of the ResNet block instead of its whole output, PnP's self-attention layers), and the
tokenflow case when that baseline became TokenFlow as published (random pivots per step, matching on
the source features, Plug-and-Play injection, bounded batches), and the eps1-refine case when
refinement started from each frame's own inversion with injection and the keyframes as anchors;
sdedit kept 0.1.0's bytes. All six were recorded anew when the sample clip stopped showing a mirrored
border (0.3: a smaller window inside the photograph); the code paths were unchanged by that. ``IPFACEDIFF_RECORD_GOLDEN=1 pytest tests/test_behaviour_unchanged.py`` records them anew
(only when a change of output is intended, and said so in the commit).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import needs_models

pytestmark = needs_models

GOLDEN = Path(__file__).with_name("golden_edits.json")
CASES = {
    # 0.3 made mesh-flow the default propagator of ip-facediff; ip-facediff-paper is 0.1's ip-facediff
    # (latent-nn), and 0.1's ip-facediff-fast is ip-facediff-paper with the fast settings: same bytes
    "ip-facediff": ["--pipeline", "ip-facediff-paper"],
    "ip-facediff-eps1-refine": ["--pipeline", "ip-facediff-paper", "--set", "settings.propagation_source=eps1", "--set", "settings.refine_steps=1"],
    "ip-facediff-fast": ["--pipeline", "ip-facediff-fast-paper", "--registry", "FAST_PAPER"],
    "per-frame": ["--pipeline", "per-frame"],
    "sdedit": ["--pipeline", "sdedit"],
    "tokenflow": ["--pipeline", "tokenflow"],
}


def _frames_digest(path: Path) -> str:
    from ipfacediff.runtime.video import open_frames

    h = hashlib.sha256()
    with open_frames(path) as src:
        for _, chunk in src.iter_chunks(16):
            h.update(chunk.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_seeded_edit_gives_the_recorded_frames(case, sample_clip, tmp_path):
    from ipfacediff.cli import main

    out = tmp_path / f"{case}.mp4"
    reg = tmp_path / "registry.yaml"  # 0.1's ip-facediff-fast: ip-facediff-paper with the fast pipeline's settings
    reg.write_text("pipelines:\n  ip-facediff-fast-paper:\n    extends: ip-facediff-paper\n    editor:\n      component: identity-injection\n"
                   "      params: {guidance_scale: 7.5, attn_fraction: 0.3, residual_fraction: 0.5, joint: true}\n"
                   "    settings: {keyframe_interval: 16}\n")
    args = [str(reg) if a == "FAST_PAPER" else a for a in CASES[case]]
    rc = main(["--quiet", "edit", str(sample_clip), "-p", "eyeglasses", "--backbone", "tiny", "--steps", "3", "--max-frames", "10",
               "--seed", "7", "--no-cache", "-o", str(out), *args])
    assert rc == 0
    digest = _frames_digest(out)
    if os.environ.get("IPFACEDIFF_RECORD_GOLDEN") == "1":
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[case] = digest
        GOLDEN.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    assert digest == json.loads(GOLDEN.read_text())[case], f"{case}: the decoded frames changed"
