"""Shapes probe: scores a video against the objects, shapes, sizes, motions and background of a
caption, and whether it got every one of them right at once ("fully_right")."""

import numpy as np
from scipy import ndimage

from soraj.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTION_DIRECTIONS,
    SIZES,
    STILL,
    ShapeObject,
    object_extent,
    parse_dense_caption,
)

# ---- Thresholds ----

# Nearest palette entry wins only within this RGB distance; the closest two palette colours
# (yellow, orange) are 81 apart, so a ~30 unit colour shift of a generated video still labels right.
COLOUR_TOLERANCE = 80.0
MIN_AREA_FRACTION = 0.35  # of an expected object area
MAX_AREA_FRACTION = 4.0  # a blob much larger than the object is a colour wash, not the object
MIN_FILL = 0.4  # blob area over its bounding box; random speckle clusters are stringy
MIN_PRESENT_FRAMES = 0.6
SQUARE_MIN_FILL = 0.88  # bounding-box fill: square 1.0, circle pi/4 = 0.79, triangle 0.5
TRIANGLE_MAX_SKEW = -0.2  # vertical skewness: an upward triangle's mass sits low (-0.57)
STILL_MAX_SHIFT = 0.15  # net displacement per canvas length; captions move 0.3 to 0.6
BACKGROUND_MIN_FRACTION = 0.3  # of all pixels, for the background to count as dominant

PALETTE_NAMES = (*COLOURS, *BACKGROUNDS)
PALETTE = np.array([{**COLOURS, **BACKGROUNDS}[name] for name in PALETTE_NAMES], np.float32)
UNLABELLED = -1
COVERAGE_MARGIN = 2  # pixels around a blob that may hold its soft, blurred edge
AREA_FACTOR = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding box


# ---- Pixels to blobs ----


def label_pixels(video: np.ndarray) -> np.ndarray:
    """Index into PALETTE_NAMES of each pixel's nearest palette colour, or UNLABELLED. (T, H, W)"""
    channels = video.reshape(-1, 3).T.astype(np.float32)  # (3, T*H*W)
    # Palette-major layout: a 3-wide matmul and a per-row argmin are both slow in numpy.
    squared = sum((channels[c] - PALETTE[:, c, None]) ** 2 for c in range(3))  # (10, T*H*W)
    labels = squared.argmin(axis=0)
    labels[squared.min(axis=0) > COLOUR_TOLERANCE**2] = UNLABELLED
    return labels.reshape(video.shape[:-1])


def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
    """Largest 4-connected component of a (H, W) mask; 4-connectivity keeps noise clusters small."""
    components, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(sizes.argmax()) + 1)


def _soft_coverage(frame, blob, others, colour, background) -> np.ndarray:
    """Sub-pixel coverage of the blob's colour over the background colour, cropped to the blob.

    Edge pixels are colour/background mixtures; projecting onto that line recovers how much of
    each pixel the object covers, so small blurry shapes keep their geometry.
    """
    rows, cols = np.nonzero(blob)
    margin = COVERAGE_MARGIN + 1
    crop = np.s_[
        max(rows.min() - margin, 0) : rows.max() + margin,
        max(cols.min() - margin, 0) : cols.max() + margin,
    ]
    axis = np.asarray(colour, np.float32) - background  # (3,)
    pixels = frame[crop].astype(np.float32) - background  # (h, w, 3)
    coverage = pixels @ axis / max(float(axis @ axis), 1.0)  # (h, w)
    interior = float(np.median(coverage[blob[crop]]))  # normalises away a uniform colour shift
    region = ndimage.binary_dilation(blob[crop], iterations=COVERAGE_MARGIN) & ~others[crop]
    return np.clip(coverage / max(interior, 1e-3), 0.0, 1.0) * region  # (h, w)


def _classify_shape(coverage: np.ndarray) -> str:
    """Shape from the bounding-box fill and the vertical skew of the coverage."""
    area = coverage.sum()
    box_height, box_width = coverage.max(axis=1).sum(), coverage.max(axis=0).sum()
    fill = area / max(box_height * box_width, 1e-6)
    rows = np.arange(coverage.shape[0], dtype=np.float64)
    row_mass = coverage.sum(axis=1) / max(area, 1e-6)  # (H,)
    centred = rows - row_mass @ rows
    variance = max(float(row_mass @ centred**2), 1e-6)
    skew = float(row_mass @ centred**3) / variance**1.5
    if skew < TRIANGLE_MAX_SKEW:
        return "triangle"
    return "square" if fill >= SQUARE_MIN_FILL else "circle"


def _coverage_side(coverage: np.ndarray) -> float:
    """Geometric mean of the coverage's soft bounding-box height and width, in pixels: every
    shape fills its box's full height and width, so this measures size whatever the shape
    (an area would count a misread shape twice, as wrong shape and as wrong size)."""
    box_height, box_width = coverage.max(axis=1).sum(), coverage.max(axis=0).sum()
    return float(np.sqrt(box_height * box_width))


def _classify_size(side: float, height: int, width: int) -> str:
    """The size whose box side is nearest in ratio: large is 0.36 / 0.22 = 1.64x small, so the
    boundary sits 1.28x from either, well outside what blur adds to a box."""
    extents = {size: object_extent(size, height, width) for size in SIZES}
    return min(extents, key=lambda size: abs(np.log(side / extents[size])))


# ---- Per-object checks ----


def _motion_from_centroids(frames, centroids, num_frames: int, canvas) -> str:
    """Dominant direction of the least-squares centroid velocity over the whole clip."""
    if frames.size < 2:
        return STILL
    velocity = np.polyfit(frames, centroids, deg=1)[0]  # (2,) as (dy, dx) per frame
    shift = velocity * (num_frames - 1) / np.asarray(canvas, np.float64)  # (2,) canvas fractions
    axis = int(np.argmax(np.abs(shift)))
    if abs(shift[axis]) < STILL_MAX_SHIFT:
        return STILL
    direction = [0, 0]
    direction[axis] = int(np.sign(shift[axis]))
    return next(name for name, step in MOTION_DIRECTIONS.items() if list(step) == direction)


def check_object(video, labels, backgrounds, obj: ShapeObject) -> dict:
    num_frames, height, width = labels.shape
    # A blob counts whatever size it has (size is its own check): from MIN_AREA_FRACTION of
    # the smallest size's area to MAX_AREA_FRACTION of the largest's, for the caption's shape.
    areas = [AREA_FACTOR[obj.shape] * object_extent(s, height, width) ** 2 for s in SIZES]
    area_range = (MIN_AREA_FRACTION * min(areas), MAX_AREA_FRACTION * max(areas))
    mask = labels == PALETTE_NAMES.index(obj.colour)  # (T, H, W)
    others = (labels != UNLABELLED) & ~mask & (labels < len(COLOURS))  # other objects' pixels
    frames, centroids, shape_votes, sides = [], [], [], []
    for frame in range(num_frames):
        blob = _largest_blob(mask[frame])
        if blob is None:
            continue
        area = int(blob.sum())
        if not area_range[0] <= area <= area_range[1]:
            continue
        rows, cols = np.nonzero(blob)
        if area < MIN_FILL * (np.ptp(rows) + 1) * (np.ptp(cols) + 1):
            continue
        coverage = _soft_coverage(
            video[frame], blob, others[frame], COLOURS[obj.colour], backgrounds[frame]
        )
        shape_votes.append(_classify_shape(coverage))
        sides.append(_coverage_side(coverage))
        frames.append(frame)
        centroids.append(np.argwhere(blob).mean(axis=0))
    present = len(frames) >= MIN_PRESENT_FRAMES * num_frames
    if not present:
        return {"present": 0.0, "shape": 0.0, "size": 0.0, "motion": 0.0}
    votes = {shape: shape_votes.count(shape) for shape in set(shape_votes)}
    shape = max(sorted(votes), key=votes.get)
    size = _classify_size(float(np.median(sides)), height, width)
    motion = _motion_from_centroids(
        np.array(frames), np.array(centroids), num_frames, (height, width)
    )
    return {
        "present": 1.0,
        "shape": float(shape == obj.shape),
        "size": float(size == obj.size),
        "motion": float(motion == obj.motion),
    }


def background_matches(labels: np.ndarray, background: str) -> bool:
    """The caption's background must be the dominant background-coloured label of the video."""
    fractions = {name: float(np.mean(labels == PALETTE_NAMES.index(name))) for name in BACKGROUNDS}
    dominant = max(fractions, key=fractions.get)
    return dominant == background and fractions[dominant] >= BACKGROUND_MIN_FRACTION


# ---- Public API ----


def score_video(video: np.ndarray, caption: str) -> dict:
    """Per-attribute accuracy in [0, 1] of one uint8 (T, H, W, 3) video against a dense caption."""
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(
            f"video must be a non-empty uint8 array (T, H, W, 3), got {video.dtype} {video.shape}; "
            "convert floats in [0, 1] with np.rint(video * 255).astype(np.uint8)."
        )
    scene = parse_dense_caption(caption)
    labels = label_pixels(video)  # (T, H, W)
    # The median colour of a frame is its background: objects cover well under half of it.
    backgrounds = np.median(video.reshape(len(video), -1, 3), axis=1).astype(np.float32)  # (T, 3)
    checks = [check_object(video, labels, backgrounds, obj) for obj in scene.objects]
    scores = {key: float(np.mean([check[key] for check in checks])) for key in checks[0]}
    scores["background"] = float(background_matches(labels, scene.background))
    every_check = [value for check in checks for value in check.values()] + [scores["background"]]
    scores["overall"] = float(np.mean(every_check))
    scores["fully_right"] = float(all(value == 1.0 for value in every_check))
    return scores


def score_videos(videos, captions) -> dict:
    """score_video averaged over videos, plus "num_videos"; "fully_right" is then the share of
    videos with every check right."""
    videos, captions = list(videos), list(captions)
    if not videos or len(videos) != len(captions):
        raise ValueError(
            f"Need one caption per video and at least one video; got {len(videos)} videos "
            f"and {len(captions)} captions."
        )
    scores = [score_video(video, caption) for video, caption in zip(videos, captions, strict=True)]
    mean = {key: float(np.mean([score[key] for score in scores])) for key in scores[0]}
    return {**mean, "num_videos": len(scores)}
