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


def test_sample_frames_show_only_the_photograph():
    """Every frame of the sample (any length) is cut from inside the photograph: no reflected or
    repeated border (0.2's window reached past the top edge and mirrored the astronaut's hair)."""
    import numpy as np

    from ipfacediff.runtime.sample import PHOTO_SIDE, frame_matrix

    for n in (10, 48, 120):
        for t in range(n):
            inv = np.linalg.inv(np.vstack([frame_matrix(t, n, 256), [0, 0, 1]]))
            corners = inv @ np.array([[0, 0, 1], [256, 0, 1], [0, 256, 1], [256, 256, 1]], float).T
            assert corners[:2].min() >= 1 and corners[:2].max() <= PHOTO_SIDE - 1, (n, t, corners[:2])
