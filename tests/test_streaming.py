"""Long clips: chunked propagation with keyframes across chunk borders, keyframe groups, bounded
memory; interrupted runs that resume; the shared cache (concurrent runs, limit, list, clear)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_models, run_main

from ipfacediff.runtime.video import open_frames

pytestmark = needs_models
EXE = str(Path(sys.executable).parent / "ipfacediff")
FAST = ["--backbone", "tiny", "--steps", "3", "--set", "backbone.resolution=64", "--set", "face_processor.verify=none"]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    from ipfacediff.runtime.sample import write_sample_clip

    return write_sample_clip(tmp_path_factory.mktemp("long") / "long.mp4", n_frames=120, size=128, audio=True)


def _frames(path: Path) -> np.ndarray:
    src = open_frames(path)
    try:
        return src.get(list(range(len(src))))
    finally:
        src.close()


def test_keyframe_groups_share_an_anchor():
    from ipfacediff.runtime.editing import keyframe_groups

    keys = list(range(0, 200, 8))
    groups = keyframe_groups(keys, 10)
    assert groups[0] == keys[:10] and all(2 <= len(g) <= 10 for g in groups)
    assert all(
        b[0] == a[-1] for a, b in zip(groups, groups[1:])
    )  # each group starts at the previous group's last keyframe
    assert sorted({k for g in groups for k in g}) == keys
    assert keyframe_groups(keys[:5], 16) == [keys[:5]]


@pytest.mark.parametrize("name", ["exact-nn", "latent-nn"])
def test_chunked_propagation_equals_whole_clip_propagation(catalog, name):
    from ipfacediff.runtime.editing import chunk_with_borders

    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 4, 16, 16, generator=g) + 0.15 * torch.randn(41, 4, 16, 16, generator=g).cumsum(0)
    keys = list(range(0, 41, 6))
    edited = torch.randn(len(keys), 4, 16, 16, generator=g)
    stats = (src[keys].mean(dim=(0, 2, 3)), src[keys].std(dim=(0, 2, 3)))
    prop = catalog.build("propagator", name)
    from ipfacediff.interfaces import PropagationInput

    whole = prop.propagate(
        PropagationInput(key_rows=keys, frames=list(range(41)), features=src, stats=stats, edited_latents=edited)
    )
    for chunk in (1, 5, 7, 13, 41):
        parts = []
        for a in range(0, 41, chunk):
            rows = list(range(a, min(41, a + chunk)))
            sub, sub_keys, first = chunk_with_borders(rows, keys)
            assert all(sub[p] in keys for p in sub_keys) and sub[first : first + len(rows)] == rows
            out = prop.propagate(
                PropagationInput(
                    key_rows=sub_keys,
                    frames=sub,
                    features=src[sub],
                    stats=stats,
                    edited_latents=edited[[keys.index(sub[p]) for p in sub_keys]],
                )
            )
            parts.append(out[first : first + len(rows)])
        assert torch.equal(torch.cat(parts), whole), chunk


def _edit(clip: Path, out: Path, *extra: str, cache: Path | None = None) -> dict:
    """An edit by the CLI's entry point in this process (the tests that need a process of their own,
    interrupted or concurrent runs, start the console script)."""
    env = {"IPFACEDIFF_CACHE": str(cache)} if cache else {}
    r = run_main("--quiet", "edit", str(clip), "-p", "eyeglasses", *FAST, "-o", str(out), "--json", *extra, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _border_jumps(src: np.ndarray, out: np.ndarray, borders: list[int]) -> tuple[float, float]:
    """Mean change of the edit (output - source) from frame i-1 to i, at chunk borders and inside."""
    d = out.astype(float) - src.astype(float)
    step = np.abs(np.diff(d, axis=0)).mean(axis=(1, 2, 3))  # step[i-1]: frame i-1 -> i
    at = [step[b - 1] for b in borders]
    inside = [step[i - 1] for i in range(1, len(out)) if i not in borders]
    return float(np.mean(at)), float(np.mean(inside))


def test_chunked_edit_has_no_jump_at_chunk_borders(long_clip, tmp_path):
    n = 60
    common = ["--max-frames", str(n), "--no-cache", "--set", "settings.keyframe_group=3"]
    whole = _edit(long_clip, tmp_path / "whole.mp4", *common, "--set", f"settings.chunk_frames={n}")
    chunked = _edit(long_clip, tmp_path / "chunked.mp4", *common, "--set", "settings.chunk_frames=11")
    assert whole["chunks"] == 1 and chunked["chunks"] == 6 and chunked["keyframe_groups"] == 4
    assert chunked["unet_evaluations"] == whole["unet_evaluations"]
    src, a, b = _frames(long_clip)[:n], _frames(tmp_path / "whole.mp4"), _frames(tmp_path / "chunked.mp4")
    diff = np.abs(a.astype(int) - b.astype(int))
    print(f"chunked vs whole clip: mean abs diff {diff.mean():.4f}, max {diff.max()}")
    assert diff.mean() < 0.05  # the same latents; only VAE batch composition differs
    borders = list(range(11, n, 11))
    at, inside = _border_jumps(src, b, borders)
    print(f"edit change per frame: at chunk borders {at:.3f}, inside chunks {inside:.3f}")
    assert at < 1.5 * inside


def test_memory_does_not_grow_with_clip_length(tmp_path):
    """Peak traced memory (Python objects and numpy arrays: frames, crops, latents read back, decoded
    crops) of a 32- and a 96-frame edit (8-frame chunks, so the longer clip has 3x the chunks).
    Held for the whole clip, the per-frame arrays would add ~30 KB per frame here (64 px crops, 128 px
    frames); streamed, only the chunk's are alive."""
    import tracemalloc

    from ipfacediff.jobs.edit import EditRequest, run_edit
    from ipfacediff.registry import load_registry
    from ipfacediff.runtime.sample import write_sample_clip

    reg = load_registry()
    peaks = {}
    for n in (8, 32, 96):  # the first run warms up imports and caches: not compared
        clip = write_sample_clip(tmp_path / f"m{n}.mp4", n_frames=n, size=128, audio=False)
        req = EditRequest(
            input=clip,
            prompt="eyeglasses",
            pipeline=reg.pipeline("ip-facediff"),
            registry=reg,
            output=tmp_path / f"o{n}.mp4",
            backbone="tiny",
            steps=2,
            sets={"backbone": {"resolution": 64}, "settings": {"keyframe_interval": 8, "chunk_frames": 8}},
            face_processor="full-frame",
            show_progress=False,
            cache=False,
        )
        tracemalloc.start()
        try:
            rep = run_edit(req)
            peaks[n] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        print(
            f"{n} frames: traced peak {peaks[n]:.1f} MB, {rep['chunks']} chunks, {rep['keyframe_groups']} keyframe "
            "groups, "
            f"{rep['timings_s']['total']:.1f} s"
        )
    growth = peaks[96] - peaks[32]
    print(f"growth 32 -> 96 frames: {growth:.2f} MB ({growth / 64 * 1024:.1f} KB per frame)")
    # held in RAM, 64 more frames would add ~2 MB; streamed 1-4 KB per frame (the face track, the
    # report's per-chunk entries)
    assert growth < 0.8, peaks


def _wait_for(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupted_edit_leaves_nothing_and_resumes_after_finished_stages(sig, long_clip, tmp_path):
    cache = tmp_path / "cache"
    out_dir = tmp_path / "out"
    cmd = [
        EXE,
        "--quiet",
        "edit",
        str(long_clip),
        "-p",
        "eyeglasses",
        *FAST,
        "--max-frames",
        "64",
        "--set",
        "settings.chunk_frames=8",
        "-o",
        str(out_dir / "e.mp4"),
        "--json",
    ]
    env = {**os.environ, "IPFACEDIFF_CACHE": str(cache)}
    # Ctrl-C as a terminal sends it: the edit starts with SIGINT's default disposition, even where this test
    # runs with SIGINT ignored (a shell's background job: the edit would inherit that and finish with 0)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for(cache / "keyframe-edits", "*.pt", proc)  # keyframes edited: interrupt while rendering
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: nothing was written under the output name"), stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []  # no output, no temporary file

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["reused_stages"] == ["detect", "encode", "keyframe_edit"]
    assert not {"inversion", "keyframe-edit", "feature"} & set(rep["unet_evaluations"]["by_stage"])
    if sig == signal.SIGINT:  # the resumed result is the uninterrupted one
        ref = _edit(
            long_clip, tmp_path / "ref.mp4", "--max-frames", "64", "--set", "settings.chunk_frames=8", "--no-cache"
        )
        assert ref["reused_stages"] == [] and ref["unet_evaluations"]["total"] > rep["unet_evaluations"]["total"]
        assert np.array_equal(_frames(out_dir / "e.mp4"), _frames(tmp_path / "ref.mp4"))


def test_two_runs_at_once_share_the_cache_without_corrupting_it(long_clip, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "IPFACEDIFF_CACHE": str(cache)}

    def cmd(name: str) -> list[str]:
        return [
            EXE,
            "--quiet",
            "edit",
            str(long_clip),
            "-p",
            "eyeglasses",
            *FAST,
            "--max-frames",
            "24",
            "-o",
            str(tmp_path / f"{name}.mp4"),
            "--json",
        ]

    procs = [
        subprocess.Popen(cmd(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name in ("a", "b")
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in results]
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")], "temporary files left in the cache"
    third = json.loads(subprocess.run(cmd("c"), capture_output=True, text=True, env=env, timeout=600).stdout)
    assert third["reused_stages"] == ["detect", "encode", "keyframe_edit"]
    a, b, c = (_frames(tmp_path / f"{x}.mp4") for x in "abc")
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_cache_list_limit_and_clear(long_clip, sample_clip, tmp_path):
    cache = tmp_path / "cache"
    env = {"IPFACEDIFF_CACHE": str(cache)}
    rep = _edit(sample_clip, tmp_path / "a.mp4", "--max-frames", "8", cache=cache)
    assert rep["cache"]["enabled"] and rep["cache"]["size_bytes"] > 0 and rep["cache"]["evicted"] == 0
    listing = json.loads(run_main("cache", "list", "--json", env=env).stdout)
    cats = listing["categories"]
    assert {c: cats[c]["entries"] for c in ("tracks", "latents", "inversions", "keyframe-edits")} == dict.fromkeys(
        ("tracks", "latents", "inversions", "keyframe-edits"), 1
    )
    assert listing["evictable_bytes"] == sum(u["bytes"] for u in cats.values() if u["evictable"]) > 0
    table = run_main("cache", "list", env=env)
    assert table.returncode == 0 and "keyframe-edits" in table.stdout and "evictable" in table.stdout

    # another clip under a 1 KB limit: the first clip's entries go, this run's own stay
    r = run_main(
        "--quiet",
        "--cache-limit",
        "1KB",
        "edit",
        str(long_clip),
        "-p",
        "eyeglasses",
        *FAST,
        "--max-frames",
        "8",
        "-o",
        str(tmp_path / "b.mp4"),
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["cache"]["evicted"] == 4 and rep["cache"]["limit_bytes"] == 1024 and rep["cache"]["freed_bytes"] > 0
    cats = json.loads(run_main("cache", "list", "--json", env=env).stdout)["categories"]
    assert all(cats[c]["entries"] == 1 for c in ("tracks", "latents", "inversions", "keyframe-edits"))
    again = _edit(long_clip, tmp_path / "c.mp4", "--max-frames", "8", cache=cache)
    assert again["reused_stages"] == ["detect", "encode", "keyframe_edit"]

    cleared = json.loads(run_main("cache", "clear", "--json", env=env).stdout)
    assert cleared["removed"] == 4 and cleared["freed"] > 0
    cats = json.loads(run_main("cache", "list", "--json", env=env).stdout)["categories"]
    assert not any(u["evictable"] for u in cats.values())
    for args, needle in (
        (["cache", "clear", "everything"], "cache category 'everything' does not exist"),
        (["--cache-limit", "lots", "cache", "list"], "cache limit 'lots'"),
    ):
        r = run_main(*args, env=env)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="no file locks to tell a live run's folder")
def test_a_killed_runs_private_folder_is_swept_by_the_next_run_and_a_live_runs_is_kept(tmp_path):
    """A run killed with SIGKILL cannot remove its private stage folder; the next private folder made
    removes it (its lock is free), but never one whose run is alive, nor one made in the last
    ``PRIVATE_GRACE`` seconds, nor a folder of the same name without the lock (not made by a run)."""
    import tempfile

    from ipfacediff.runtime.cache import PRIVATE_LOCK, StageCache

    code = (
        "import sys, tempfile, time; tempfile.tempdir = sys.argv[1]\n"
        "from ipfacediff.runtime.cache import StageCache\n"
        "c = StageCache(enabled=False); c.save_npz('tracks', 'k', a=__import__('numpy').zeros(3))\n"
        "print(c.root, flush=True); time.sleep(120)\n"
    )

    def start() -> tuple[subprocess.Popen, Path]:
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        return p, Path(p.stdout.readline().strip())

    killed, gone = start()
    alive, kept = start()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        stranger = tmp_path / "ipfacediff-run-stranger"
        stranger.mkdir()
        for folder in (gone, kept, stranger):
            assert folder.exists()
        tempfile.tempdir, before = str(tmp_path), tempfile.tempdir
        try:
            first = StageCache(enabled=False)
            assert gone.exists()  # its lock is free, but younger than the grace
            old = time.time() - 3600
            for folder in (gone, kept):
                os.utime(folder / PRIVATE_LOCK, (old, old))
            second = StageCache(enabled=False)
        finally:
            tempfile.tempdir = before
        assert not gone.exists() and kept.exists() and stranger.exists()
        assert (kept / "tracks" / "k.npz").exists() and first.root.exists() and second.root.exists()
        first.close()
        second.close()
    finally:
        alive.kill()
        alive.wait(30)
        killed.stdout.close()
        alive.stdout.close()


def test_a_private_stage_folder_goes_when_closed_or_when_the_cache_is_dropped(tmp_path, monkeypatch):
    """``--no-cache`` keeps a run's stages in a private temporary folder: removed by ``close``, and by the
    cache's garbage collection when an integration keeps a job open and drops it without closing it
    (the ComfyUI edit node hands its job to the propagate node)."""
    import gc
    import tempfile

    from ipfacediff.runtime.cache import StageCache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    closed, dropped = StageCache(enabled=False), StageCache(enabled=False)
    for cache in (closed, dropped):
        cache.save_npz("tracks", "k", a=np.zeros(3))
        assert cache.path("tracks", "k", ".npz").exists()
    roots = [closed.root, dropped.root]
    closed.close()
    closed.close()  # twice is harmless
    assert not roots[0].exists() and roots[1].exists()
    del dropped, cache
    gc.collect()
    assert not roots[1].exists() and not list(tmp_path.iterdir())
    kept = StageCache(enabled=True)  # the user's cache is never removed
    kept.close()
    assert kept.root.exists()
