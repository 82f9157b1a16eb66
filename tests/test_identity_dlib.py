"""The ``dlib-resnet`` identity encoder (dlib's ResNet, real weights from the face-recognition-models
wheel): aligned as dlib's own pipeline aligns, one identity per person, refused by the identity loss."""

from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, needs_data, needs_models, run_main
from PIL import Image

pytestmark = [needs_models, needs_data]
FACES = sorted((DATA / "images" / "faces").glob("*.jpg"))


@pytest.fixture(scope="module")
def portraits(catalog):
    fp = catalog.build("face_processor", "retinaface", {"verify": "none"})
    out = []
    for f in FACES:
        img = np.asarray(Image.open(f).convert("RGB"))
        out.append((f.stem, img, np.asarray(fp.detect(img)[0].landmarks)))
    return out


def test_dlib_resnet_agrees_with_dlibs_own_pipeline_and_tells_people_apart(catalog, portraits):
    """Against dlib's full pipeline (its HOG detector, 5-point shape predictor, 150 px chip): the
    encoder's descriptors from the face processor's landmarks are within 0.2 (measured 0.00-0.13;
    dlib's same-person threshold is 0.6); a picture and its mirror are one person, different people
    are further apart than a picture and its mirror."""
    import dlib

    from ipfacediff.plugins.identity_encoders.dlib_resnet import face_box
    from ipfacediff.runtime import models

    enc = catalog.build("identity_encoder", "dlib-resnet")
    assert enc.embedding_dim == 128 and not enc.differentiable
    rec = dlib.face_recognition_model_v1(str(models.resolve("dlib-resnet")))
    shapes = dlib.shape_predictor(str(models.resolve("dlib-5-landmarks")))
    detector = dlib.get_frontal_face_detector()
    names, imgs, lms = zip(*portraits)
    ours = enc.embed_faces(imgs, lms).numpy()
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    for name, img, lm, e in zip(names, imgs, lms, ours):
        chip = dlib.get_face_chip(img, shapes(img, max(detector(img, 1), key=lambda r: r.area())), 150, 0.25)
        ref = np.asarray(rec.compute_face_descriptor(chip))  # dlib's own pipeline
        raw = np.asarray(rec.compute_face_descriptor(dlib.get_face_chip(img, shapes(img, face_box(lm)), 150, 0.25)))
        assert np.linalg.norm(raw - ref) < 0.2, name  # dlib's descriptor distance
        assert np.allclose(e, raw / np.linalg.norm(raw), atol=1e-5)
    mirrored = [np.ascontiguousarray(img[:, ::-1]) for img in imgs]
    flipped_lms = []
    for img, lm in zip(imgs, lms):
        m = lm.copy()
        m[:, 0] = img.shape[1] - 1 - m[:, 0]
        flipped_lms.append(m[[1, 0, 2, 4, 3]])  # left and right swap
    mirror = enc.embed_faces(mirrored, flipped_lms).numpy()
    same = np.sum(ours * mirror, 1)
    sims = ours @ ours.T
    others = sims[~np.eye(len(sims), dtype=bool)]
    print(f"dlib-resnet cosine: picture vs mirror {same.min():.3f}-{same.max():.3f}", end=", ")
    print(f"different people {others.min():.3f}-{others.max():.3f}")
    assert same.min() > 0.9 and same.min() > np.percentile(others, 90)


def test_identity_metrics_take_dlib_resnet(catalog, portraits):
    _, img, _ = portraits[0]
    video = np.stack([img, img])
    other = np.stack([portraits[1][1]] * 2)
    m = catalog.build("metric", "id-similarity", {"encoder": "dlib-resnet"})
    assert m.compute(video, video)["value"] == pytest.approx(1.0, abs=1e-5)
    import cv2

    other = np.stack([cv2.resize(f, (img.shape[1], img.shape[0])) for f in other])
    assert m.compute(video, other)["value"] < 0.95


def test_the_identity_loss_refuses_an_encoder_it_cannot_train_with(tmp_path):
    reg = tmp_path / "registry.yaml"
    reg.write_text(
        "version: 1\nrecipes:\n  identity-dlib:\n    objective: identity\n    face_processor: retinaface\n"
        "    identity_encoder: dlib-resnet\n"
        "    settings: {adapter: identity, loss_weights: {noise: 1.0, identity: 0.1}}\n"
    )
    args = ["finetune", "identity-dlib", "--registry", str(reg), "--data", str(DATA / "images" / "faces")]
    r = run_main(*args, "-o", str(tmp_path / "out"), "--backbone", "tiny", "--max-steps", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "'dlib-resnet' is not differentiable" in r.stderr and not Path(tmp_path / "out").exists()
