"""Framing: is each object a dense caption names whole inside the frame, or cut by its border?

Built on the shapes probe's pixel labelling. Per frame, the largest blob of an object's colour
is "inside" when it passes the probe's object tests (area near the caption's, compact) and
keeps clear of the frame's outermost ring of pixels, and "cut" when it is a visible piece
touching the border. Area alone cannot tell a cut object from a whole blurred one: blur and a
colour cast leave about half of a small object's pixels labelled, as cutting it in half does;
a cut object's pixels reach the border, a whole one's do not. The tiny VAE never saw objects
on the border and fades what it decodes there, so a cut object in decoded video may end a
pixel short of the border: a blob in the outer two pixels that has lost area counts as cut.

An object is fully in frame when it is inside in enough frames (the probe's presence
fraction) and cut in none: an object that leaves the frame, or is cropped, fails.
"""

import numpy as np

from soraj.data.shapes import ShapeObject, object_extent, parse_dense_caption
from soraj.eval.shapes_probe import (
    AREA_FACTOR,
    MAX_AREA_FRACTION,
    MIN_AREA_FRACTION,
    MIN_FILL,
    MIN_PRESENT_FRAMES,
    PALETTE_NAMES,
    _largest_blob,
    label_pixels,
)

# ---- Thresholds ----

# A piece of the object's colour on the border smaller than this is speckle, not the object.
CUT_MIN_AREA_FRACTION = 0.15
# Within NEAR_BORDER pixels of the edge, a blob under this fraction of its expected area is cut.
# Rendered objects keep a pixel's gap to the edge. Through the shipped VAE, on 300 wide and
# tall training clips, 1 of 452 whole objects was taken for cut, while their centre square
# crops went from 0.0 to 0.17 of objects seen cut with this rule
# (experiments/native_vs_crop/training_framing.py, results/training_framing.json).
NEAR_BORDER = 2
SHRUNK_AREA_FRACTION = 0.6


# ---- Per object ----


def _within(blob: np.ndarray, pixels: int) -> bool:
    """Does the blob reach the outer `pixels` rows or columns of the frame?"""
    k = pixels
    return bool(blob[:k].any() or blob[-k:].any() or blob[:, :k].any() or blob[:, -k:].any())


def frame_states(labels: np.ndarray, obj: ShapeObject) -> list[str]:
    """ "inside", "cut" or "missing" for each frame of labels (T, H, W) from label_pixels."""
    num_frames, height, width = labels.shape
    expected_area = AREA_FACTOR[obj.shape] * object_extent(obj.size, height, width) ** 2
    mask = labels == PALETTE_NAMES.index(obj.colour)  # (T, H, W)
    states = []
    for frame in range(num_frames):
        blob = _largest_blob(mask[frame])
        if blob is None:
            states.append("missing")
            continue
        area = int(blob.sum())
        rows, cols = np.nonzero(blob)
        fill = area / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
        at_edge = _within(blob, 1) or (
            _within(blob, NEAR_BORDER) and area < SHRUNK_AREA_FRACTION * expected_area
        )
        if at_edge and area >= CUT_MIN_AREA_FRACTION * expected_area:
            states.append("cut")
        elif (
            not at_edge
            and MIN_AREA_FRACTION <= area / expected_area <= MAX_AREA_FRACTION
            and fill >= MIN_FILL
        ):
            states.append("inside")
        else:
            states.append("missing")
    return states


def object_framing(labels: np.ndarray, obj: ShapeObject) -> dict:
    states = frame_states(labels, obj)
    inside, cut = states.count("inside"), states.count("cut")
    return {
        "colour": obj.colour,
        "shape": obj.shape,
        "inside_frames": inside,
        "cut_frames": cut,
        "fully_in_frame": bool(cut == 0 and inside >= MIN_PRESENT_FRAMES * len(states)),
    }


# ---- Public API ----


def framing_video(video: np.ndarray, caption: str) -> dict:
    """Per-object framing of one uint8 (T, H, W, 3) video against its dense caption, with the
    video's fraction of fully framed objects and whether all of them are."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(
            f"video must be a non-empty uint8 array (T, H, W, 3), got {video.dtype} {video.shape}"
        )
    scene = parse_dense_caption(caption)
    labels = label_pixels(video)  # (T, H, W)
    objects = [object_framing(labels, obj) for obj in scene.objects]
    framed = [obj["fully_in_frame"] for obj in objects]
    return {
        "objects": objects,
        "fully_in_frame": float(np.mean(framed)),
        "all_in_frame": bool(all(framed)),
    }


def framing_scores(videos, captions) -> dict:
    """Over a set of videos: fully_in_frame (fraction of all named objects), all_in_frame
    (fraction of videos with every object whole), cut (fraction of objects seen cut by the
    border in some frame), num_videos, num_objects and the per-video results."""
    videos, captions = list(videos), list(captions)
    if not videos or len(videos) != len(captions):
        raise ValueError(
            f"Need one caption per video and at least one video; got {len(videos)} videos "
            f"and {len(captions)} captions."
        )
    per_video = [framing_video(v, c) for v, c in zip(videos, captions, strict=True)]
    objects = [obj for result in per_video for obj in result["objects"]]
    return {
        "fully_in_frame": float(np.mean([obj["fully_in_frame"] for obj in objects])),
        "all_in_frame": float(np.mean([result["all_in_frame"] for result in per_video])),
        "cut": float(np.mean([obj["cut_frames"] > 0 for obj in objects])),
        "num_videos": len(per_video),
        "num_objects": len(objects),
        "per_video": per_video,
    }
