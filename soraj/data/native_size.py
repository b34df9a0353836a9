"""Native-size policy: a clip's own size, snapped to whole latent patches, within a token budget."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
from skimage.transform import resize_local_mean


@dataclasses.dataclass(frozen=True)
class NativeSizePlan:
    """What to cut from a (T, H, W, 3) clip: frames, a centre crop box, and the target size.

    A crop box equal to the target size means no resize (the clip is only snapped); a
    larger box is area-downscaled to (height, width).
    """

    start_frame: int
    num_frames: int  # 1 + ft·k
    crop_top: int
    crop_left: int
    crop_height: int
    crop_width: int
    height: int  # multiple of fs·ph
    width: int  # multiple of fs·pw
    latent_grid: tuple[int, int, int]  # (gt, gh, gw) patches

    @property
    def num_tokens(self) -> int:
        gt, gh, gw = self.latent_grid
        return gt * gh * gw

    @property
    def resizes(self) -> bool:
        return (self.crop_height, self.crop_width) != (self.height, self.width)


# ---- Checks ----


def _check_positive_ints(name: str, values, count: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != count or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values
    ):
        raise ValueError(f"{name} must be {count} positive int(s), got {values}")
    return tuple(int(v) for v in values)


# ---- Policy ----


def _spatial_grid(scale: Fraction, height: int, width: int, unit_h: int, unit_w: int):
    """(gh, gw): whole patches that fit a frame downscaled by scale, without distorting it."""
    return int(scale * height // unit_h), int(scale * width // unit_w)


def _largest_fitting_grid(height, width, unit_h, unit_w, spatial_budget):
    """The patch grid of the largest scale s ≤ 1 with gh, gw ≥ 1 and gh·gw ≤ spatial_budget.

    gh = ⌊s·H/unit_h⌋ and gw = ⌊s·W/unit_w⌋ only change where s·H or s·W crosses a patch
    edge, so those edges (and s = 1) are the only scales worth trying. Fractions keep them
    exact, so a frame never loses a patch to float rounding.
    """
    candidates = {Fraction(1)}
    candidates |= {Fraction(a * unit_h, height) for a in range(1, height // unit_h + 1)}
    candidates |= {Fraction(b * unit_w, width) for b in range(1, width // unit_w + 1)}
    for scale in sorted(candidates, reverse=True):
        gh, gw = _spatial_grid(scale, height, width, unit_h, unit_w)
        if gh >= 1 and gw >= 1 and gh * gw <= spatial_budget:
            return gh, gw
    return None


def _smallest_grid(height, width, unit_h, unit_w) -> tuple[int, int]:
    """The patch grid at the smallest scale that still keeps one whole patch on each side."""
    scale = max(Fraction(unit_h, height), Fraction(unit_w, width))
    return _spatial_grid(scale, height, width, unit_h, unit_w)


def plan_native_size(
    native_shape,
    vae_factors,
    patch_size,
    token_budget: int,
    max_frames: int,
    rng: np.random.Generator,
    min_frames: int = 1,
) -> NativeSizePlan:
    """Plans a native (T, H, W) clip for VAE factors (ft, fs) and DiT patches (pt, ph, pw).

    Length: k is drawn uniformly so the clip has min_frames ≤ 1 + ft·k ≤ min(T, max_frames)
    frames (fewer when the source is shorter than min_frames), its
    1 + k latent frames split into whole pt patches, and the budget still holds a frame of
    one patch per side; the window start is uniform. An image (T = 1) stays T = 1.
    Size: height and width are snapped down to multiples of fs·ph and fs·pw by the smallest
    centre crop. Only when that exceeds token_budget is the frame area-downscaled, to the
    largest scale whose snapped grid fits; the aspect ratio is kept up to one snap step.
    """
    num_frames, height, width = _check_positive_ints("native_shape (T, H, W)", native_shape, 3)
    ft, fs = _check_positive_ints("vae_factors (ft, fs)", vae_factors, 2)
    pt, ph, pw = _check_positive_ints("patch_size (pt, ph, pw)", patch_size, 3)
    (token_budget,) = _check_positive_ints("token_budget (latent patch tokens)", [token_budget], 1)
    (max_frames,) = _check_positive_ints("max_frames", [max_frames], 1)
    (min_frames,) = _check_positive_ints("min_frames", [min_frames], 1)
    if min_frames > max_frames:
        raise ValueError(f"min_frames={min_frames} must be ≤ max_frames={max_frames}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}"
        )
    unit_h, unit_w = fs * ph, fs * pw
    if height < unit_h or width < unit_w:
        raise ValueError(
            f"frames of {height}×{width} are smaller than one latent patch; "
            f"height must be ≥ fs·ph = {unit_h} and width ≥ fs·pw = {unit_w}"
        )

    # ---- Length ----
    min_spatial = int(np.prod(_smallest_grid(height, width, unit_h, unit_w)))
    k_max = (min(num_frames, max_frames) - 1) // ft
    ks = [
        k
        for k in range(k_max + 1)
        if (1 + k) % pt == 0 and (1 + k) // pt * min_spatial <= token_budget
    ]
    # A source shorter than min_frames still gives its longest clip rather than none.
    long_enough = [k for k in ks if 1 + ft * k >= min_frames]
    ks = long_enough or ks[-1:]
    if not ks:
        raise ValueError(
            f"no clip length fits: frames must be 1 + ft·k ≤ min(T={num_frames}, "
            f"max_frames={max_frames}) with ft={ft}, 1 + k a multiple of pt={pt}, and "
            f"(1 + k)/pt × {min_spatial} (the smallest {height}×{width} grid) ≤ "
            f"token_budget={token_budget}; an image needs pt = 1"
        )
    k = int(ks[rng.integers(len(ks))])
    clip_frames = 1 + ft * k
    start_frame = int(rng.integers(num_frames - clip_frames + 1))
    gt = (1 + k) // pt

    # ---- Size ----
    gh, gw = _largest_fitting_grid(height, width, unit_h, unit_w, token_budget // gt)
    target_h, target_w = gh * unit_h, gw * unit_w
    if target_h == height // unit_h * unit_h and target_w == width // unit_w * unit_w:
        crop_h, crop_w = target_h, target_w  # snap only: the smallest crop
    elif width * target_h > height * target_w:  # source wider than target: trim the sides
        crop_h, crop_w = height, min(width, max(1, round(height * target_w / target_h)))
    else:
        crop_h, crop_w = min(height, max(1, round(width * target_h / target_w))), width
    return NativeSizePlan(
        start_frame=start_frame,
        num_frames=clip_frames,
        crop_top=(height - crop_h) // 2,
        crop_left=(width - crop_w) // 2,
        crop_height=crop_h,
        crop_width=crop_w,
        height=target_h,
        width=target_w,
        latent_grid=(gt, gh, gw),
    )


# ---- Applying a plan ----


def apply_native_size_plan(video: np.ndarray, plan: NativeSizePlan) -> np.ndarray:
    """Cuts and resizes a uint8 clip as planned: (T, H, W, 3) -> (T', H', W', 3)."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (T, H, W, 3), got {video.dtype} {video.shape}")
    needed = (
        plan.start_frame + plan.num_frames,
        plan.crop_top + plan.crop_height,
        plan.crop_left + plan.crop_width,
    )
    if any(have < need for have, need in zip(video.shape[:3], needed, strict=True)):
        raise ValueError(
            f"video of shape {video.shape[:3]} is smaller than the plan needs (T, H, W) ≥ {needed}"
        )
    clip = video[
        plan.start_frame : plan.start_frame + plan.num_frames,
        plan.crop_top : plan.crop_top + plan.crop_height,
        plan.crop_left : plan.crop_left + plan.crop_width,
    ]  # (T', h, w, 3)
    if not plan.resizes:
        return np.ascontiguousarray(clip)
    # Area average: each target pixel is the mean of the source area it covers, so no aliasing.
    frames = [
        resize_local_mean(
            frame, (plan.height, plan.width), grid_mode=True, preserve_range=True, channel_axis=-1
        )
        for frame in clip
    ]
    return np.rint(np.stack(frames)).astype(np.uint8)  # (T', H', W', 3)
