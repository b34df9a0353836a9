"""soraj/eval/continuity.py on videos whose frame-to-frame changes are set by hand."""

import numpy as np

from soraj.eval.continuity import frame_changes, motion_ratio, seam_jump


def _ramp(steps):
    """A grey video whose value rises by steps[i] (in 0..255) from frame i to i + 1."""
    values = np.concatenate([[0], np.cumsum(steps)])
    return np.broadcast_to(values[:, None, None, None], (len(values), 2, 2, 3)).astype(np.uint8)


def test_frame_changes_are_the_steps():
    np.testing.assert_allclose(frame_changes(_ramp([3, 6, 9])), np.array([3, 6, 9]) / 255)


def test_a_seam_twice_as_large_as_the_rest_scores_two():
    video = _ramp([4, 4, 8, 4, 4, 8, 4])  # seams at frames 3 and 6
    assert np.isclose(seam_jump(video, [3, 6]), 2.0, rtol=1e-6)
    assert np.isclose(seam_jump(_ramp([5] * 8), [3, 6]), 1.0, rtol=1e-6)


def test_a_frozen_video_keeps_no_motion():
    assert motion_ratio(_ramp([0, 0, 0]), _ramp([2, 2, 2])) == 0.0
    assert np.isclose(motion_ratio(_ramp([4, 4]), _ramp([2, 2])), 2.0, rtol=1e-6)
