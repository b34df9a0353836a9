"""The mask curriculum: each type gives the frames it names, the shares and modifiers are drawn
at their rates, and a packed batch carries the per-token conditions."""

import numpy as np
import pytest

from soraj.data.frame_masks import (
    FROM_SAMPLE,
    MASK_SHARES,
    MASK_TYPES,
    MaskCurriculum,
    draw_condition,
    given_frames,
)


def _within_binomial(count, n, p, sigmas=5):
    """count of n draws is within `sigmas` standard deviations of n·p."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("frames", [2, 3, 5, 8])
def test_each_mask_type_gives_the_frames_it_names(frames):
    rng = np.random.default_rng(frames)
    half, quarter = (frames + 1) // 2, max(1, frames // 4)
    for _ in range(200):
        for name in MASK_TYPES:
            given = given_frames(name, frames, rng)
            assert given.shape == (frames,) and not given.all(), name  # something generated
            (indices,) = np.nonzero(given)
            if name in ("text_to_video", "independent"):
                assert not given.any()
            elif name == "first_frame":
                assert list(indices) == [0]
            elif name in ("random_frame",):
                assert len(indices) == 1
            elif name == "last_frame":
                assert list(indices) == [frames - 1]
            elif name == "first_last" and frames > 2:
                assert list(indices) == [0, frames - 1]
            elif name == "first_k":
                assert 1 <= len(indices) <= half and list(indices) == list(range(len(indices)))
            elif name == "last_k":
                k = len(indices)
                assert 1 <= k <= half and list(indices) == list(range(frames - k, frames))
            elif name == "head_tail_k" and frames >= 4:
                assert given[0] and given[-1]
                head = np.argmin(given)  # the first generated frame
                tail = frames - np.argmin(given[::-1])
                assert head <= quarter and frames - tail <= quarter
                assert not given[head:tail].any()
            elif name == "every_rth" and frames >= 5:
                step = np.diff(indices)
                assert len(set(step)) <= 1 and (not len(step) or 2 <= step[0] <= 4)


def test_shares_and_modifiers_are_drawn_at_their_rates():
    curriculum = MaskCurriculum(shares=MASK_SHARES)
    rng = np.random.default_rng(0)
    n = 20_000
    draws = [draw_condition(curriculum, 5, rng) for _ in range(n)]
    counts = np.bincount([d.mask_type for d in draws], minlength=len(MASK_TYPES))
    for (name, share), count in zip(MASK_SHARES, counts, strict=True):
        assert _within_binomial(count, n, share), (name, count, share)

    masked = [d for d in draws if d.given.any()]
    given_t = np.array([d.t[d.given][0] for d in masked])
    assert all(np.all(d.t[d.given] == d.t[d.given][0]) for d in masked)  # one t per sample
    noisy = (given_t > 0) & (given_t < 1)
    dropped_visual = given_t == 1.0
    m = len(masked)
    # Visual dropped in 10 % (alone or with the text); of the rest, a quarter noised.
    assert _within_binomial(dropped_visual.sum(), m, 0.10)
    assert _within_binomial(noisy.sum(), m, 0.25 * 0.90)
    assert given_t[noisy].max() <= 0.1
    text_dropped = np.array([d.drop_text for d in masked])
    assert _within_binomial(text_dropped.sum(), m, 0.10)
    assert _within_binomial((text_dropped & dropped_visual).sum(), m, 0.05)
    for d in draws:  # generated frames take the sample's drawn t
        if MASK_TYPES[d.mask_type] != "independent":
            assert np.all(d.t[~d.given] == FROM_SAMPLE)


def test_independent_frames_get_their_own_t_and_images_are_text_to_image():
    curriculum = MaskCurriculum(shares=(("independent", 1.0),))
    draw = draw_condition(curriculum, 6, np.random.default_rng(1))
    assert not draw.given.any() and np.all((draw.t >= 0) & (draw.t <= 1))
    assert len(set(draw.t.tolist())) == 6
    image = draw_condition(curriculum, 1, np.random.default_rng(1))
    assert MASK_TYPES[image.mask_type] == "text_to_video" and not image.given.any()


def test_text_only_curriculum_draws_nothing_from_the_stream():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    draw = draw_condition(MaskCurriculum(), 5, rng)
    assert rng.bit_generator.state == state  # earlier runs' data streams stay as they were
    assert not draw.given.any() and np.all(draw.t == FROM_SAMPLE)


def test_bad_curricula_are_refused_by_name():
    with pytest.raises(ValueError, match="mask types \\['first'\\]; allowed: text_to_video"):
        MaskCurriculum(shares=(("first", 1.0),))
    with pytest.raises(ValueError, match="listed twice"):
        MaskCurriculum(shares=(("first_frame", 0.5), ("first_frame", 0.5)))
    with pytest.raises(ValueError, match="drop_text \\+ drop_both \\+ drop_visual"):
        MaskCurriculum(drop_text=0.5, drop_both=0.4, drop_visual=0.2)
    with pytest.raises(ValueError, match="noisy_given must be in"):
        MaskCurriculum(noisy_given=1.5)
