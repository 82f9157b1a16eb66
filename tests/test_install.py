"""The venv holds one torch, and the design card's packages import beside it."""

import importlib
import importlib.metadata as md

import pytest


def test_one_torch_in_the_venv():
    torch_dists = [d for d in md.distributions() if (d.metadata["Name"] or "").lower() in ("torch", "pytorch")]
    assert len(torch_dists) == 1, [d.metadata["Name"] + " " + d.version for d in torch_dists]
    import torch

    assert torch.__version__.split("+")[0] == torch_dists[0].version.split("+")[0]


@pytest.mark.parametrize(
    "module",
    [
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "pluggy",
        "open_clip",
        "decord",
        "hnswlib",
        "rich",
        "av",
        "yaml",
        "insightface",
        "facenet_pytorch",
        "onnx2torch",
        "cv2",
    ],
)
def test_design_card_packages_import(module):
    importlib.import_module(module)


def test_facenet_and_insightface_keep_torch():
    """facenet-pytorch 2.6 would pin torch<2.3; the installed one must not have downgraded it."""
    import torch
    from facenet_pytorch import MTCNN  # noqa: F401
    from insightface.app import FaceAnalysis  # noqa: F401

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 4)
    assert not any((d.metadata["Name"] or "").lower() == "opencv-python" for d in md.distributions()), (
        "the GUI opencv-python was installed (insightface must go in with --no-deps)"
    )


def test_installed_versions_are_the_pinned_ones():
    """make install uses constraints.txt: the venv holds exactly the versions CI passed with."""
    from pathlib import Path

    pins = {}
    for line in (Path(__file__).resolve().parent.parent / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    assert {"torch", "torchvision", "diffusers", "transformers", "peft", "numpy"} <= set(pins)
    off = {}
    for name, version in pins.items():
        try:
            got = md.version(name)
        except md.PackageNotFoundError:
            off[name] = (version, None)
            continue
        if got.split("+")[0] != version.split("+")[0]:
            off[name] = (version, got)
    assert not off, f"pinned vs installed: {off}"
