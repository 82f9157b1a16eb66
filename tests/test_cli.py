import hashlib
import json

import numpy as np
from conftest import DATA, needs_data, needs_models, run_cli, run_main

from ipfacediff.runtime.video import open_frames, probe


def test_plugins_json_lists_builtins():
    r = run_cli("plugins", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = {k: [c["name"] for c in v] for k, v in data["components"].items()}
    assert {"retinaface", "mtcnn", "full-frame"} <= set(names["face_processor"])
    assert {"mobilefacenet", "insightface-arcface"} <= set(names["identity_encoder"])
    assert {"psnr", "id-similarity"} <= set(names["metric"])
    builtin = [p for p in data["plugins"] if p["builtin"]]
    assert builtin and all(p["package"] == "ipfacediff" and p["version"] for p in builtin)
    rf = next(c for c in data["components"]["face_processor"] if c["name"] == "retinaface")
    assert any(p["name"] == "threshold" and p["range"] == [0.0, 1.0] for p in rf["params"])
    # the edit methods and fine-tuning objectives are plugin kinds like the others
    assert set(names["strategy"]) == {"ip-facediff", "per-frame", "sdedit", "tokenflow"}
    assert set(names["objective"]) == {"identity", "edit"}
    ipf = next(c for c in data["components"]["strategy"] if c["name"] == "ip-facediff")
    assert ipf["requires"] == ["face_processor", "inverter", "editor", "propagator"]
    assert ipf["module"] == "ipfacediff.plugins.strategies.ip_facediff"
    edit = next(c for c in data["components"]["objective"] if c["name"] == "edit")
    assert {"directional", "locality", "identity"} <= set(edit["terms"])
    assert {p["name"] for p in data["plugins"] if p["builtin"]} >= {
        "ipfacediff.plugins.strategies.tokenflow",
        "ipfacediff.plugins.objectives.edit",
    }


def test_plugins_table():
    r = run_cli("plugins")
    assert r.returncode == 0 and "retinaface" in r.stdout


def test_doctor_json():
    r = run_main("doctor", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["device"] in ("cpu", "cuda", "mps") and data["torch"]
    assert {m["name"] for m in data["models"]} >= {"mobilefacenet", "retinaface", "taesd-encoder"}
    for m in data["models"]:
        assert m["found"] is None or m["sha256_ok"] is not None
    nets = {n["name"]: n for n in data["identity_networks"]}
    assert nets["mobilefacenet"]["available"] and "identity" in nets["mobilefacenet"]["trained_by"]
    assert "id-similarity" in nets["mobilefacenet"]["scores"]  # an edit's report: the metric's default
    # bench: an independent network besides the loss's (issue 22)
    assert nets["mobilefacenet"]["bench"] == "loss" and nets["dlib-resnet"]["bench"] == "independent"
    assert not nets["insightface-arcface"]["available"] and "model_path" in nets["insightface-arcface"]["problem"]
    assert nets["dlib-resnet"]["differentiable"] is False and nets["dlib-resnet"]["trained_by"] == []


def test_doctor_says_how_to_get_missing(tmp_path):
    r = run_main("doctor", "--json", env={"IPFACEDIFF_MODELS": str(tmp_path), "IPFACEDIFF_CACHE": str(tmp_path)})
    data = json.loads(r.stdout)
    folders = [m for m in data["models"] if not m["package"]]  # a package's files are found where it is installed
    assert folders and all(m["found"] is None and "https://" in m["how_to_get"] for m in folders)
    assert all("site-packages" in m["found"] for m in data["models"] if m["package"] and m["found"])


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_models
def test_faces_job_on_the_sample_clip(sample_clip, tmp_path):
    before = _digest(sample_clip)
    out = tmp_path / "result"
    r = run_main("--quiet", "faces", str(sample_clip), "-o", str(out), "--max-frames", "12")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["crops.mp4", "faces.json", "roundtrip.mp4", "strip.png"]
    report = json.loads((out / "faces.json").read_text())
    assert report["frames_processed"] == 12 and report["frames_with_face"] == 12
    assert report["identity_to_first_frame"]["min"] > 0.8  # the same person throughout
    assert report["metrics"]["psnr"]["value"] > 30  # paste-back of unedited crops is near-lossless
    rt, crops = probe(out / "roundtrip.mp4"), probe(out / "crops.mp4")
    assert (rt.n_frames, rt.fps, rt.width, rt.height, rt.has_audio) == (12, 24.0, 256, 256, True)
    assert (crops.n_frames, crops.width) == (12, 512)
    assert _digest(sample_clip) == before  # input untouched
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no temporary folder left

    r = run_cli("faces", str(sample_clip), "-o", str(out), "--max-frames", "2")
    assert r.returncode == 2 and "--overwrite" in r.stderr

    # the video settings reach x264 (it writes its options into the stream; veryfast, the default, uses 1
    # reference frame, medium 3)
    assert b"crf=17.0" in (out / "crops.mp4").read_bytes() and b" ref=1 " in (out / "roundtrip.mp4").read_bytes()
    more = [
        "--overwrite",
        "--max-frames",
        "2",
        "--set",
        "settings.video_crf=23",
        "--set",
        "settings.video_preset=medium",
    ]
    assert run_main("--quiet", "faces", str(sample_clip), "-o", str(out), *more).returncode == 0
    for name in ("crops.mp4", "roundtrip.mp4"):
        assert b"crf=23.0" in (out / name).read_bytes() and b" ref=3 " in (out / name).read_bytes(), name


@needs_models
@needs_data
def test_no_face_is_one_line_exit_2(tmp_path):
    img = DATA / "images" / "non-human" / "s22.jpg"
    r = run_cli("faces", str(img), "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: no face found in {img} (checked 1 frame with retinaface)"]
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


@needs_models
def test_bad_inputs_one_line_exit_2(tmp_path):
    (tmp_path / "t.mp4").write_text("not a video")
    for args, needle in [
        (["faces", str(tmp_path / "missing.mp4")], "no such file"),
        (["faces", str(tmp_path / "t.mp4")], "not a readable video"),
        (["faces", str(tmp_path / "t.mp4"), "--pipeline", "face-crop"], "did you mean 'face-crops'"),
        (["faces", str(tmp_path / "t.mp4"), "--set", "face_processor.treshold=1"], "did you mean 'threshold'"),
    ]:
        r = run_main(*args, "-o", str(tmp_path / "out"))
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert not (tmp_path / "out").exists()


@needs_models
@needs_data
def test_faces_on_in_the_wild_clip_keeps_background(tmp_path):
    out = tmp_path / "s13"
    r = run_main("--quiet", "faces", str(DATA / "videos" / "s13.mp4"), "-o", str(out), "--max-frames", "4", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["frames_with_face"] == 4
    info = probe(out / "roundtrip.mp4")
    assert (info.width, info.height, info.n_frames, info.has_audio) == (720, 1080, 4, True)
    a = open_frames(DATA / "videos" / "s13.mp4").get([0, 3]).astype(int)
    b = open_frames(out / "roundtrip.mp4").get([0, 3]).astype(int)
    # far from the face only codec noise remains: compare the bottom third (legs and floor)
    assert np.abs(a[:, 720:] - b[:, 720:]).mean() < 3.0
