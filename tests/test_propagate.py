"""``ipfacediff propagate``: keyframe edits carried to every frame through the CLI, with a known
answer (a real face photo moved by a known transform, the edit drawn in the photo's coordinates),
exactness where nothing was edited, and the contract for bad keyframe folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA, needs_data, needs_models, run_main
from PIL import Image
from test_propagation import _psnr

pytestmark = [needs_data, needs_models]
KEYS = [0, 8, 16]


def _write(folder: Path, frames: np.ndarray, names=lambda i: f"frame_{i:04d}.png", only=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        if only is None or i in only:
            Image.fromarray(f).save(folder / names(i))
    return folder


def _read(folder: Path, n: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{i:05d}.png")) for i in range(n)])


def _known_face_motion(n: int = 17, size: int = 256):
    """A real face (the first frame of d0) moved by a known similarity transform per frame (a slow
    turn, zoom and drift), and the same with an edit drawn in the face's coordinates (eyeglass rims
    around the eyes, a paint patch on the chin)."""
    from ipfacediff.runtime.video import open_frames

    img = cv2.resize(open_frames(DATA / "videos" / "d0.mp4").get([0])[0], (size, size), interpolation=cv2.INTER_AREA)
    edited = img.copy()
    cv2.ellipse(edited, (104, 122), (20, 12), 0, 0, 360, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.ellipse(edited, (152, 122), (20, 12), 0, 0, 360, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.rectangle(edited, (112, 196), (144, 208), (200, 40, 160), -1)
    src, gt = [], []
    for t in range(n):
        m = cv2.getRotationMatrix2D((size / 2, size / 2), 0.5 * t, 1.0 + 0.004 * t)
        m[:, 2] += (0.8 * t, 0.4 * t)
        src.append(cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        gt.append(cv2.warpAffine(edited, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(src), np.stack(gt)


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    src, gt = _known_face_motion()
    root = tmp_path_factory.mktemp("moving")
    return src, gt, _write(root / "in", src), _write(root / "keys", gt, lambda i: f"{i:05d}.png", KEYS)


@pytest.mark.parametrize("propagator", ["layered", "mesh-flow", "flow-residual"])
def test_propagate_reproduces_a_known_edit_under_known_motion(moving, tmp_path, propagator):
    src, gt, inp, keys = moving
    r = run_main(
        "--quiet",
        "propagate",
        str(inp),
        "--keyframes",
        str(keys),
        "-o",
        str(tmp_path / "out") + "/",
        "--propagator",
        propagator,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert (
        rep["frames"] == 17
        and rep["keyframes"] == KEYS
        and rep["output_kind"] == "frames"
        and rep["propagator"] == propagator
    )
    out = _read(tmp_path / "out", 17)
    others = [i for i in range(17) if i not in KEYS]
    assert np.array_equal(out[KEYS], gt[KEYS])  # keyframes as given
    score = _psnr(out[others], gt[others])
    print(
        f"known motion through propagate, {propagator}: {score:.2f} dB (source {_psnr(src[others], gt[others]):.2f})"
    )
    # measured here: mesh-flow 44.58, flow-residual 49.30 (source 25.54). On this true (rigid) motion the
    # face model costs mesh-flow ~5 dB against plain flow; on the FaceMesh ground truth it gains (it
    # grades itself there)
    assert score > 40.0


def test_propagate_leaves_the_source_exactly_where_nothing_was_edited(moving, tmp_path):
    src, _, inp, _ = moving
    keys = src.copy()
    cv2.rectangle(keys[0], (120, 170), (136, 180), (255, 0, 0), -1)  # one small edit on one keyframe (on the face)
    kdir = _write(tmp_path / "keys", keys, lambda i: f"{i}.png", KEYS)
    r = run_main("--quiet", "propagate", str(inp), "--keyframes", str(kdir), "-o", str(tmp_path / "out") + "/")
    assert r.returncode == 0, r.stderr
    out = _read(tmp_path / "out", 17)
    assert np.array_equal(
        out[8:], src[8:]
    )  # keyframes 8 and 16 are unedited: every frame from 8 on is the source, byte for byte
    far = np.ones(src.shape[1:3], bool)
    far[100:220, 80:180] = False
    assert np.array_equal(out[:8][:, far], src[:8][:, far])  # and far from the edit on the frames it reaches
    assert not np.array_equal(out[1:8], src[1:8])


def test_propagate_of_a_one_frame_clip_writes_its_keyframe(moving, tmp_path):
    src, gt, _, _ = moving
    inp = _write(tmp_path / "in", src[:1])
    keys = _write(tmp_path / "keys", gt[:1], lambda i: f"{i}.png")
    r = run_main(
        "--quiet", "propagate", str(inp), "--keyframes", str(keys), "-o", str(tmp_path / "out") + "/", "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png"]
    assert np.array_equal(_read(tmp_path / "out", 1), gt[:1])


def test_propagate_writes_a_video_and_warns_about_edits_outside_the_face(sample_clip, tmp_path):
    from ipfacediff.runtime.video import open_frames, probe

    src = open_frames(sample_clip).get(list(range(9)))
    keys = src[[0, 8]].copy()
    keys[:, -40:, :40] = (
        255,
        0,
        255,
    )  # a bottom corner: outside the face region (the top ones are inside its feathered crop)
    kdir = tmp_path / "keys"
    kdir.mkdir()
    for i, k in zip((0, 8), keys):
        Image.fromarray(k).save(kdir / f"{i:05d}.png")
    r = run_main(
        "--quiet",
        "propagate",
        str(sample_clip),
        "--keyframes",
        str(kdir),
        "-o",
        str(tmp_path / "out.mp4"),
        "--max-frames",
        "9",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert probe(tmp_path / "out.mp4").n_frames == 9 and rep["output_kind"] == "video"
    assert any("outside the face region" in w for w in rep["warnings"])
    # x264 writes its options into the stream: the default encoder settings are the ones in use
    assert b"crf=17.0" in (tmp_path / "out.mp4").read_bytes()


def test_the_video_encoder_settings_reach_the_encoder(sample_clip, tmp_path):
    kdir = tmp_path / "keys"
    kdir.mkdir()
    from ipfacediff.runtime.video import open_frames

    Image.fromarray(open_frames(sample_clip).get([0])[0]).save(kdir / "0.png")
    out = tmp_path / "out.mp4"
    args = ["--quiet", "propagate", str(sample_clip), "--keyframes", str(kdir), "-o", str(out), "--max-frames", "3"]
    r = run_main(*args, "--set", "settings.video_crf=23", "--set", "settings.video_preset=medium")
    assert r.returncode == 0, r.stderr
    stream = out.read_bytes()
    # x264 writes its options into the stream: crf, and medium's 3 reference frames (veryfast uses 1)
    assert b"crf=23.0" in stream and b" ref=3 " in stream
    r = run_main(*args, "--overwrite", "--set", "settings.video_preset=sideways")
    assert r.returncode == 2 and "video_preset" in r.stderr and "Traceback" not in r.stderr


def _bad(tmp_path, moving, make):
    src, _, inp, _ = moving
    kdir = tmp_path / "keys"
    kdir.mkdir()
    make(kdir, src)
    out = tmp_path / "out"
    r = run_main("--quiet", "propagate", str(inp), "--keyframes", str(kdir), "-o", str(out) + "/")
    return r, out


@pytest.mark.parametrize(
    "case,make,message",
    [
        ("empty", lambda d, s: None, "holds no images"),
        ("past the end", lambda d, s: Image.fromarray(s[0]).save(d / "17.png"), "past the end"),
        ("size", lambda d, s: Image.fromarray(s[0][:100]).save(d / "3.png"), "does not match"),
        ("unreadable", lambda d, s: (d / "3.png").write_bytes(b"not a png"), "not a readable image"),
        (
            "duplicate",
            lambda d, s: (Image.fromarray(s[0]).save(d / "8.png"), Image.fromarray(s[0]).save(d / "00008.jpg")),
            "both replace frame 8",
        ),
        ("no number", lambda d, s: Image.fromarray(s[0]).save(d / "key.png"), "no frame number"),
    ],
)
def test_propagate_refuses_bad_keyframes_in_one_line(tmp_path, moving, case, make, message):
    r, out = _bad(tmp_path, moving, make)
    assert r.returncode == 2, (case, r.stdout, r.stderr)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_propagate_refuses_a_latent_propagator_and_an_existing_output(tmp_path, moving):
    _, _, inp, keys = moving
    r = run_main(
        "--quiet",
        "propagate",
        str(inp),
        "--keyframes",
        str(keys),
        "-o",
        str(tmp_path / "o") + "/",
        "--propagator",
        "latent-nn",
    )
    assert r.returncode == 2 and "propagates latents" in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.png").write_bytes(b"")
    r = run_main("--quiet", "propagate", str(inp), "--keyframes", str(keys), "-o", str(tmp_path / "taken"))
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_ground_truth_benchmark_scores_propagators_against_a_known_edit(tmp_path):
    r = run_main(
        "--quiet",
        "bench",
        "--ground-truth",
        "--videos",
        str(DATA / "videos" / "d0.mp4"),
        "--max-frames",
        "9",
        "--intervals",
        "4",
        "--edits",
        "glasses",
        "--truth",
        "facemesh",
        "--propagators",
        "flow-residual,mesh-flow",
        "-o",
        str(tmp_path / "b"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    scores = {s["method"]: s for s in res["rows"][0]["scores"] if s["interval"] == 4}
    assert set(scores) == {
        "source",
        "copy-nearest",
        "flow-warp-edited",
        "taesd-roundtrip",
        "flow-residual",
        "mesh-flow",
    }
    assert scores["mesh-flow"]["self_graded"] and not scores["flow-residual"]["self_graded"]
    assert scores["flow-residual"]["face_psnr"] > scores["source"]["face_psnr"] + 5
    table = (tmp_path / "b" / "groundtruth.md").read_text()
    assert "| mesh-flow * |" in table and "grades itself" in table
    assert (tmp_path / "b" / "jobs" / "d0" / "ground-truth-facemesh" / "glasses" / "strip.png").is_file()


def test_propagate_writes_a_report_and_reuses_the_face_track(moving, tmp_path):
    """``propagate`` runs as every job does: a JSON report beside the output (timings, components,
    settings, versions, warnings), the face track cached (a second run detects nothing), ``--report``
    and ``--pipeline`` taken."""
    _, _, inp, keys = moving
    args = ["--quiet", "propagate", str(inp), "--keyframes", str(keys)]
    env = {"IPFACEDIFF_CACHE": str(tmp_path / "cache")}  # the other tests of this clip fill the session's cache
    r = run_main(*args, "-o", str(tmp_path / "a.mp4"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "a.json").read_text())
    assert rep["job"] == "propagate" and rep["report"] == str(tmp_path / "a.json")
    assert {"detect", "propagate", "load_models", "total"} <= set(rep["timings_s"])
    assert rep["components"]["propagator"]["component"] == "layered" and rep["pipeline"] == "ip-facediff"
    assert rep["settings"]["landmark_smoothing"] >= 1 and rep["versions"]["ipfacediff"]
    assert "detect" not in rep["reused_stages"]
    r = run_main(
        *args,
        "-o",
        str(tmp_path / "b.mp4"),
        "--pipeline",
        "ip-facediff-flow",
        "--report",
        str(tmp_path / "r.json"),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["reused_stages"] == ["detect"] and rep["propagator"] == "flow-residual"
    assert not (tmp_path / "b.json").exists()
    r = run_main(*args, "-o", str(tmp_path / "c.mp4"), "--pipeline", "no-such-pipeline")
    assert r.returncode == 2 and "no-such-pipeline" in r.stderr and not (tmp_path / "c.mp4").exists()


def test_frames_round_trip_exported_frames_given_back_unchanged_give_the_source(sample_clip, tmp_path):
    """``ipfacediff frames`` writes full-size frames named as ``propagate`` reads them: given back
    unedited they carry no edit, and every propagated frame is the source byte for byte."""
    from ipfacediff.runtime.video import open_frames

    keys = tmp_path / "keys"
    r = run_main("frames", str(sample_clip), "--at", "16,0", "--every", "8", "-o", str(keys), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [f["index"] for f in rep["frames"]] == [0, 8, 16] and rep["size"] == [256, 256]
    assert sorted(p.name for p in keys.glob("*.png")) == ["00000.png", "00008.png", "00016.png"]
    src = open_frames(sample_clip).get(list(range(24)))
    assert np.array_equal(np.asarray(Image.open(keys / "00008.png")), src[8])
    out = tmp_path / "out"
    r = run_main("--quiet", "propagate", str(sample_clip), "--keyframes", str(keys), "-o", f"{out}/", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["keyframes"] == [0, 8, 16]
    assert np.array_equal(_read(out, 24), src)


def test_frames_refuses_bad_requests_in_one_line(sample_clip, tmp_path):
    keys = tmp_path / "keys"
    assert run_main("frames", str(sample_clip), "--at", "3", "-o", str(keys)).returncode == 0
    before = (keys / "00003.png").read_bytes()
    cases = [
        (["--at", "24"], "past the end"),
        (["--at", "a,b"], "is not a frame number"),
        (["--at", "-1"], "frame numbers start at 0"),
        ([], "give the frames to export"),
        (["--at", "3"], "exists; pass --overwrite"),
        (["--at", "1", "-o", str(tmp_path / "x.png")], "give a folder"),
    ]
    for args, needle in cases:
        if "-o" not in args:
            args = [*args, "-o", str(keys)]
        r = run_main("frames", str(sample_clip), *args)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert (keys / "00003.png").read_bytes() == before and not (tmp_path / "x.png").exists()
    assert run_main("frames", str(sample_clip), "--at", "3", "-o", str(keys), "--overwrite").returncode == 0


def test_self_check_predicts_each_keyframe_from_the_others_and_flags_one_that_disagrees(moving, tmp_path):
    """Leave-one-keyframe-out: keyframes drawn consistently (one edit under known motion) predict each
    other well; a keyframe whose edit does not follow the face (its mark moved) stands out."""
    src, gt, inp, keys = moving
    r = run_main("--quiet", "propagate", str(inp), "--keyframes", str(keys), "-o", f"{tmp_path / 'a'}/", "--json")
    assert r.returncode == 0, r.stderr
    check = json.loads(r.stdout)["self_check"]
    loo = {x["keyframe"]: x for x in check["leave_one_out"]}
    assert sorted(loo) == KEYS and loo[8]["from"] == [0, 16] and loo[0]["from"] == [8]
    good = loo[8]["psnr"]
    assert good > 30, check
    odd = tmp_path / "odd"
    odd.mkdir()
    for k in KEYS:
        img = gt[k].copy()
        if k == 8:  # the paint patch drawn 20 px to the side of where the face carries it
            img = src[k].copy()
            img[196:208, 132:164] = (200, 40, 160)
        Image.fromarray(img).save(odd / f"{k:05d}.png")
    r = run_main("--quiet", "propagate", str(inp), "--keyframes", str(odd), "-o", f"{tmp_path / 'b'}/", "--json")
    odd_check = json.loads(r.stdout)["self_check"]
    loo = {x["keyframe"]: x["psnr"] for x in odd_check["leave_one_out"]}
    assert loo[8] < good - 6, (loo, good)
    # each interval on its own: both ends of each predicted from the other; both touch the odd keyframe
    spans = {(x["from"], x["to"]): x["psnr"] for x in check["intervals"]}
    odd_spans = {(x["from"], x["to"]): x["psnr"] for x in odd_check["intervals"]}
    assert sorted(spans) == sorted(odd_spans) == [(0, 8), (8, 16)]
    assert all(odd_spans[s] < spans[s] - 6 for s in spans), (spans, odd_spans)
    assert len(check["suggest"]) == 3 and all(s["frame"] not in KEYS for s in check["suggest"])
    r = run_main(
        "--quiet",
        "propagate",
        str(inp),
        "--keyframes",
        str(keys),
        "-o",
        f"{tmp_path / 'c'}/",
        "--json",
        "--no-self-check",
    )
    assert json.loads(r.stdout)["self_check"] is None


def _drifting_track(n: int, turned: set[int]) -> list:
    """Five landmarks drifting slowly to the right (the same pose), turned (the features bunched to one
    side) on the frames in ``turned``."""
    from ipfacediff.interfaces import FaceDetection

    base = np.array([[100, 100], [140, 100], [120, 120], [105, 140], [135, 140]], np.float64)
    track = []
    for t in range(n):
        lm = base + [t * 0.5, 0]
        if t in turned:
            lm[:, 0] = lm[0, 0] + (lm[:, 0] - lm[0, 0]) * 0.4
        track.append(FaceDetection(np.array([80, 80, 160, 160.0]), 0.99, lm, "test"))
    return track


def test_suggestions_put_a_keyframe_inside_a_turn_that_lasts():
    from ipfacediff.jobs.propagate import suggest_keyframes

    turn = range(22, 33)
    picks = suggest_keyframes(_drifting_track(40, set(turn)), [0, 39], 3)
    assert picks[0]["frame"] in turn and picks[0]["reason"] == "pose or expression"
    assert picks[0]["nearest_keyframe"] == 39 and picks[0]["frames_away"] == 39 - picks[0]["frame"]
    assert len({p["frame"] for p in picks}) == 3 and not {p["frame"] for p in picks} & {0, 39}
    assert suggest_keyframes(_drifting_track(40, set(turn)), [], 2) == []


def test_a_pose_held_for_one_frame_does_not_outweigh_the_middle_of_a_long_interval():
    from ipfacediff.jobs.propagate import suggest_keyframes

    picks = suggest_keyframes(_drifting_track(40, {27}), [0, 39], 2)
    assert picks[0]["frame"] != 27 and 12 <= picks[0]["frame"] <= 27
    assert picks[0]["reason"] == "far from a keyframe"


def test_suggestions_on_a_long_clip_sample_its_intervals():
    """One keyframe and 600 frames: the interval is sampled (SUGGEST_SAMPLES), the first pick still falls
    far from the keyframe; with keyframes around it, a 70-frame turn gets a keyframe inside it."""
    from ipfacediff.jobs.propagate import SUGGEST_SAMPLES, suggest_keyframes

    assert SUGGEST_SAMPLES < 600
    turn = range(400, 470)
    first = suggest_keyframes(_drifting_track(600, set()), [0], 1)[0]
    assert 300 <= first["frame"] <= 500 and first["reason"] == "far from a keyframe"
    picks = suggest_keyframes(_drifting_track(600, set(turn)), [0, 300, 599], 2)
    assert picks[0]["frame"] in turn and picks[0]["reason"] == "pose or expression"


def test_frames_suggest_exports_the_frames_the_self_check_would_add(sample_clip, tmp_path):
    keys = tmp_path / "keys"
    r = run_main("frames", str(sample_clip), "--at", "0", "--suggest", "2", "-o", str(keys), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    picked = [s["frame"] for s in rep["suggested"]]
    assert len(picked) == 2 and 0 not in picked
    assert sorted(f["index"] for f in rep["frames"]) == sorted([0, *picked])
    r = run_main("frames", str(sample_clip), "--suggest", "1", "-o", str(keys), "--json")  # what DIR holds counts
    again = json.loads(r.stdout)["suggested"][0]["frame"]
    assert again not in (0, *picked)
    r = run_main("frames", str(sample_clip), "--suggest", "1", "-o", str(tmp_path / "empty"))
    assert r.returncode == 2 and "give the frames you have" in r.stderr


def test_propagate_decodes_the_clip_once_for_the_track_and_once_for_the_carry(tmp_path, monkeypatch):
    """Keyframes farther apart than a run of carried frames (60 > CARRY_RUN): each run reads its
    interval's keyframes with it, and the self-check reads every keyframe again. The video is decoded
    from its start twice (the detection pass, the carry), not again for each run whose first frames
    the decoder has passed (the source kept them) nor for the self-check's few frames far behind it
    (decord's seek reads those)."""
    from ipfacediff.jobs.propagate import CARRY_RUN
    from ipfacediff.runtime import video

    keys = [0, 60, 120]
    assert keys[1] - keys[0] > CARRY_RUN
    clip = DATA / "videos" / "d3.mp4"
    src = open_frames_of(clip, keys)
    folder = tmp_path / "keys"
    for k, frame in zip(keys, src):
        frame = frame.copy()
        frame[240:280, 230:290] = (200, 40, 160)  # on the face (the clip is 512 x 512, the face central)
        _write(folder, frame[None], names=lambda i, k=k: f"{k}.png")
    starts = []
    start = video._ForwardDecoder.__init__

    def counted(self, path):
        starts.append(path)
        start(self, path)

    monkeypatch.setattr(video._ForwardDecoder, "__init__", counted)
    out = tmp_path / "out.mp4"
    args = ["--keyframes", str(folder), "-o", str(out), "--max-frames", "121", "--no-cache"]  # the track detected
    r = run_main("--quiet", "propagate", str(clip), *args)
    assert r.returncode == 0, r.stderr
    assert len(starts) == 2, f"the clip was decoded from its start {len(starts)} times"
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["frames"] == 121 and [x["keyframe"] for x in rep["self_check"]["leave_one_out"]] == keys


def open_frames_of(path: Path, indices: list[int]) -> np.ndarray:
    from ipfacediff.runtime.video import open_frames

    with open_frames(path) as src:
        return src.get(indices)


class _Nearest:
    """A pixel-space propagator that gives every frame its first keyframe's edit and notes each call."""

    name = "nearest-test"
    space = "pixels"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def propagate(self, inp):
        self.calls.append((tuple(inp.frames), tuple(inp.frames[r] for r in inp.key_rows)))
        out = np.asarray(inp.source_pixels).copy()
        out[:] = inp.edited_pixels[0]
        out[inp.key_rows] = inp.edited_pixels
        return out


def _mark_clip(n: int, keys: list[int], seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)
    edits = {}
    for k in keys:
        edits[k] = frames[k].copy()
        edits[k][10:30, 20:40] = (40 * (k % 6), 200, 90)  # a different mark on each keyframe
    return frames, edits


def test_the_two_self_checks_predict_an_end_keyframe_once_and_agree_with_separate_runs():
    """The leave-one-out check and each interval's check both predict the first and last keyframes
    from their one neighbour: sharing ``memo`` makes those predictions once (5 carries, not 7, for 3
    keyframes) and gives the same numbers as the checks run apart."""
    from ipfacediff.jobs.propagate import across_intervals, leave_one_out

    frames, edits = _mark_clip(12, [0, 5, 11])
    track = [None] * len(frames)  # full frame: no face processor needed
    apart = _Nearest()
    loo = leave_one_out(frames.__getitem__, edits, track, None, apart, full_frame=True)
    spans = across_intervals(frames.__getitem__, edits, track, None, apart, full_frame=True)
    shared, memo = _Nearest(), {}
    assert leave_one_out(frames.__getitem__, edits, track, None, shared, True, memo=memo) == loo
    assert across_intervals(frames.__getitem__, edits, track, None, shared, True, memo=memo) == spans
    assert len(apart.calls) == 7 and len(shared.calls) == 5 == len(set(shared.calls)), shared.calls
    assert [x["keyframe"] for x in loo] == [0, 5, 11] and [(x["from"], x["to"]) for x in spans] == [(0, 5), (5, 11)]
    assert all(np.isfinite(x["psnr"]) for x in loo)


@pytest.mark.parametrize("keys", [[0, 9, 22], [4], [3, 25], [0, 27]])
def test_the_carry_hands_over_every_frame_once_in_order_keyframes_as_given(monkeypatch, keys):
    """Runs of frames are carried in place (no copy of the run) and handed over as they finish: each
    frame once, in order, keyframes as given, the rest the propagator's result, through runs shorter
    than the keyframe intervals and before the first and after the last keyframe."""
    from ipfacediff.jobs import propagate

    monkeypatch.setattr(propagate, "CARRY_RUN", 4)
    frames, edits = _mark_clip(28, keys, seed=1)
    got: list[tuple[int, np.ndarray]] = []
    propagate.carry_edits(
        frames.__getitem__,
        len(frames),
        edits,
        [None] * len(frames),
        None,
        _Nearest(),
        full_frame=True,
        on_frames=lambda first, part: got.append((first, part)),  # kept as given: never written to after
    )
    starts = [first for first, _ in got]
    out = np.concatenate([part for _, part in got])
    assert starts[0] == 0 and len(out) == len(frames)
    assert all(b == a + len(p) for (a, p), b in zip(got, starts[1:])), starts
    for i in range(len(frames)):
        if i in edits:
            assert np.array_equal(out[i], edits[i]), i
        else:  # the first keyframe of the frame's interval (or its one nearest keyframe), as _Nearest gives it
            assert np.array_equal(out[i], edits[_nearest_first(i, keys)]), i


def _nearest_first(i: int, keys: list[int]) -> int:
    """The keyframe ``carry_edits`` gives frame ``i`` first: its interval's first, or the first keyframe
    before the first."""
    before = [k for k in keys if k <= i]
    return before[-1] if before else keys[0]
