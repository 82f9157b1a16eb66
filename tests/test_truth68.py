"""The independent ground truth of ``bench --ground-truth`` (dlib's 68 landmarks): each layer moves
by its own motion. On a real face (d0's first frame, its dlib landmarks) with landmark motion made by
hand: the spline reproduces a similarity, eyeglasses (and sunglasses) do not bend when the eyes close, a
hat sits above the brows and follows the head, blonde hair keeps to the frame's own hair, paint never
lands in an opening mouth, the smile changes the mouth alone; and the benchmark end to end."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import DATA, needs_data, needs_models, run_main

pytestmark = [needs_data, needs_models]
pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def face(d0_face68):
    frame, lms, _ = d0_face68
    return frame, lms


def _similarity(angle=4.0, scale=1.03, shift=(6.0, -3.0), centre=(256, 256)):
    m = cv2.getRotationMatrix2D(centre, angle, scale)
    m[:, 2] += shift
    return m


def _move(lms, m):
    return (lms @ m[:, :2].T + m[:, 2]).astype(np.float32)


def test_the_landmarks_are_fitted_in_the_box_dlibs_own_detector_draws(d0_face68):
    """dlib's shape predictor was trained on its detector's boxes, so the truth fits it in boxes of their
    shape: the clip's median of the detector's box relative to the tracker's, placed on each frame's
    tracker box. Here the detector finds the face on one frame: that frame gets the detector's box, and a
    frame where it finds none (blank) gets the same shape on its own (moved) tracker box; a clip where it
    never finds the face gets ``DLIB_BOX``'s shape; a frame without a tracked face gets none."""
    import dlib

    from ipfacediff.interfaces import FaceDetection
    from ipfacediff.jobs.bench.truth68 import DLIB_BOX, dlib_boxes

    frame, _, det = d0_face68
    found = dlib.get_frontal_face_detector()(frame, 0)
    assert len(found) == 1
    r = found[0]
    want = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64)
    shifted = FaceDetection(np.asarray(det.box) + [20, 10, 20, 10], det.score, det.landmarks)
    blank = np.zeros_like(frame)
    got = dlib_boxes(np.stack([frame, blank, frame]), [det, shifted, None])
    assert np.abs(got[0] - want).max() < 1e-6
    assert np.abs(got[1] - (want + [20, 10, 20, 10])).max() < 1e-6
    assert got[2] is None
    x0, y0, x1, y1 = (float(v) for v in det.box)
    never = dlib_boxes(blank[None], [det])[0]
    assert np.allclose(never, [x0, y0, x0, y0] + np.asarray(DLIB_BOX) * [x1 - x0, y1 - y0, x1 - x0, y1 - y0])


def test_the_spline_is_exact_on_a_similarity_and_the_identity(face):
    from ipfacediff.jobs.bench.truth68 import tps_map

    frame, lms = face
    shape = frame.shape[:2]
    same = tps_map(lms, lms, shape)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    assert np.abs(same - np.stack([xs, ys], -1)).max() < 0.01
    m = _similarity()
    back = cv2.invertAffineTransform(m)  # frame t's pixel -> where it was in the reference
    got = tps_map(_move(lms, m), lms, shape)
    want = np.stack(
        [back[0, 0] * xs + back[0, 1] * ys + back[0, 2], back[1, 0] * xs + back[1, 1] * ys + back[1, 2]], -1
    )
    assert np.abs(got - want).max() < 0.05


@pytest.mark.parametrize("eyewear", ["glasses", "sunglasses"])
def test_eyeglasses_stay_rigid_when_the_eyes_close_and_paint_changes(face, eyewear):
    """Closing the eyelids (the upper lid landmarks moved onto the lower ones) moves the paint's
    spline but not the eyeglasses (rims, or sunglasses: the rims filled with a tint that covers each
    eye): they follow the stable points only."""
    from ipfacediff.jobs.bench.truth68 import EYES, ground_truth

    frame, lms = face
    closed = lms.copy()
    for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
        closed[up] = closed[low] - [0, 1]
    closed[8] += [0, 6]  # and the chin lower: the surface layer must follow it
    frames, both = np.stack([frame, frame]), np.stack([lms, closed])
    gt, where = ground_truth(frames, both, eyewear)
    rims = where[eyewear][0]
    assert rims.sum() > 500 and np.array_equal(where[eyewear][1], rims)
    assert np.array_equal(gt[1], gt[0])  # the rims drawn the same, pixel for pixel
    centres = [np.rint(lms[eye].mean(0)).astype(int) for eye in EYES]
    covered = [bool(rims[y, x]) for x, y in centres]
    assert covered == (
        [False, False] if eyewear == "glasses" else [True, True]
    )  # a rim rings the eye, a lens fills it
    if eyewear == "sunglasses":  # a dark tint (alpha 0.7-0.85) that lets the eye show through
        inside = cv2.erode(rims.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        seen, under = gt[0][inside].astype(float).mean(-1), frame[inside].astype(float).mean(-1)
        assert 0.12 < np.std(seen) / np.std(under) < 0.32  # the eye's texture, dimmed to 15-30%
        assert np.corrcoef(seen, under)[0, 1] > 0.7  # (0.84: the tint is darker at the top)
    _, where = ground_truth(frames, both, f"paint+{eyewear}")
    assert np.array_equal(where[eyewear][1], where[eyewear][0])
    assert not np.array_equal(where["paint"][1], where["paint"][0])


def test_eyeglasses_follow_the_head_by_its_similarity(face):
    from ipfacediff.jobs.bench.truth68 import ground_truth

    frame, lms = face
    m = _similarity()
    moved = cv2.warpAffine(frame, m, frame.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gt, where = ground_truth(np.stack([frame, moved]), np.stack([lms, _move(lms, m)]), "glasses")
    rims_then = cv2.warpAffine(where["glasses"][0].astype(np.float32), m, frame.shape[1::-1]) > 0.5
    inter = (rims_then & where["glasses"][1]).sum()
    union = (rims_then | where["glasses"][1]).sum()
    assert inter / union > 0.85  # thin rims: within a pixel of the similarity-moved ones


def test_a_hat_sits_above_the_brows_off_the_face_opaque_and_follows_the_head(face):
    """The ``hat`` layer: opaque, above the brows and mostly off the face (its brim at the top of the
    forehead, its crown over the hair and the background), square to the face, carried by the head's
    similarity like eyeglasses (closing the eyes does not move it)."""
    from ipfacediff.jobs.bench.truth68 import BROWS, face_mask, ground_truth

    frame, lms = face
    m = _similarity()
    moved = cv2.warpAffine(frame, m, frame.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    closed = _move(lms, m)
    for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
        closed[up] = closed[low] - [0, 1]
    gt, where = ground_truth(np.stack([frame, moved]), np.stack([lms, closed]), "hat")
    hat = where["hat"][0]
    ys, xs = np.nonzero(hat)
    assert hat.sum() > 5000 and ys.max() < lms[BROWS][:, 1].min()  # all of it above the brows
    assert (hat & face_mask(lms, frame.shape[:2])).sum() < 0.2 * hat.sum()  # mostly off the face
    inside = cv2.erode(hat.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.abs(gt[0][inside].astype(int) - frame[inside]).mean() > 60  # opaque: the frame does not show
    assert len({tuple(c) for c in gt[0][inside]}) <= 40  # flat colours (crown, band, brim; their seams blended)
    then = cv2.warpAffine(hat.astype(np.float32), m, frame.shape[1::-1]) > 0.5
    assert (then & where["hat"][1]).sum() / (then | where["hat"][1]).sum() > 0.95  # moved by the similarity
    assert (gt[0] != frame).any(-1)[ys, xs].mean() > 0.9


def test_blonde_hair_recolours_the_frames_own_hair_and_follows_the_head(face):
    """The ``hair`` layer: found round the face and never inside it, recoloured with its texture kept,
    carried by the head's similarity, and only where the frame's own pixel has hair's colour: where the
    head moved further than its landmarks say (the layer lands 12 px off), the green background it
    lands on stays as it is; a face that fills the frame still gets its truth."""
    from ipfacediff.jobs.bench.truth68 import face_mask, ground_truth

    frame, lms = face
    m = _similarity()
    moved = cv2.warpAffine(frame, m, frame.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gt, where = ground_truth(np.stack([frame, moved]), np.stack([lms, _move(lms, m)]), "hair")
    hair = where["hair"][0]
    inner = cv2.erode(face_mask(lms, frame.shape).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert hair.sum() > 10000 and not (hair & inner).any()

    def luma(img):
        return img.astype(np.float64) @ [0.299, 0.587, 0.114]

    assert np.abs(gt[0].astype(int) - frame)[hair].mean() > 30  # a clear change of colour
    assert np.corrcoef(luma(gt[0])[hair], luma(frame)[hair])[0, 1] > 0.8  # the hair's own texture kept
    then = cv2.warpAffine(hair.astype(np.float32), m, frame.shape[1::-1]) > 0.5
    assert (then & where["hair"][1]).sum() / (then | where["hair"][1]).sum() > 0.95

    left = np.float32([[1, 0, -40], [0, 1, 0]])
    shifted = cv2.warpAffine(frame, left, frame.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
    gt, where = ground_truth(np.stack([frame, shifted]), np.stack([lms, lms - np.float32([28, 0])]), "hair")
    changed = np.abs(gt[1].astype(int) - shifted).max(-1) > 2
    f = shifted.astype(int)
    green = (f[..., 1] > f[..., 0] + 40) & (f[..., 1] > f[..., 2] + 20)
    landed = cv2.warpAffine(hair.astype(np.uint8), np.float32([[1, 0, -28], [0, 1, 0]]), frame.shape[1::-1]) > 0
    truly = cv2.warpAffine(hair.astype(np.uint8), left, frame.shape[1::-1])
    off = landed & ~(cv2.dilate(truly, np.ones((5, 5), np.uint8)) > 0) & green  # background under the layer
    assert off.sum() > 500 and (changed & off).sum() < 0.05 * off.sum()
    # a face that fills the frame (from above the brows to the chin, inside the jaw) still gets its truth
    x0, y0, x1, y1 = int(lms[0, 0]) + 10, int(lms[17:27, 1].min()) - 20, int(lms[16, 0]) - 10, int(lms[8, 1])
    close = np.ascontiguousarray(frame[y0:y1, x0:x1])
    gt, where = ground_truth(close[None], (lms - [x0, y0]).astype(np.float32)[None], "hair")
    assert where["hair"].any() and gt.shape == close[None].shape


def test_the_hair_found_is_the_same_however_opencvs_random_generator_stands(catalog):
    """GrabCut starts from k-means on OpenCV's shared generator: on d12 (curly hair before a wooden wall)
    two calls in a row found 31848 and 26038 hair pixels before the truth seeded it."""
    from ipfacediff.jobs.bench.truth68 import dlib68_landmarks, hair_model
    from ipfacediff.runtime.video import open_frames

    frame = open_frames(DATA / "videos" / "d12.mp4").get([0])[0]
    det = catalog.build("face_processor", "retinaface", {"verify": "none"}).detect(frame)[0]
    lms = dlib68_landmarks(frame[None], [det], smooth=1)[0]
    first = hair_model(frame, lms)[0]
    cv2.randu(np.zeros((8, 8)), 0, 1)  # the shared generator moves on
    assert np.array_equal(hair_model(frame, lms)[0], first)


def test_paint_never_lands_in_an_opening_mouth_and_the_smile_moves_the_mouth_alone(face):
    from ipfacediff.jobs.bench.truth68 import INNER_LIPS, OUTER_LIPS, _poly, ground_truth

    frame, lms = face
    opened = lms.copy()
    for i in (56, 57, 58, 65, 66, 67):  # the lower lip down: the mouth opens
        opened[i] += [0, 14]
    for i in (55, 59, 64, 60):
        opened[i] += [0, 7]
    frames = np.stack([frame, frame])
    gt, where = ground_truth(frames, np.stack([lms, opened]), "paint")
    mouth = _poly(opened[INNER_LIPS], frame.shape)
    assert mouth.sum() > 200 and not where["paint"][1][mouth].any()
    assert np.array_equal(gt[1][mouth], frame[mouth])  # the frame's own mouth shows through
    gt, where = ground_truth(frames[:1], lms[None], "smile")
    changed = np.abs(gt[0].astype(int) - frame).max(-1) > 2
    centre, width = lms[OUTER_LIPS].mean(0), np.linalg.norm(lms[54] - lms[48])
    ys, xs = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    far = np.hypot(xs - centre[0], ys - centre[1]) > 1.6 * width
    assert changed.sum() > 200 and not changed[far].any()


def test_ground_truth_benchmark_grades_no_propagator_against_its_own_landmarks(tmp_path):
    """The default truth (dlib's 68 landmarks): no propagator follows it, so none is marked; every
    layer and the temporal error are scored, for keyframes every 4 and the first frame alone."""
    r = run_main(
        "--quiet",
        "bench",
        "--ground-truth",
        "--videos",
        str(DATA / "videos" / "d0.mp4"),
        "--max-frames",
        "9",
        "--intervals",
        "4,first",
        "--edits",
        "paint+glasses",
        "-o",
        str(tmp_path / "b"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["settings"]["truths"] == ["dlib68"] and [row["truth"] for row in res["rows"]] == ["dlib68"]
    scores = res["rows"][0]["scores"]
    for interval in (4, 0):
        s = {x["method"]: x for x in scores if x["interval"] == interval}
        assert not any(x["self_graded"] for x in s.values())
        assert set(s["flow-residual"]["layers"]) == {"paint", "glasses"}
        assert s["flow-residual"]["face_psnr"] > s["source"]["face_psnr"] + 5
        assert 0 < s["flow-residual"]["temporal_error"] < s["copy-nearest"]["temporal_error"]
        # the truth drawn again from its landmarks smoothed over fewer frames: close to it, not the same
        again = s["truth-resmoothed"]["layers"]["glasses"]["psnr"]
        assert s["source"]["layers"]["glasses"]["psnr"] + 10 < again < 100
    table = (tmp_path / "b" / "groundtruth.md").read_text()
    assert "truth: dlib's 68 landmarks (independent), keyframes the first frame only" in table
    assert "glasses PSNR" in table and "grades itself" not in table
    r = run_main("bench", "--ground-truth", "--edits", "paint+cape", "-o", str(tmp_path / "c"))
    assert r.returncode == 2 and "layers paint, glasses, sunglasses, lips, smile, hair, hat" in r.stderr
