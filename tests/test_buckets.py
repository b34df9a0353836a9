"""The Open-Sora-style bucket baseline: assignment against hand-worked cases and a brute-force
search, token counts against closed forms, waste figures against a naive recount."""

import math

import numpy as np
import pytest

from soraj.data.bucket_batches import bucket_batches, clip_tokens, native_tokens, pad_to_max
from soraj.data.buckets import BucketTable, assign_bucket

VAE, PATCH = (4, 8), (1, 2, 2)  # 16 pixels per patch side, T = 1 + 4k frames
RESOLUTIONS = {"144p": 144 * 256, "240p": 240 * 426}
RATIOS = (0.56, 0.75, 1.0, 1.33, 1.78)


def _frames(keep_240p=1.0):
    return {
        "144p": {1: (1.0, 6), 17: (1.0, 3)},
        "240p": {1: (1.0, 4), 9: (1.0, 2), 17: (keep_240p, 2)},
    }


def _table(keep_240p=1.0):
    return BucketTable(RESOLUTIONS, _frames(keep_240p), RATIOS, pixel_multiple=16)


def _random_shapes(rng, count):
    frames = rng.choice([1, 1, 5, 9, 12, 17, 30, 40], size=count)
    heights, widths = rng.integers(96, 520, size=count), rng.integers(96, 520, size=count)
    return [(int(t), int(h), int(w)) for t, h, w in zip(frames, heights, widths, strict=True)]


# ---- Table ----


def test_bucket_sizes_are_the_ratio_at_the_nominal_area_in_16_pixel_steps():
    table = _table()
    # 144p: area 36864; ratio 0.56 -> sqrt(36864·0.56) = 143.7 -> 144, sqrt(36864/0.56) = 256.6
    # -> 256; ratio 1 -> 192 × 192. 240p: area 102240; ratio 1.33 -> 368.7 -> 368, 277.3 -> 272.
    sizes = {(b.resolution, b.aspect_ratio): (b.height, b.width) for b in table.buckets()}
    assert sizes[("144p", 0.56)] == (144, 256)
    assert sizes[("144p", 1.0)] == (192, 192)
    assert sizes[("240p", 1.33)] == (368, 272)
    for (name, ratio), (h, w) in sizes.items():
        area = RESOLUTIONS[name]
        assert h == round(math.sqrt(area * ratio) / 16) * 16
        assert w == round(math.sqrt(area / ratio) / 16) * 16
    # 2 resolutions × their frame counts × 5 ratios, largest area and most frames first.
    listed = table.buckets()
    assert len(listed) == (2 + 3) * len(RATIOS)
    assert [(b.resolution, b.num_frames) for b in listed[:: len(RATIOS)]] == [
        ("240p", 17),
        ("240p", 9),
        ("240p", 1),
        ("144p", 17),
        ("144p", 1),
    ]


# ---- Assignment ----


@pytest.mark.parametrize(
    "shape, expected",
    [
        # 240·426 is exactly the 240p area; 240/426 = 0.563 -> 0.56; bucket 240 × 432 covers it at
        # scale 432/426, so the source box is 240/scale = 236.7 -> 237 rows × 426 columns.
        ((17, 240, 426), (("240p", 17, 0.56), (240, 432), 432 / 426, 237, 426)),
        ((12, 240, 426), (("240p", 9, 0.56), (240, 432), 432 / 426, 237, 426)),  # 9 ≤ 12 < 17
        # 480/640 = 0.75 -> 272 × 368 at scale max(272/480, 368/640) = 0.575: 473 × 640 box.
        ((40, 480, 640), (("240p", 17, 0.75), (272, 368), 0.575, 473, 640)),
        # 40000 pixels: only 144p fits; an image goes to a 1-frame bucket: 192 × 192, scale 0.96.
        ((1, 200, 200), (("144p", 1, 1.0), (192, 192), 0.96, 200, 200)),
        ((5, 480, 480), None),  # a video shorter than every video bucket (9 and 17 frames)
        ((9, 190, 190), None),  # 36100 pixels, under the smallest area 36864
    ],
)
def test_assignment_by_hand(shape, expected):
    assignment = assign_bucket(shape, _table(), np.random.default_rng(0))
    if expected is None:
        assert assignment is None
        return
    key, size, scale, crop_height, crop_width = expected
    bucket = assignment.bucket
    assert (bucket.resolution, bucket.num_frames, bucket.aspect_ratio) == key
    assert (bucket.height, bucket.width) == size
    assert assignment.scale == pytest.approx(scale, rel=1e-12)
    assert (assignment.crop_height, assignment.crop_width) == (crop_height, crop_width)


def _brute_force_bucket(shape):
    """Every (resolution, frames, ratio) in the raw tables that fits; the largest area, then the
    most frames, then the nearest ratio (first in RATIOS on a tie) wins."""
    t, h, w = shape
    fitting = [
        (RESOLUTIONS[name], frames, -abs(r - h / w), -i, (name, frames, r))
        for name, counts in _frames().items()
        for frames in counts
        for i, r in enumerate(RATIOS)
        if RESOLUTIONS[name] <= h * w and (frames == 1 if t == 1 else 1 < frames <= t)
    ]
    return max(fitting)[-1] if fitting else None


def test_assignment_equals_brute_force_search():
    rng = np.random.default_rng(1)
    shapes = _random_shapes(rng, 400)
    got = []
    for shape in shapes:
        assignment = assign_bucket(shape, _table(), rng)
        b = assignment and assignment.bucket
        got.append(b and (b.resolution, b.num_frames, b.aspect_ratio))
    assert got == [_brute_force_bucket(s) for s in shapes]
    assert sum(g is None for g in got) not in (0, len(got))  # both outcomes are exercised


def test_keep_probability_moves_clips_down_a_resolution():
    # keep 0: a 17-frame 240p clip is never kept at 240p; its last offer (144p) takes it.
    never = assign_bucket((17, 240, 426), _table(keep_240p=0.0), np.random.default_rng(0))
    assert (never.bucket.resolution, never.bucket.num_frames) == ("144p", 17)
    # A 12-frame clip is offered 240p with 9 frames (keep 1), untouched by the 17-frame keep.
    short = assign_bucket((12, 240, 426), _table(keep_240p=0.0), np.random.default_rng(0))
    assert (short.bucket.resolution, short.bucket.num_frames) == ("240p", 9)
    # keep 0.3: one uniform draw per clip decides, so it matches the same draws made here.
    rng, draws = np.random.default_rng(5), np.random.default_rng(5)
    table, kept = _table(keep_240p=0.3), []
    for _ in range(2000):
        resolution = assign_bucket((20, 300, 400), table, rng).bucket.resolution
        assert resolution == ("240p" if draws.random() < 0.3 else "144p")
        kept.append(resolution == "240p")
    assert abs(np.mean(kept) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)


# ---- Tokens ----


@pytest.mark.parametrize("ft, pt", [(1, 1), (4, 1), (4, 2), (8, 2)])
def test_clip_tokens_closed_form(ft, pt):
    fs, ph, pw = 8, 2, 4
    for latent_patches in (1, 2, 3):
        for gh, gw in ((1, 1), (3, 5)):
            frames = 1 + ft * (pt * latent_patches - 1)  # 1 + k latent frames = pt · patches
            tokens = clip_tokens(frames, gh * fs * ph, gw * fs * pw, (ft, fs), (pt, ph, pw))
            assert tokens == latent_patches * gh * gw


def test_native_tokens_by_hand():
    # 33 frames capped at 17 -> 1 + 16/4 = 5 latent frames; 240 // 16 = 15, 426 // 16 = 26.
    assert native_tokens((33, 240, 426), VAE, PATCH, 4096, 17) == 5 * 15 * 26
    # An image of 480 × 480 is 30 × 30 patches, or fewer when the budget is 400: 20 × 20.
    assert native_tokens((1, 480, 480), VAE, PATCH, 4096, 17) == 900
    assert native_tokens((1, 480, 480), VAE, PATCH, 400, 17) == 400


# ---- Batching and waste ----

A, B, C = (17, 240, 426), (1, 200, 200), (1, 480, 480)
# Tokens: A in 240p/17 (240 × 432): 5·15·27 = 2025, native 5·15·26 = 1950 (75 upsampled);
# B in 144p/1 (192 × 192): 144, native 12·12 = 144; C in 240p/1 (320 × 320): 400, native 900.


def test_bucket_batches_by_hand():
    stream = [A, A, B, A, C, A, A]
    out = bucket_batches(stream, VAE, PATCH, 4096, _table())
    keys = [(b.resolution, b.num_frames, members) for b, members in out["batches"]]
    # Full batches as they fill, then the partial ones in table order (240p/17, 240p/1, 144p/1).
    assert keys == [
        ("240p", 17, (0, 1)),
        ("240p", 17, (3, 5)),
        ("240p", 17, (6,)),
        ("240p", 1, (4,)),
        ("144p", 1, (2,)),
    ]
    assert out["useful_tokens"] == 5 * 2025 + 400 + 144
    assert out["padded_tokens"] == 1 * 2025 + 3 * 400 + 5 * 144  # rows missing × bucket tokens
    assert out["bucket_waste"] == pytest.approx(3945 / (10669 + 3945), rel=1e-12)
    assert (out["cropped_tokens"], out["upsampled_tokens"]) == (900 - 400, 5 * 75)
    assert out["native_tokens"] == 5 * 1950 + 144 + 900
    assert out["cropped_fraction"] == pytest.approx(500 / 10794, rel=1e-12)
    dropped = bucket_batches(stream, VAE, PATCH, 4096, _table(), partial="drop")
    assert [m for _, m in dropped["batches"]] == [(0, 1), (3, 5)]
    assert (dropped["padded_tokens"], dropped["bucket_waste"]) == (0, 0.0)
    assert (dropped["dropped_clips"], dropped["dropped_tokens"]) == (3, 1950 + 900 + 144)


def _tokens_by_hand(bucket):
    return ((bucket.num_frames - 1) // 4 + 1) * (bucket.height // 16) * (bucket.width // 16)


@pytest.mark.parametrize("partial", ["pad", "drop"])
def test_bucket_batches_against_a_naive_recount(partial):
    shapes = _random_shapes(np.random.default_rng(2), 120)
    table = _table(keep_240p=0.5)
    out = bucket_batches(shapes, VAE, PATCH, 4096, table, seed=3, partial=partial)
    replay = np.random.default_rng(3)
    assigned = {i: assign_bucket(s, table, replay) for i, s in enumerate(shapes)}
    native = [native_tokens(s, VAE, PATCH, 4096, 17) for s in shapes]

    seen, useful, padded, partial_buckets = [], 0, 0, []
    for bucket, members in out["batches"]:
        assert all(assigned[i].bucket == bucket for i in members)
        assert 1 <= len(members) <= bucket.batch_size
        if len(members) < bucket.batch_size:
            partial_buckets.append(bucket)
        seen += members
        useful += len(members) * _tokens_by_hand(bucket)
        padded += (bucket.batch_size - len(members)) * _tokens_by_hand(bucket)
    assert len(set(partial_buckets)) == len(partial_buckets)  # at most one partial per bucket
    assert (partial == "drop") == (not partial_buckets)
    assert len(seen) == len(set(seen))
    dropped = [i for i, a in assigned.items() if a is None or i not in seen]
    assert sorted(seen + dropped) == list(range(len(shapes)))
    assert out["dropped_clips"] == len(dropped)
    assert out["dropped_tokens"] == sum(native[i] for i in dropped)
    assert (out["useful_tokens"], out["padded_tokens"]) == (useful, padded)
    assert out["bucket_waste"] == pytest.approx(padded / (useful + padded), rel=1e-12)
    kept = [i for i, a in assigned.items() if a is not None]
    gaps = [native[i] - _tokens_by_hand(assigned[i].bucket) for i in kept]
    assert out["cropped_tokens"] == sum(g for g in gaps if g > 0)
    assert out["upsampled_tokens"] == sum(-g for g in gaps if g < 0)
    assert out["cropped_tokens"] > 0 and out["num_batches"] == len(out["batches"])


def test_pad_to_max_by_hand():
    out = pad_to_max([A, B, C], VAE, PATCH, 4096, max_frames=17, batch_size=2)
    # 2 batches of 2 rows, each row 1950 tokens (A's); the 4th row is all padding.
    assert out["max_clip_tokens"] == 1950
    assert out["batch_tokens"] == 4 * 1950
    assert out["useful_tokens"] == 1950 + 144 + 900
    assert out["pad_waste"] == pytest.approx((7800 - 2994) / 7800, rel=1e-12)


# ---- Bad input ----


def _frames_with(name, entry):
    frames = _frames()
    frames[name] = entry
    return frames


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: BucketTable({}, {}, RATIOS), "resolutions must map"),
        (lambda: BucketTable({"144p": 0}, {"144p": {1: (1.0, 2)}}, RATIOS), "resolutions must"),
        (lambda: BucketTable(RESOLUTIONS, {"144p": {1: (1.0, 2)}}, RATIOS), "exactly the"),
        (lambda: BucketTable(RESOLUTIONS, _frames_with("144p", {1: (1.5, 2)}), RATIOS), "keep"),
        (lambda: BucketTable(RESOLUTIONS, _frames_with("144p", {1: (1.0, 0)}), RATIOS), "batch"),
        (lambda: BucketTable(RESOLUTIONS, _frames_with("144p", {0: (1.0, 2)}), RATIOS), "frame"),
        (lambda: BucketTable(RESOLUTIONS, _frames(), (1.0, -2.0)), "aspect_ratios"),
        (lambda: BucketTable(RESOLUTIONS, _frames(), (1.0, 1.0)), "distinct"),
        (lambda: BucketTable(RESOLUTIONS, _frames(), RATIOS, pixel_multiple=0), "pixel_multiple"),
        (lambda: BucketTable(RESOLUTIONS, _frames(), RATIOS, area_tolerance=0), "area_tolerance"),
        (lambda: assign_bucket((17, 240), _table(), np.random.default_rng(0)), "native_shape"),
        (lambda: assign_bucket((17, 240, 426), _table(), 0), "numpy Generator"),
        (lambda: clip_tokens(16, 240, 432, VAE, PATCH), "1 \\+ ft·k"),
        (lambda: clip_tokens(17, 240, 430, VAE, PATCH), "fs·pw=16"),
        (lambda: bucket_batches([A], VAE, PATCH, 4096, _table(), partial="flush"), "partial"),
        (lambda: bucket_batches([A], VAE, PATCH, 4096, {"144p": 1}), "BucketTable"),
        (lambda: bucket_batches([A], (4,), PATCH, 4096, _table()), "vae_factors"),
        (lambda: bucket_batches([A], VAE, PATCH, 1000, _table()), "over token_budget=1000"),
        (
            lambda: bucket_batches(
                [A], VAE, PATCH, 4096, BucketTable(RESOLUTIONS, _frames(), RATIOS, 8)
            ),
            "not whole patches",
        ),
        (lambda: pad_to_max([A], VAE, PATCH, 4096, 17, batch_size=0), "batch_size"),
        (lambda: pad_to_max([], VAE, PATCH, 4096, 17), "at least one"),
    ],
)
def test_bad_input_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
