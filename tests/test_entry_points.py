"""Every entry point reaches the edit through the same job code: the same small case (the sample
clip, the tiny backbone, the default pipeline, 3 steps, seed 7, 10 frames) run from the command line,
the app's request and the ComfyUI node chain gives the same frames, byte for byte."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, needs_models

pytestmark = needs_models
CASE = ["-p", "eyeglasses", "--backbone", "tiny", "--steps", "3", "--max-frames", "10", "--seed", "7", "--no-cache"]


def _frames(path: Path) -> np.ndarray:
    from ipfacediff.runtime.video import open_frames

    with open_frames(path) as src:
        return np.concatenate([chunk for _, chunk in src.iter_chunks(16)])


def _cli(clip: Path, out: str) -> np.ndarray:
    from ipfacediff.cli import main

    assert main(["--quiet", "edit", str(clip), *CASE, "-o", out]) == 0
    return _frames(Path(out))


@pytest.fixture(scope="module")
def cli_png(sample_clip, tmp_path_factory) -> np.ndarray:
    """The CLI's frames as numbered PNGs (``-o DIR/``: lossless, so the comparison is exact)."""
    return _cli(sample_clip, f"{tmp_path_factory.mktemp('cli') / 'frames'}/")


def test_the_app_edits_as_the_cli_does(sample_clip, tmp_path):
    from ipfacediff.jobs.edit import run_edit
    from ipfacediff.ui import App

    app = App(workdir=tmp_path / "app")
    req = app.request(str(sample_clip), "eyeglasses", "ip-facediff", "tiny", 7, 3, 8, 10, tmp_path / "app.mp4")
    run_edit(req)
    assert np.array_equal(_frames(tmp_path / "app.mp4"), _cli(sample_clip, str(tmp_path / "cli.mp4")))


def test_the_comfyui_chain_edits_as_the_cli_does(sample_clip, cli_png):
    from ipfacediff.registry import PipelineSettings

    folder = ROOT / "integrations" / "comfyui"
    spec = importlib.util.spec_from_file_location(
        "comfyui_ipfacediff", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    pack = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = pack
        spec.loader.exec_module(pack)
    node = {name.removeprefix("IPFaceDiff"): cls() for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    settings = PipelineSettings()
    images, _, _ = node["LoadVideo"].load(str(sample_clip), 10)
    model, _ = node["LoadBackbone"].load("tiny", "cpu")
    faces, _ = node["DetectAlignFaces"].detect(images, model, "retinaface", 10, settings.landmark_smoothing)
    keys, _ = node["PickKeyframes"].pick(faces, "uniform", 8, 5)
    edits, _, _ = node["EditKeyframes"].edit(
        model, images, faces, keys, "eyeglasses", 3, 7.5, 7, settings.source_prompt
    )
    crops, _ = node["Propagate"].propagate(images, faces, edits, "layered", 4)
    (result,) = node["PasteBack"].paste(images, faces, crops, 3)
    got = (result.clamp(0, 1) * 255).round().byte().numpy()
    assert got.shape == cli_png.shape
    assert np.array_equal(got, cli_png)
