"""Shapes probe for short prompts: scores a video on the attributes a prompt states, and only
those (a short prompt leaves the rest to the model, so nothing else can be wrong)."""

import numpy as np

from soraj.data.shapes import MOTIONS, SIZES, ShapeObject
from soraj.eval.shapes_probe import background_matches, check_object, label_pixels


def _object_checks(video, labels, backgrounds, stated) -> list[float]:
    """Present and shape, plus size and motion where stated. The probe finds an object by its colour
    and filters blobs by the area its size implies: an unstated size tries both sizes."""
    sizes = [stated.size] if stated.size else list(SIZES)
    motion = stated.motion or MOTIONS[0]
    results = [
        check_object(
            video, labels, backgrounds, ShapeObject(stated.colour, stated.shape, s, motion)
        )
        for s in sizes
    ]
    best = max(results, key=lambda r: (r["present"], r["shape"], r["size"], r["motion"]))
    checks = [best["present"], best["shape"]]
    if stated.size:
        checks.append(best["size"])
    if stated.motion:
        checks.append(best["motion"])
    return checks


def score_stated(video: np.ndarray, objects, background: str | None) -> dict:
    """objects: stated objects (colour and shape required; size and motion may be None).
    → {"checks": n, "right": fraction right, "fully_right": 1.0 if every check passed}."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
    for obj in objects:
        if not (obj.colour and obj.shape):
            raise ValueError(f"a scored object needs a stated colour and shape, got {obj}")
    labels = label_pixels(video)  # (T, H, W)
    backgrounds = np.median(video.reshape(len(video), -1, 3), axis=1).astype(np.float32)
    checks = [c for obj in objects for c in _object_checks(video, labels, backgrounds, obj)]
    if background:
        checks.append(float(background_matches(labels, background)))
    return {
        "checks": len(checks),
        "right": float(np.mean(checks)),
        "fully_right": float(all(c == 1.0 for c in checks)),
    }
