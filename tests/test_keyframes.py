import numpy as np
import pytest

from ipfacediff.errors import ParameterError
from ipfacediff.interfaces import FaceDetection
from ipfacediff.runtime.keyframes import select_keyframes


def test_uniform_and_count():
    assert select_keyframes(40, "uniform", interval=8) == [0, 8, 16, 24, 32]
    assert select_keyframes(40, "count", count=3) == [0, 20, 39]
    with pytest.raises(ParameterError, match="larger than the video"):
        select_keyframes(5, "uniform", interval=8)


def test_pose_diversity_picks_the_extreme_poses():
    base = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)
    dets = []
    for i in range(30):
        shift = {10: 15.0, 25: -15.0}.get(i, 0.0)  # frames 10 and 25: head turned
        lms = base.copy()
        lms[:, 0] += shift * np.array([1, 1, 1.5, 1, 1])
        dets.append(FaceDetection(np.array([0, 0, 100, 100.0]), 1.0, lms))
    assert select_keyframes(30, "pose", count=3, detections=dets) == [0, 10, 25]
