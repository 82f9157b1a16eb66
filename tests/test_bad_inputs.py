"""Every bad input to ``ipfacediff edit`` gets one line on stderr and exit status 2; the input is
not modified and nothing is left in the output folder. And the odd-but-valid inputs: a huge frame
size, a face that leaves the frame for a while."""

from __future__ import annotations

import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, needs_data, needs_models, run_main

from ipfacediff.runtime.video import open_frames, probe

pytestmark = needs_models
FAST = ["--backbone", "tiny", "--steps", "2", "--set", "backbone.resolution=64", "--set", "face_processor.verify=none"]


def _encode(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 25,
    fmt: str | None = None,
    rotation: int = 0,
    times_ms: list[int] | None = None,
) -> Path:
    import av

    h, w = frames[0].shape[:2] if frames else (64, 64)
    tb = Fraction(1, 1000) if times_ms else Fraction(1, fps)
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if times_ms:
            s.time_base = s.codec_context.time_base = tb
        if rotation:
            s.set_display_rotation(rotation)
        if not frames:
            c.start_encoding()
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = (times_ms[i] if times_ms else i), tb
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def _audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=44100)
        a.layout = "mono"
        for i in range(0, 44100, 1024):
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = 44100, i, Fraction(1, 44100)
            for pkt in a.encode(af):
                c.mux(pkt)
        for pkt in a.encode():
            c.mux(pkt)
    return path


def _make(kind: str, d: Path, sample_clip: Path) -> Path:
    if kind == "missing":
        return d / "missing.mp4"
    if kind == "fifo":
        os.mkfifo(d / "pipe.mp4")
        return d / "pipe.mp4"
    if kind == "empty-folder":
        (d / "frames").mkdir()
        (d / "frames" / "notes.txt").write_text("no images here")
        return d / "frames"
    if kind == "empty-file":
        (d / "empty.mp4").write_bytes(b"")
        return d / "empty.mp4"
    if kind == "text":
        (d / "text.mp4").write_text("this is a text file, not a video\n")
        return d / "text.mp4"
    if kind == "truncated":
        data = sample_clip.read_bytes()
        (d / "half.mp4").write_bytes(data[: len(data) // 2])
        return d / "half.mp4"
    if kind == "zero-frames":
        return _encode(d / "zero.mkv", [], fmt="matroska")
    if kind == "zero-frames-mp4":
        return _encode(d / "zero.mp4", [])
    if kind == "audio-only":
        return _audio_only(d / "voice.m4a")
    if kind == "too-large":
        return _encode(d / "wide.mp4", [np.zeros((64, 8320, 3), np.uint8)] * 2)
    raise AssertionError(kind)


def _digest(path: Path) -> str | None:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        return ",".join(sorted(p.name for p in path.iterdir()))
    return None


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "no such file or folder"),
        ("fifo", "not a regular file"),
        ("empty-folder", "the folder holds no images"),
        ("empty-file", "the file is empty"),
        ("text", "not a readable video or image"),
        ("truncated", "not a readable video or image"),
        ("zero-frames", "no video frames could be read"),
        ("zero-frames-mp4", "the file has no video stream"),
        ("audio-only", "the file has no video stream"),
        ("too-large", "frames are 8320x64, larger than the 8192 px limit on the longest side"),
    ],
)
def test_bad_input_one_line_exit_2_untouched_no_output(kind, needle, sample_clip, tmp_path):
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    path = _make(kind, src_dir, sample_clip)
    before = _digest(path) if kind != "fifo" else None
    r = run_main("edit", str(path), "-p", "eyeglasses", *FAST, "-o", str(out_dir / "edited.mp4"))
    assert r.returncode == 2, (kind, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0] and str(path) in lines[0], (
        r.stderr
    )
    if kind != "fifo":
        assert _digest(path) == before
    assert list(out_dir.iterdir()) == []


def test_8k_input_is_edited_at_full_size(sample_clip, tmp_path):
    """A 7680x4320 clip (8K UHD): faces are found on a downscaled copy, the crop is edited, the
    frame keeps its size; frames are read two at a time (16 at HD) to bound memory."""
    import cv2

    face = open_frames(sample_clip).get([0])[0]
    big = cv2.resize(face, (4320, 4320), interpolation=cv2.INTER_LINEAR)
    frame = np.zeros((4320, 7680, 3), np.uint8)
    frame[:, 1680:6000] = big
    clip = _encode(tmp_path / "uhd.mp4", [frame, frame])
    assert open_frames(clip).batch == 2
    r = run_main(
        "--quiet",
        "edit",
        str(clip),
        "-p",
        "eyeglasses",
        *FAST,
        "-o",
        str(tmp_path / "out.mp4"),
        "--json",
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.n_frames) == (7680, 4320, 2) and rep["frames_edited"] == 2
    out = open_frames(tmp_path / "out.mp4").get([0])[0].astype(int)
    assert np.abs(out[:, :1500] - frame[:, :1500]).mean() < 2  # the background beside the face is kept


@needs_data
def test_face_leaving_the_frame_passes_through_with_a_warning_and_a_count(sample_clip, tmp_path):
    src = open_frames(sample_clip).get(list(range(24)))
    import cv2

    empty = cv2.resize(
        np.asarray(
            __import__("PIL.Image", fromlist=["Image"]).open(DATA / "images" / "non-human" / "s22.jpg").convert("RGB")
        ),
        (256, 256),
    )
    frames = [*src[:8], *[empty] * 6, *src[14:20]]  # the face is gone in frames 8..13
    clip = _encode(tmp_path / "leaves.mp4", frames)
    r = run_main(
        "--quiet",
        "edit",
        str(clip),
        "-p",
        "eyeglasses",
        *FAST[:-2],
        "-o",
        str(tmp_path / "out.mp4"),
        "--json",
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr  # (default face verification: RetinaFace alone sees a face in this picture)
    rep = json.loads(r.stdout)
    assert rep["frames"] == 20 and rep["frames_edited"] == 14 and rep["frames_passed_through"] == 6
    assert "no face in 6 of 20 frames: those frames pass through unedited" in rep["warnings"]
    a, b = (
        open_frames(clip).get(list(range(20))).astype(int),
        open_frames(tmp_path / "out.mp4").get(list(range(20))).astype(int),
    )
    through = np.abs(a[8:14] - b[8:14]).mean()
    edited = np.abs(a[:8] - b[:8]).mean()
    print(f"mean change: frames without a face {through:.2f} (codec only), edited frames {edited:.2f}")
    # a detailed picture re-encoded (x264 at the default crf) changes by ~1.7 levels; edited frames by ~4.9
    # (pixel-space propagation: no VAE on them)
    assert through < 3 and edited > 2 * through


def test_rotated_phone_clip_is_read_upright_and_written_upright(sample_clip, tmp_path):
    """A clip stored sideways with a 90-degree display rotation (as phones record): frames are read
    as displayed, the face is found upright, and the output shows the same picture (upright pixels,
    no rotation flag needed)."""
    face = open_frames(sample_clip).get(list(range(6)))
    shown = np.zeros((6, 256, 320, 3), np.uint8)
    shown[:, :, 32:288] = face  # what a player shows: 320 wide, 256 high
    clip = _encode(
        tmp_path / "phone.mp4", [np.rot90(f, k=-1) for f in shown], rotation=90
    )  # stored 256 wide, 320 high
    info = probe(clip)
    assert (info.rotation, info.width, info.height) == (90, 320, 256)
    assert np.abs(open_frames(clip).get([0])[0].astype(int) - shown[0]).mean() < 3
    r = run_main(
        "--quiet",
        "edit",
        str(clip),
        "-p",
        "eyeglasses",
        *FAST,
        "-o",
        str(tmp_path / "out.mp4"),
        "--json",
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    out = probe(tmp_path / "out.mp4")
    assert (out.width, out.height, out.rotation, out.n_frames) == (320, 256, 0, 6) and rep["frames_edited"] == 6
    got = open_frames(tmp_path / "out.mp4").get(list(range(6))).astype(int)
    assert np.abs(got[:, :, :24] - shown[:, :, :24]).mean() < 2  # the black side bars stay where a player shows them
    assert np.abs(got[:, 60:200, 100:220] - shown[:, 60:200, 100:220]).mean() > 2  # the face was edited


def test_variable_frame_rate_clip_keeps_its_frame_times(sample_clip, tmp_path):
    frames = list(open_frames(sample_clip).get(list(range(10))))
    times = [0, 33, 100, 133, 200, 233, 300, 333, 400, 433]  # 33 and 67 ms apart, alternating
    clip = _encode(tmp_path / "vfr.mp4", frames, fps=20, times_ms=times)
    info = probe(clip)
    assert info.variable_frame_rate and info.n_frames == 10
    r = run_main(
        "--quiet",
        "edit",
        str(clip),
        "-p",
        "eyeglasses",
        *FAST,
        "-o",
        str(tmp_path / "out.mp4"),
        "--json",
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr
    out = probe(tmp_path / "out.mp4")
    assert out.variable_frame_rate and out.n_frames == 10
    t_in = [float((t - info.timestamps[0]) * info.time_base) for t in info.timestamps]
    t_out = [float((t - out.timestamps[0]) * out.time_base) for t in out.timestamps]
    assert np.allclose(t_in, t_out, atol=1e-3) and np.allclose(t_in, np.array(times) / 1000, atol=1e-3), (t_in, t_out)
