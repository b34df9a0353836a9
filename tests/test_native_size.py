"""Native-size policy: hand-worked plans, a brute-force reference over sizes, applying plans."""

import numpy as np
import pytest

from soraj.data.native_size import NativeSizePlan, apply_native_size_plan, plan_native_size


def _plan(shape, budget=10_000, max_frames=33, seed=0, vae=(4, 8), patch=(1, 2, 2), min_frames=1):
    rng = np.random.default_rng(seed)
    return plan_native_size(shape, vae, patch, budget, max_frames, rng, min_frames)


# ---- Hand-worked examples (fs = 8, patch 2: multiples of 16) ----


def test_snapped_size_is_kept():
    plan = _plan((1, 144, 176))
    assert (plan.height, plan.width, plan.num_frames) == (144, 176, 1)
    assert (plan.crop_top, plan.crop_left, plan.crop_height, plan.crop_width) == (0, 0, 144, 176)
    assert plan.latent_grid == (1, 9, 11) and not plan.resizes


def test_smallest_centre_crop_snaps():
    plan = _plan((1, 100, 180))  # 180×100 -> 176×96: 4 rows and 4 columns cut, 2 each side
    assert (plan.height, plan.width) == (96, 176)
    assert (plan.crop_top, plan.crop_left, plan.crop_height, plan.crop_width) == (2, 2, 96, 176)
    assert not plan.resizes


def test_full_hd_over_budget_downscales_keeping_16_by_9():
    # 1080/16 = 67.5 and 1920/16 = 120 patches. Scale 24/67.5 gives 24×42 = 1008 ≤ 1024
    # tokens; the next patch edge, 43/120, gives 24×43 = 1032 > 1024.
    plan = _plan((1, 1080, 1920), budget=1024)
    assert (plan.height, plan.width) == (384, 672) and plan.num_tokens == 1008
    # 672/384 = 1.75 is wider-than-target 16:9 trimmed: 1080 × 1890 crop, 15 px each side.
    assert (plan.crop_top, plan.crop_left, plan.crop_height, plan.crop_width) == (0, 15, 1080, 1890)
    assert plan.resizes


# ---- Properties over random sizes, against a brute-force reference ----


def _reference_grid(height, width, unit_h, unit_w, spatial_budget):
    """Largest (gh, gw) with some scale s ≤ 1: gh·uh ≤ s·H < (gh+1)·uh, same for w, fitting."""
    gh, gw = np.meshgrid(
        np.arange(1, height // unit_h + 1), np.arange(1, width // unit_w + 1), indexing="ij"
    )
    # s ≥ gh·uh/H and s ≥ gw·uw/W and s ≤ 1, s < (gh+1)·uh/H and s < (gw+1)·uw/W, by
    # cross-multiplying the fractions (all integers).
    lower_h_vs_upper_w = gh * unit_h * width < (gw + 1) * unit_w * height
    lower_w_vs_upper_h = gw * unit_w * height < (gh + 1) * unit_h * width
    consistent = lower_h_vs_upper_w & lower_w_vs_upper_h
    fits = consistent & (gh * gw <= spatial_budget)
    best = np.argmax(np.where(fits, gh * 100_000 + gw, -1))
    return int(gh.flat[best]), int(gw.flat[best])


def test_random_sizes_against_reference():
    rng = np.random.default_rng(1)
    snapped = downscaled = 0
    for _ in range(300):
        ft, fs = int(rng.choice([1, 4])), int(rng.choice([4, 8]))
        patch = (int(rng.choice([1, 2])), int(rng.choice([1, 2])), int(rng.choice([1, 2, 4])))
        unit_h, unit_w = fs * patch[1], fs * patch[2]
        shape = (
            int(rng.integers(1, 80)),
            int(rng.integers(unit_h, 700)),
            int(rng.integers(unit_w, 700)),
        )
        if patch[0] == 2 and shape[0] < 1 + ft:
            continue  # no clip length of two latent frames; the error is tested below
        budget, max_frames = int(rng.integers(60, 3000)), int(rng.integers(1 + ft, 60))
        plan = _plan(
            shape, budget, max_frames, seed=int(rng.integers(1 << 30)), vae=(ft, fs), patch=patch
        )
        T, H, W = shape
        gt, gh, gw = plan.latent_grid
        # Length: 1 + ft·k frames, within the clip and max_frames, whole temporal patches.
        k, rest = divmod(plan.num_frames - 1, ft)
        assert rest == 0 and plan.num_frames <= min(T, max_frames)
        assert (1 + k) == gt * patch[0] and plan.start_frame + plan.num_frames <= T
        # Size: the brute-force reference grid, hence within budget and aspect up to a snap.
        assert (gh, gw) == _reference_grid(H, W, unit_h, unit_w, budget // gt)
        assert plan.num_tokens <= budget
        assert (plan.height, plan.width) == (gh * unit_h, gw * unit_w)
        if (gh, gw) == (H // unit_h, W // unit_w):  # snap only: the smallest centre crop
            assert not plan.resizes
            snapped += 1
            assert (plan.crop_top, plan.crop_left) == (
                (H - plan.height) // 2,
                (W - plan.width) // 2,
            )
        else:  # downscaled: the crop has the target's aspect to within a pixel
            downscaled += 1
            assert plan.crop_height <= H and plan.crop_width <= W
            assert plan.crop_height == H or plan.crop_width == W  # the largest such crop
            assert abs(plan.crop_width * plan.height - plan.crop_height * plan.width) <= max(
                plan.height, plan.width
            )
    assert snapped > 50 and downscaled > 50  # the sweep covers both branches


def test_images_stay_one_frame():
    for seed in range(5):
        assert _plan((1, 64, 64), max_frames=33, seed=seed).num_frames == 1


def test_same_seed_same_plan_and_seeds_vary_the_length():
    plans = [_plan((100, 64, 96), max_frames=41, seed=seed) for seed in range(20)]
    assert plans == [_plan((100, 64, 96), max_frames=41, seed=seed) for seed in range(20)]
    assert len({p.num_frames for p in plans}) > 3


def test_min_frames_bounds_the_length_from_below_unless_the_source_is_shorter():
    # ft = 4: lengths 1 + 4k; min 17 and max 33 leave k in {4, ..., 8}.
    lengths = {
        _plan((100, 64, 96), 10_000, 33, seed, min_frames=17).num_frames for seed in range(40)
    }
    assert lengths == {17, 21, 25, 29, 33}
    assert _plan((9, 64, 96), 10_000, 33, min_frames=17).num_frames == 9  # the longest there is
    assert _plan((1, 64, 96), 10_000, 33, min_frames=17).num_frames == 1  # an image stays one


# ---- Applying a plan ----


def test_apply_snap_is_the_centre_slice():
    video = np.random.default_rng(0).integers(0, 256, (20, 100, 180, 3), dtype=np.uint8)
    plan = _plan(video.shape[:3], max_frames=9, seed=3)
    out = apply_native_size_plan(video, plan)
    s = plan.start_frame
    np.testing.assert_array_equal(out, video[s : s + plan.num_frames, 2:98, 2:178])


def test_apply_downscale_is_the_area_mean():
    video = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    plan = _plan((1, 64, 64), budget=4)  # 4×4 patches of 16 px -> 2×2: halve each side
    assert (plan.height, plan.width, plan.crop_height, plan.crop_width) == (32, 32, 64, 64)
    block_mean = video.reshape(1, 32, 2, 32, 2, 3).astype(np.float64).mean(axis=(2, 4))
    out = apply_native_size_plan(video, plan)
    assert out.dtype == np.uint8 and out.shape == (1, 32, 32, 3)
    assert np.abs(out - block_mean).max() <= 0.5 + 1e-9  # the mean, rounded to uint8


# ---- Bad input ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": (0, 64, 64)}, "native_shape"),
        ({"shape": (1, 8, 64)}, "smaller than one latent patch"),
        ({"budget": 0}, "token_budget"),
        ({"max_frames": -1}, "max_frames"),
        ({"min_frames": 40}, "min_frames=40 must be ≤ max_frames=33"),
        ({"vae": (4, 0)}, "vae_factors"),
        ({"patch": (1, 2)}, "patch_size"),
        ({"patch": (2, 2, 2)}, "an image needs pt = 1"),
        ({"shape": (1, 16, 400), "budget": 20}, "token_budget=20"),
    ],
)
def test_bad_input_names_allowed_values(kwargs, message):
    args = {"shape": (1, 64, 64)} | kwargs
    with pytest.raises(ValueError, match=message):
        _plan(args.pop("shape"), **args)


def test_bad_rng_and_video_are_rejected():
    with pytest.raises(ValueError, match="numpy Generator"):
        plan_native_size((1, 64, 64), (4, 8), (1, 2, 2), 100, 9, rng=0)
    plan = NativeSizePlan(0, 1, 0, 0, 64, 64, 64, 64, (1, 4, 4))
    with pytest.raises(ValueError, match="uint8"):
        apply_native_size_plan(np.zeros((1, 64, 64, 3), np.float32), plan)
    with pytest.raises(ValueError, match="smaller than the plan"):
        apply_native_size_plan(np.zeros((1, 32, 64, 3), np.uint8), plan)
