"""Tests for the shapes probe: ground truth scores high; wrong captions and noise score near 0."""

import numpy as np
import pytest
from scipy import ndimage

from soraj.data import shapes
from soraj.data.shapes import BACKGROUNDS, COLOURS, ShapesSource
from soraj.eval.shapes_probe import score_video, score_videos

PROBE_SIZES = [(9, 32, 32), (17, 64, 64), (9, 48, 80), (9, 80, 48), (1, 32, 32)]
NUM_CLIPS = 100


def _clips(num_frames, height, width, seed=7):
    source = ShapesSource(NUM_CLIPS, num_frames, height, width, seed=seed, split="all")
    examples = [source[index] for index in range(NUM_CLIPS)]
    return [e["video"] for e in examples], [e["caption"] for e in examples]


def _mismatched(captions):
    """For each caption, another clip's caption sharing no colour and not the background."""
    scenes = [shapes.parse_dense_caption(caption) for caption in captions]
    mismatched = []
    for index, scene in enumerate(scenes):
        colours = {obj.colour for obj in scene.objects}
        for offset in range(1, len(scenes)):
            other = scenes[(index + offset) % len(scenes)]
            if other.background != scene.background and not colours & {
                obj.colour for obj in other.objects
            }:
                mismatched.append(shapes.dense_caption(other))
                break
    assert len(mismatched) == len(scenes)
    return mismatched


@pytest.mark.parametrize("num_frames, height, width", PROBE_SIZES)
def test_ground_truth_scores_high_and_wrong_captions_and_noise_near_zero(num_frames, height, width):
    videos, captions = _clips(num_frames, height, width)
    truth = score_videos(videos, captions)
    assert truth["num_videos"] == NUM_CLIPS
    assert truth["overall"] >= 0.98 and truth["fully_right"] >= 0.97, truth

    wrong = score_videos(videos, _mismatched(captions))
    assert wrong["present"] <= 0.1 and wrong["overall"] <= 0.15, wrong

    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, video.shape, dtype=np.uint8) for video in videos]
    scrambled = score_videos(noise, captions)
    assert scrambled["present"] <= 0.1 and scrambled["overall"] <= 0.15, scrambled


def test_tolerates_blur_and_colour_shift():
    # Stand-in for generated video: soft edges (Gaussian blur) and a per-clip colour cast.
    videos, captions = _clips(9, 32, 32, seed=3)
    rng = np.random.default_rng(1)
    degraded = []
    for video in videos:
        blurred = ndimage.gaussian_filter(video.astype(np.float32), (0, 0.8, 0.8, 0))
        shifted = blurred + rng.uniform(-30, 30, size=3)
        degraded.append(np.clip(np.rint(shifted), 0, 255).astype(np.uint8))
    assert score_videos(degraded, captions)["overall"] >= 0.95


# ---- Hand-drawn videos, independent of the renderer ----


def _hand_drawn(shape, colour, step, num_frames=9, size=48, side=16):
    """A gray video with one shape of `side` pixels whose top-left corner moves by `step`."""
    video = np.full((num_frames, size, size, 3), BACKGROUNDS["gray"], np.uint8)
    rows, cols = np.mgrid[0:side, 0:side]
    masks = {
        "square": np.ones((side, side), bool),
        "circle": (rows - (side - 1) / 2) ** 2 + (cols - (side - 1) / 2) ** 2 <= (side / 2) ** 2,
        "triangle": np.abs(cols - (side - 1) / 2) <= (rows + 1) / 2,  # apex at the top
    }
    for frame in range(num_frames):
        top, left = np.array([16, 16]) + np.array(step) * (frame - num_frames // 2)
        video[frame, top : top + side, left : left + side][masks[shape]] = COLOURS[colour]
    return video


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize(
    "step, motion",
    [((0, -2), "moves to the left"), ((0, 2), "moves to the right"), ((-2, 0), "moves up")],
)
def test_hand_drawn_shapes_and_motions(shape, step, motion):
    video = _hand_drawn(shape, "orange", step)
    caption = f"A large orange {shape} {motion}. The background is gray."
    assert score_video(video, caption) == {
        "present": 1.0,
        "shape": 1.0,
        "size": 1.0,
        "motion": 1.0,
        "background": 1.0,
        "overall": 1.0,
        "fully_right": 1.0,
    }
    other_shape = next(s for s in shapes.SHAPES if s != shape)
    wrong = f"A large orange {other_shape} stays still. The background is black."
    assert score_video(video, wrong) == {
        "present": 1.0,
        "shape": 0.0,
        "size": 1.0,
        "motion": 0.0,
        "background": 0.0,
        "overall": 0.4,
        "fully_right": 0.0,
    }
    # A 16-pixel shape on a 48-pixel canvas is large (0.36 × 48 = 17.3), not small (10.6).
    small = f"A small orange {shape} {motion}. The background is gray."
    assert score_video(video, small)["size"] == 0.0
    assert score_video(video, small)["fully_right"] == 0.0


def test_still_object_and_averaging_over_videos():
    still = _hand_drawn("square", "cyan", (0, 0))
    caption = "A large cyan square stays still. The background is gray."
    assert score_video(still, caption)["overall"] == 1.0
    blank = np.full_like(still, BACKGROUNDS["black"])
    # Blank black frames: only the background check of a black caption can pass.
    black_caption = caption.replace("gray", "black")
    assert score_video(blank, black_caption)["overall"] == 0.2
    averaged = score_videos([still, blank], [caption, black_caption])
    assert averaged == {
        "present": 0.5,
        "shape": 0.5,
        "size": 0.5,
        "motion": 0.5,
        "background": 1.0,
        "overall": 0.6,
        "fully_right": 0.5,
        "num_videos": 2,
    }


def test_scattered_pixels_of_the_right_colour_are_not_an_object():
    video = np.full((9, 48, 48, 3), BACKGROUNDS["gray"], np.uint8)
    rows, cols = np.mgrid[0:20, 0:20]
    checkerboard = (rows + cols) % 2 == 0  # right colour, right area, no connected blob
    video[:, 14:34, 14:34][:, checkerboard] = COLOURS["red"]
    scores = score_video(video, "A large red square stays still. The background is gray.")
    assert scores["present"] == 0.0 and scores["overall"] == 0.2


def test_rejects_bad_input():
    video = _hand_drawn("square", "red", (0, 0))
    caption = "A large red square stays still. The background is gray."
    with pytest.raises(ValueError, match="uint8"):
        score_video(video.astype(np.float32) / 255, caption)
    with pytest.raises(ValueError, match="uint8"):
        score_video(video[0], caption)
    with pytest.raises(ValueError, match="grammar"):
        score_video(video, "a red square")
    with pytest.raises(ValueError, match="one caption per video"):
        score_videos([video, video], [caption])


def test_bootstrap_interval_covers_the_normal_approximation():
    from soraj.eval.bootstrap import bootstrap_interval

    rng = np.random.default_rng(0)
    values = (rng.uniform(size=400) < 0.3).astype(float)  # 400 prompts, 30 % fully right
    low, high = bootstrap_interval(values, np.random.default_rng(1))
    mean = values.mean()
    half_width = 1.96 * np.sqrt(mean * (1 - mean) / len(values))  # the binomial closed form
    assert low < mean < high
    np.testing.assert_allclose([low, high], [mean - half_width, mean + half_width], atol=0.01)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_interval([], rng)
