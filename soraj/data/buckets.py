"""Open-Sora-style buckets (resolution × frames × aspect ratio): a baseline to compare packing with.

API:
    table = BucketTable(
        resolutions={"144p": 144 * 256, "240p": 240 * 426},   # name -> nominal pixel area
        frames={"144p": {1: (1.0, 64), 17: (1.0, 8)},          # name -> {frames: (keep, batch)}
                "240p": {1: (1.0, 32), 17: (0.5, 4)}},
        aspect_ratios=(0.56, 0.75, 1.0, 1.33, 1.78),           # height / width
        pixel_multiple=16,                                     # bucket H, W are multiples of it
    )
    table.buckets() -> [Bucket(resolution, num_frames, aspect_ratio, height, width, batch_size)]
    assign_bucket((T, H, W), table, rng) -> BucketAssignment | None   (bucket, scale, crop box)
    clip_tokens(T, H, W, vae_factors, patch_size) -> tokens of a clip of whole patches
    native_tokens((T, H, W), vae_factors, patch_size, token_budget, max_frames) -> int
    bucket_batches(shapes, vae_factors, patch_size, token_budget, table, seed=0,
                   partial="pad", max_frames=None) -> dict with
        useful_tokens, padded_tokens, batch_tokens, bucket_waste (= padded / batch tokens),
        native_tokens, cropped_tokens, cropped_fraction (= cropped / native), upsampled_tokens,
        dropped_clips, dropped_tokens,
        num_batches and batches: [(Bucket, (clip index, ...)), ...]
    pad_to_max(shapes, vae_factors, patch_size, token_budget, max_frames, batch_size=1) -> dict
        with useful_tokens, padded_tokens, batch_tokens, pad_waste, max_clip_tokens

clip_tokens, native_tokens, bucket_batches and pad_to_max live in soraj/data/bucket_batches.py.

A clip's native token count is what the native-size policy (soraj/data/native_size.py) gives it
at its longest length ≤ max_frames within token_budget: the tokens packing would train on.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

PARTIAL_BATCHES = ("pad", "drop")


@dataclasses.dataclass(frozen=True)
class Bucket:
    resolution: str
    num_frames: int
    aspect_ratio: float  # height / width
    height: int
    width: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class BucketAssignment:
    """A clip's bucket and how it gets there: the centre crop_height × crop_width box of each
    source frame is resized by `scale` to exactly the bucket's height × width (resize to cover,
    then crop, as Open-Sora does); the first bucket.num_frames frames are kept."""

    bucket: Bucket
    scale: float
    crop_height: int
    crop_width: int


# ---- Checks ----


def is_positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def _is_frame_entry(num_frames, value) -> bool:
    """num_frames -> (keep probability in [0, 1], batch size)."""
    if not is_positive_int(num_frames) or not isinstance(value, (tuple, list)) or len(value) != 2:
        return False
    keep, batch_size = value
    return isinstance(keep, (int, float)) and 0.0 <= keep <= 1.0 and is_positive_int(batch_size)


def check_token_setup(vae_factors, patch_size, token_budget) -> None:
    for name, values, count in (
        ("vae_factors (ft, fs)", vae_factors, 2),
        ("patch_size (pt, ph, pw)", patch_size, 3),
        ("token_budget", (token_budget,), 1),
    ):
        values = tuple(values)
        if len(values) != count or not all(is_positive_int(v) for v in values):
            raise ValueError(f"{name} must be {count} positive int(s), got {values}")


# ---- Table ----


class BucketTable:
    """Buckets for every (resolution, frame count, aspect ratio); see the module docstring."""

    def __init__(self, resolutions, frames, aspect_ratios, pixel_multiple=16, area_tolerance=1.0):
        if not resolutions or not all(
            isinstance(n, str) and is_positive_int(a) for n, a in resolutions.items()
        ):
            raise ValueError(
                f"resolutions must map names to positive int pixel areas, got {resolutions!r}"
            )
        if set(frames) != set(resolutions):
            raise ValueError(
                f"frames must have exactly the resolutions' names {sorted(resolutions)} as keys, "
                f"got {sorted(frames)}"
            )
        for name, table in frames.items():
            if (
                not isinstance(table, dict)
                or not table
                or not all(_is_frame_entry(t, v) for t, v in table.items())
            ):
                raise ValueError(
                    f"frames[{name!r}] must map frame counts (positive int) to (keep "
                    f"probability in [0, 1], batch size (positive int)), got {table!r}"
                )
        ratios = tuple(float(r) for r in aspect_ratios)
        if (
            not ratios
            or len(set(ratios)) != len(ratios)
            or not all(0 < r < math.inf for r in ratios)
        ):
            raise ValueError(
                f"aspect_ratios (height / width) must be distinct finite numbers > 0, got "
                f"{aspect_ratios!r}"
            )
        if not is_positive_int(pixel_multiple):
            raise ValueError(f"pixel_multiple must be a positive int, got {pixel_multiple!r}")
        if not 0.0 < float(area_tolerance) <= 1.0:
            raise ValueError(f"area_tolerance must be in (0, 1], got {area_tolerance!r}")
        # Largest area first: assignment walks down from the first that fits.
        self.resolutions = dict(sorted(resolutions.items(), key=lambda kv: -kv[1]))
        self.frames = {n: dict(sorted(frames[n].items(), reverse=True)) for n in self.resolutions}
        self.aspect_ratios = ratios
        self.pixel_multiple = int(pixel_multiple)
        self.area_tolerance = float(area_tolerance)

    def bucket(self, resolution: str, num_frames: int, aspect_ratio: float) -> Bucket:
        """Height and width: the ratio at the nominal area, rounded to pixel_multiple."""
        area, m = self.resolutions[resolution], self.pixel_multiple
        height = max(m, round(math.sqrt(area * aspect_ratio) / m) * m)
        width = max(m, round(math.sqrt(area / aspect_ratio) / m) * m)
        keep, batch_size = self.frames[resolution][num_frames]
        return Bucket(resolution, num_frames, aspect_ratio, height, width, batch_size)

    def buckets(self) -> list[Bucket]:
        """Every bucket, largest area, then most frames, then table ratio order first."""
        return [
            self.bucket(name, t, r)
            for name in self.resolutions
            for t in self.frames[name]
            for r in self.aspect_ratios
        ]


# ---- Assignment ----


def _frame_bucket(num_frames: int, frame_counts) -> int | None:
    """Images only to 1-frame buckets; videos to the longest bucket of 2 ≤ frames ≤ T."""
    if num_frames == 1:
        return 1 if 1 in frame_counts else None
    return next((t for t in frame_counts if 1 < t <= num_frames), None)  # counts descend


def assign_bucket(native_shape, table: BucketTable, rng: np.random.Generator):
    """The bucket a native (T, H, W) clip goes into, or None when none fits (Open-Sora drops it).

    Resolution: the nominal areas ≤ H·W / area_tolerance are offered largest first, each with
    its longest frame count (see _frame_bucket; a resolution with none is not offered). Keep:
    an offer is taken with its bucket's keep probability (one rng.random() draw), else the next
    is tried; the last offer is taken without a draw. (Open-Sora also walks down by keep
    probability but drops a clip when its smallest resolution has no frame count.) Aspect
    ratio: the table ratio nearest H / W, the first on a tie.
    """
    if len(tuple(native_shape)) != 3 or not all(is_positive_int(v) for v in native_shape):
        raise ValueError(f"native_shape must be 3 positive ints (T, H, W), got {native_shape!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator (np.random.default_rng), got {rng!r}")
    num_frames, height, width = (int(v) for v in native_shape)
    offers = []  # (resolution, frames): fitting resolutions that have a fitting frame count
    for name, area in table.resolutions.items():  # largest area first
        frames = _frame_bucket(num_frames, table.frames[name])
        if area <= height * width / table.area_tolerance and frames is not None:
            offers.append((name, frames))
    if not offers:
        return None
    chosen = next(
        (o for o in offers[:-1] if rng.random() < table.frames[o[0]][o[1]][0]), offers[-1]
    )
    ratio = min(table.aspect_ratios, key=lambda r: abs(r - height / width))
    bucket = table.bucket(chosen[0], chosen[1], ratio)
    scale = max(bucket.height / height, bucket.width / width)  # cover the bucket, then crop
    crop_height = min(height, round(bucket.height / scale))
    crop_width = min(width, round(bucket.width / scale))
    return BucketAssignment(bucket, scale, crop_height, crop_width)
