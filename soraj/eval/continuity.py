"""Continuity of videos made from several windows (prompting modes, long generation), in
pixels after decoding (uint8 → [0, 1])."""

import numpy as np


def frame_changes(video) -> np.ndarray:
    """Mean absolute change between consecutive frames, (T − 1,)."""
    v = np.asarray(video, np.float32) / 255.0
    return np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3))


def seam_jump(video, seams) -> float:
    """Mean change across the seams (frame s − 1 → s) over the mean change elsewhere: 1 is as
    smooth across the seams as the video is between them."""
    changes = frame_changes(video)
    at = [s - 1 for s in seams]
    rest = np.delete(changes, at)
    return float(changes[at].mean() / max(rest.mean(), 1e-6))


def motion_ratio(video, reference) -> float:
    """Mean frame-to-frame change of video over reference's: 0 for a frozen video."""
    return float(frame_changes(video).mean() / max(frame_changes(reference).mean(), 1e-6))
