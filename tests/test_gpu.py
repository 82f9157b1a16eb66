"""The GPU path: `benchmarks/bench_gpu.py` at a tiny size on the CPU (so the script cannot rot), and
the `gpu` marker's end-to-end edit and fine-tuning step on CUDA (skipped without a GPU:
`pytest -m gpu` on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import DATA, needs_data, needs_models

ROOT = Path(__file__).resolve().parent.parent


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_models
@needs_data
def test_bench_gpu_runs_at_a_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = _bench_gpu().main(
        [
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--frames",
            "3",
            "--steps",
            "2",
            "--resolution",
            "64",
            "--train-steps",
            "1",
            "--work",
            str(tmp_path / "work"),
            "-o",
            str(out),
            "--faces",
            str(DATA / "images" / "faces"),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["edits"] == json.loads(json.dumps(res["edits"]))
    assert [r["pipeline"] for r in res["edits"]] == ["ip-facediff", "tokenflow", "per-frame"]
    for r in res["edits"]:
        assert r["frames"] == 3 and r["s_per_frame"] > 0 and r["unet_evals_per_frame"] > 0 and r["peak_memory_mb"] > 0
    assert [r["recipe"] for r in res["finetune"]] == ["identity", "edit"] and all(
        r["seconds_per_step"] > 0 for r in res["finetune"]
    )


@pytest.mark.gpu
@needs_models
@needs_data
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on a GPU machine)")
def test_gpu_end_to_end_edit_and_one_finetuning_step(tmp_path):
    res = _bench_gpu().main(
        [
            "--size",
            "sd15",
            "--device",
            "cuda",
            "--frames",
            "8",
            "--steps",
            "4",
            "--resolution",
            "512",
            "--pipelines",
            "ip-facediff",
            "--train-steps",
            "1",
            "--work",
            str(tmp_path / "work"),
            "-o",
            str(tmp_path / "gpu.json"),
            "--faces",
            str(DATA / "images" / "faces"),
        ]
    )
    assert res["gpu"] and res["edits"][0]["frames"] == 8 and res["finetune"][0]["steps"] == 1
