import numpy as np
import pytest
import torch
from conftest import DATA, needs_data, needs_models

from ipfacediff.interfaces import FaceDetection
from ipfacediff.runtime.face import (
    ARCFACE_TEMPLATE,
    arcface_crop,
    arcface_crop_tensor,
    paste_crop,
    similarity_transform,
    smooth_track,
)
from ipfacediff.runtime.video import open_frames, read_image


def test_similarity_transform_recovers_known_transform():
    a, s, t = np.deg2rad(17), 1.7, np.array([12.0, -4.0])
    r = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = ARCFACE_TEMPLATE @ r.T + t
    m = similarity_transform(ARCFACE_TEMPLATE, dst)
    assert np.allclose(m[:, :2], r, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-9)


def test_paste_back_leaves_far_pixels_byte_identical():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    lms = ARCFACE_TEMPLATE * 0.8 + np.array([150, 100])
    from ipfacediff.runtime.face import align_to_template, crop_template

    crop, m = align_to_template(frame, lms, crop_template(128), 128)
    edited = np.full_like(crop, 255)
    out = paste_crop(frame, edited, m)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    corners = (inv @ np.array([[0, 0, 1], [128, 0, 1], [128, 128, 1], [0, 128, 1]]).T)[:2].T
    x0, y0 = np.floor(corners.min(0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    outside = np.ones(frame.shape[:2], bool)
    outside[max(0, y0) : y1, max(0, x0) : x1] = False
    assert np.array_equal(out[outside], frame[outside])
    centre = tuple(np.round(inv @ np.array([64, 64, 1]))[:2].astype(int))
    assert (out[centre[1], centre[0]] == 255).all()  # the edit is there


def test_smoothing_reduces_landmark_jitter():
    rng = np.random.default_rng(1)
    dets = [
        FaceDetection(np.array([0, 0, 10, 10.0]), 1.0, ARCFACE_TEMPLATE + rng.normal(0, 2, (5, 2))) for _ in range(40)
    ]
    dets[10] = None
    sm = smooth_track(dets, 7)
    assert sm[10] is None
    jit = lambda seq: np.mean([np.abs(d.landmarks - ARCFACE_TEMPLATE).mean() for d in seq if d is not None])  # noqa: E731
    assert jit(sm) < 0.6 * jit(dets)


@needs_models
def test_identity_gradient_reaches_the_pixels(catalog):
    enc = catalog.build("identity_encoder", "mobilefacenet")
    img = torch.rand(1, 3, 160, 160, requires_grad=True)
    m = torch.tensor(similarity_transform(ARCFACE_TEMPLATE + 20, ARCFACE_TEMPLATE), dtype=torch.float32)[None]
    crop = arcface_crop_tensor(img, m)
    assert crop.shape == (1, 3, 112, 112)
    # the differentiable crop agrees with OpenCV's
    ref = arcface_crop((img.detach()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), ARCFACE_TEMPLATE + 20)
    assert np.abs(crop.detach()[0].permute(1, 2, 0).numpy() * 255 - ref).mean() < 3
    target = enc.embed(torch.rand(1, 3, 112, 112))
    loss = 1 - (enc.embed(crop) * target).sum()
    loss.backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def retinaface(catalog):
    return catalog.build("face_processor", "retinaface")


@needs_models
@needs_data
@pytest.mark.parametrize("path", sorted((DATA / "images" / "faces").glob("*.jpg")), ids=lambda p: p.name)
def test_exactly_one_face_in_each_portrait(retinaface, path):
    dets = retinaface.detect(read_image(path))
    assert len(dets) == 1 and dets[0].landmarks.shape == (5, 2)


@needs_models
@needs_data
@pytest.mark.parametrize("path", sorted((DATA / "images" / "non-human").glob("*.jpg")), ids=lambda p: p.name)
def test_no_face_in_animals_and_cartoons(retinaface, path):
    assert retinaface.detect(read_image(path)) == []


@needs_models
@needs_data
def test_retinaface_alone_fires_on_some_non_human_pictures(catalog):
    """Why verification is on by default: RetinaFace alone accepts some animals/cartoons."""
    alone = catalog.build("face_processor", "retinaface", {"verify": "none"})
    hits = [p.name for p in sorted((DATA / "images" / "non-human").glob("*.jpg")) if alone.detect(read_image(p))]
    assert hits, "RetinaFace alone no longer fires on non-human pictures: the MTCNN verification may be unnecessary"


@pytest.fixture(scope="module")
def video_faces(retinaface):
    """Three frames of each shared video: detections and ArcFace crops."""
    out = {}
    for v in sorted((DATA / "videos").glob("*.mp4")):
        src = open_frames(v)
        frames = src.get([0, len(src) // 2, len(src) - 1])
        out[v.stem] = [(f, retinaface.detect(f)) for f in frames]
    return out


@needs_models
@needs_data
def test_exactly_one_face_in_sampled_video_frames(video_faces):
    counts = {k: [len(d) for _, d in v] for k, v in video_faces.items()}
    assert all(c == [1, 1, 1] for c in counts.values()), counts


@needs_models
@needs_data
def test_same_person_vs_different_person_identity_separated(video_faces, catalog):
    enc = catalog.build("identity_encoder", "mobilefacenet")
    embs = {}
    for k, v in video_faces.items():
        crops = np.stack([arcface_crop(f, d[0].landmarks) for f, d in v])
        with torch.no_grad():
            embs[k] = enc.embed(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
    same, diff = [], []
    names = list(embs)
    for i, a in enumerate(names):
        s = embs[a] @ embs[a].T
        same += [float(s[0, 1]), float(s[0, 2]), float(s[1, 2])]
        for b in names[i + 1 :]:
            diff += (embs[a] @ embs[b].T).flatten().tolist()
    print(
        f"same-person cosine min {min(same):.3f} mean {np.mean(same):.3f}; different max {max(diff):.3f} mean "
        f"{np.mean(diff):.3f}"
    )
    assert min(same) > max(diff) + 0.1
    assert np.mean(same) > 0.6 and np.mean(diff) < 0.2


@needs_models
@needs_data
def test_in_the_wild_paste_back_only_changes_the_face_region(retinaface):
    src = open_frames(DATA / "videos" / "s13.mp4")
    frame = src.get([10])[0]
    det = retinaface.detect(frame)[0]
    aligned = retinaface.align(frame, det, 256)
    out = retinaface.paste_back(frame, 255 - aligned.crop, aligned.matrix)
    changed = np.any(out != frame, axis=-1)
    ys, xs = np.nonzero(changed)
    cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
    face = max(det.box[2] - det.box[0], det.box[3] - det.box[1])
    assert changed.sum() > 0
    assert np.abs(xs - cx).max() < 2.5 * face and np.abs(ys - cy).max() < 2.5 * face
    assert changed.mean() < 0.1  # a small face in a 720x1080 frame


class _Counting:
    """Wraps a face processor's ``detect`` to count the calls (the MTCNN confirmations)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def detect(self, frame):
        self.calls += 1
        return self.inner.detect(frame)

    def to(self, device):
        return self


@needs_models
@needs_data
def test_tracking_confirms_a_face_when_its_track_starts_not_on_every_frame(catalog):
    """RetinaFace's tracking (``confirm=track``): the face found in a square around the previous one, the
    MTCNN confirmation run when the track starts (and every ``reconfirm`` frames), not per frame; the
    faces are where confirming every frame puts them."""
    from ipfacediff.runtime.face import box_iou, detect_track

    src = open_frames(DATA / "videos" / "s18.mp4")
    every = catalog.build("face_processor", "retinaface", {"confirm": "frame", "track_region": 0})
    tracked = catalog.build("face_processor", "retinaface", {"reconfirm": 20})
    for p in (every, tracked):
        p.detect(src.get([0])[0])  # builds the verifier
        p._verifier = _Counting(p._verifier)
    n = 30
    a, b = detect_track(every, src, n, 1, False), detect_track(tracked, src, n, 1, False)
    assert every._verifier.calls == n
    assert tracked._verifier.calls == 2  # frame 0 (the track starts) and frame 20 (reconfirm)
    assert all(x is not None and y is not None for x, y in zip(a, b))
    ious = [box_iou(x.box, y.box) for x, y in zip(a, b)]
    eye = np.linalg.norm(a[0].landmarks[1] - a[0].landmarks[0])
    moved = max(float(np.abs(x.landmarks - y.landmarks).max()) for x, y in zip(a, b))
    assert min(ious) > 0.85 and moved < 0.15 * eye, (min(ious), moved, eye)


@needs_models
@needs_data
def test_tracking_lost_face_is_searched_afresh_and_confirmed(catalog):
    """A frame without the face ends the track (nothing found around the old place); the next face is
    searched in the whole frame and confirmed, so an animal that appears is not taken for the face."""
    retina = catalog.build("face_processor", "retinaface")
    face = open_frames(DATA / "videos" / "d0.mp4").get([0])[0]
    first = retina.detect_next(face, None)
    assert len(first) == 1
    blank = np.full_like(face, 128)
    assert retina.detect_next(blank, first[0]) == []
    animals = sorted((DATA / "images" / "non-human").glob("*.jpg"))
    for p in animals:  # each after a tracked face in the same place: lost there, then confirmed (rejected)
        img = read_image(p)
        assert retina.detect_next(img, FaceDetection(np.array([0.0, 0, img.shape[1], img.shape[0]]), 1.0)) == []
    assert len(retina.detect_next(face, None)) == 1
