"""Shared fixtures. Real weights come through the model resolver (IPFACEDIFF_MODELS, set by .ci/run,
or ../shared/models when present); real videos and pictures from IPFACEDIFF_TEST_DATA or
../shared/data. Tests that need them skip when neither is there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SHARED = ROOT.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("IPFACEDIFF_OFFLINE", "1")
# the suite runs with the built-in plugins only: a plugin installed in the venv does not leak into it
# (a test that wants third-party plugins sets IPFACEDIFF_PLUGINS, or None to unset it, in its env)
os.environ["IPFACEDIFF_PLUGINS"] = ""
if not os.environ.get("IPFACEDIFF_MODELS") and (_SHARED / "models" / "SHA256SUMS").is_file():
    os.environ["IPFACEDIFF_MODELS"] = str(_SHARED / "models")

DATA = Path(os.environ.get("IPFACEDIFF_TEST_DATA") or _SHARED / "data")
MODELS = Path(os.environ["IPFACEDIFF_MODELS"]) if os.environ.get("IPFACEDIFF_MODELS") else None


def _have_models() -> bool:
    return MODELS is not None and (MODELS / "retinaface").is_dir() and (MODELS / "mobilefacenet").is_dir()


needs_models = pytest.mark.skipif(not _have_models(), reason="real weights not found (set IPFACEDIFF_MODELS)")
needs_data = pytest.mark.skipif(
    not (DATA / "videos").is_dir(), reason="shared test data not found (set IPFACEDIFF_TEST_DATA)"
)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    if not os.environ.get("IPFACEDIFF_CACHE"):
        os.environ["IPFACEDIFF_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def sample_clip(tmp_path_factory) -> Path:
    from ipfacediff.runtime.sample import write_sample_clip

    return write_sample_clip(tmp_path_factory.mktemp("sample") / "astronaut.mp4", n_frames=24, size=256)


@pytest.fixture(scope="session")
def catalog():
    from ipfacediff.catalog import get_catalog

    return get_catalog()


@pytest.fixture(scope="session")
def d0_face68(catalog):
    """A real face and its landmarks, for synthetic motion made by hand: d0's first frame and dlib's
    68 landmarks on it (unsmoothed), fitted in RetinaFace's box as the truth did until 2026-12-08: the
    tests' hand-made motions and margins were set on these. (The truth now fits them in the box of dlib's
    own detector, :func:`truth68.dlib_boxes`; on this frame the eyes, brows, nose and mouth land within 4 px
    of these, the jaw up to 28 px higher: here it runs below the chin.)"""
    from ipfacediff.jobs.bench.truth68 import dlib68_landmarks
    from ipfacediff.runtime.video import open_frames

    frame = open_frames(DATA / "videos" / "d0.mp4").get([0])[0]
    det = catalog.build("face_processor", "retinaface", {"verify": "none"}).detect(frame)[0]
    return frame, dlib68_landmarks(frame[None], [det], smooth=1, boxes=[det.box])[0], det


def run_cli(*args: str, env: dict | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``ipfacediff`` console script in a subprocess (``env`` values of ``None``
    remove the variable)."""
    exe = Path(sys.executable).parent / "ipfacediff"
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=600)


def run_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI entry point called in this process (no interpreter start-up, no torch import): for the
    many checks of a one-line error and its exit status. Returns what ``run_cli`` returns."""
    import contextlib
    import io

    from ipfacediff.catalog import reset_catalog
    from ipfacediff.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    if "IPFACEDIFF_PLUGINS" in (env or {}):
        reset_catalog()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # click's own usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if "IPFACEDIFF_PLUGINS" in (env or {}):
            reset_catalog()
    return subprocess.CompletedProcess(["ipfacediff", *args], code, out.getvalue(), err.getvalue())
