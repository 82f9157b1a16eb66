import numpy as np

from conftest import needs_models
from ipfacediff.runtime.sample import sample_frames


def test_sample_frames_are_deterministic_and_move():
    a, b = sample_frames(8, 128), sample_frames(8, 128)
    assert np.array_equal(a, b) and a.shape == (8, 128, 128, 3)
    assert np.abs(a[0].astype(int) - a[4].astype(int)).mean() > 2  # the head moves


@needs_models
def test_sample_has_one_face_per_frame(catalog):
    det = catalog.build("face_processor", "retinaface")
    frames = sample_frames(12, 256)
    assert all(len(det.detect(f)) == 1 for f in frames[::3])
