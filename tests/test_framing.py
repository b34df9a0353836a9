"""Tests for the framing measure: whole objects count as in frame; cropped, exiting, missing
objects and noise do not. Expectations come from geometry, not from the measure."""

import numpy as np
import pytest
from scipy import ndimage

from soraj.data import shapes
from soraj.data.shapes import BACKGROUNDS, COLOURS, ShapesSource
from soraj.data.shapes_canvases import ShapesCanvasSource
from soraj.eval.framing import framing_scores, framing_video

CANVASES = ((32, 64), (64, 32), (32, 32))


def _examples(source):
    examples = [source[index] for index in range(len(source))]
    return [e["video"] for e in examples], [e["caption"] for e in examples]


# ---- Ground-truth renders ----


def test_rendered_clips_are_fully_in_frame_on_every_canvas():
    videos, captions = _examples(
        ShapesCanvasSource(90, CANVASES, num_frames=9, seed=4, split="all")
    )
    scores = framing_scores(videos, captions)
    assert scores["num_videos"] == 90 and scores["num_objects"] >= 120
    # Two large objects on crossing paths may occlude each other for a few frames; nothing
    # is ever cut by the border.
    assert scores["fully_in_frame"] >= 0.97 and scores["cut"] == 0.0, scores
    assert len(scores["per_video"]) == 90


def test_blur_and_colour_cast_keep_whole_objects_in_frame():
    videos, captions = _examples(ShapesCanvasSource(60, CANVASES, num_frames=9, seed=5))
    rng = np.random.default_rng(1)
    degraded = []
    for video in videos:
        blurred = ndimage.gaussian_filter(video.astype(np.float32), (0, 0.8, 0.8, 0))
        shifted = blurred + rng.uniform(-30, 30, size=3)
        degraded.append(np.clip(np.rint(shifted), 0, 255).astype(np.uint8))
    scores = framing_scores(degraded, captions)
    assert scores["fully_in_frame"] >= 0.95 and scores["cut"] <= 0.02, scores


def test_noise_is_not_in_frame():
    videos, captions = _examples(ShapesCanvasSource(40, CANVASES, num_frames=9, seed=6))
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, video.shape, dtype=np.uint8) for video in videos]
    assert framing_scores(noise, captions)["fully_in_frame"] == 0.0


# ---- Centre crops of wide clips ----


def _crop_expectation(track, extent, crop_left, crop_width):
    """True: whole inside the crop with a pixel to spare in every frame; False: in some frame
    its centre is inside but a quarter or more of its box sticks out; None: in between."""
    x = track[:, 1]  # (T,)
    left, right = x - extent / 2 - crop_left, x + extent / 2 - crop_left
    if np.all(left >= 1.0) and np.all(right <= crop_width - 1.0):
        return True
    centre_inside = (x > crop_left) & (x < crop_left + crop_width)
    sticks_out = np.maximum(-left, right - crop_width) >= 0.25 * extent
    return False if np.any(centre_inside & sticks_out) else None


def test_centre_crops_of_wide_clips_cut_the_objects_geometry_says_they_cut():
    height, width, side = 32, 64, 32
    crop_left = (width - side) // 2
    rng = np.random.default_rng(9)
    outcomes = {True: [], False: []}
    while min(len(outcomes[True]), len(outcomes[False])) < 12:
        scene = shapes.sample_scene(rng, 9, "all")
        if len(scene.objects) != 1:
            continue
        (obj,) = scene.objects
        track = shapes.sample_tracks(scene, 9, height, width, rng)  # (1, T, 2)
        extent = shapes.object_extent(obj.size, height, width)
        expected = _crop_expectation(track[0], extent, crop_left, side)
        if expected is None:
            continue
        video = shapes.render_tracks(scene, track, height, width)[
            :, :, crop_left : crop_left + side
        ]
        result = framing_video(video, shapes.dense_caption(scene))
        outcomes[expected].append(result["fully_in_frame"])
    assert outcomes[True] == [1.0] * len(outcomes[True])
    assert outcomes[False] == [0.0] * len(outcomes[False])


# ---- Hand-drawn squares, independent of the renderer ----


def _square_video(lefts, top=10, side=12, height=32, width=64, right=None):
    """A black clip with a 12-pixel red square (a large square on a 32-high canvas: 11.5 px)
    whose left edge is at lefts[t]; pixels off the canvas, or right of `right`, are dropped."""
    video = np.full((len(lefts), height, width, 3), BACKGROUNDS["black"], np.uint8)
    for frame, left in enumerate(lefts):
        end = max(left + side, 0) if right is None else right
        video[frame, top : top + side, max(left, 0) : end] = COLOURS["red"]
    return video


@pytest.mark.parametrize(
    "lefts, fully_in_frame, cut_frames",
    [
        ([20] * 9, True, 0),  # still, inside
        (list(range(4, 40, 4)), True, 0),  # moves right, stays inside
        ([0] * 9, False, 9),  # on the left border: a whole square's pixels, but touching it
        ([-6] * 9, False, 9),  # half outside
        (list(range(20, 65, 5)), False, 2),  # leaves: columns 55..66 and 60..71 pass 63
        ([20, 20, 20, 20, 20, 20, 20, 20, 60], False, 1),  # cut in one frame only
    ],
)
def test_hand_drawn_square_inside_touching_half_out_and_leaving(lefts, fully_in_frame, cut_frames):
    caption = "A large red square moves to the right. The background is black."
    result = framing_video(_square_video(lefts), caption)
    (obj,) = result["objects"]
    assert obj["fully_in_frame"] is fully_in_frame and obj["cut_frames"] == cut_frames, obj
    assert result["all_in_frame"] is fully_in_frame


def test_a_piece_a_pixel_from_the_border_is_cut_and_a_whole_object_there_is_not():
    caption = "A large red square stays still. The background is black."
    whole = framing_video(_square_video([1] * 9), caption)["objects"][0]
    assert whole["fully_in_frame"] and whole["cut_frames"] == 0, whole
    # Columns 1..6: half a square ending one pixel short of the edge, as the VAE decodes one.
    piece = framing_video(_square_video([1] * 9, right=7), caption)["objects"][0]
    assert not piece["fully_in_frame"] and piece["cut_frames"] == 9, piece


def test_a_missing_object_is_not_in_frame_and_scores_average_over_objects():
    inside = _square_video([20] * 9)
    caption = (
        "A large red square stays still. A small blue circle stays still. The background is black."
    )
    result = framing_video(inside, caption)
    assert [o["fully_in_frame"] for o in result["objects"]] == [True, False]
    assert result["objects"][1]["inside_frames"] == 0 and result["fully_in_frame"] == 0.5
    one = "A large red square stays still. The background is black."
    scores = framing_scores([inside, inside], [caption, one])
    assert scores["fully_in_frame"] == pytest.approx(2 / 3) and scores["all_in_frame"] == 0.5


# ---- Bad input ----


def test_rejects_bad_input():
    example = ShapesSource(1, 9, 32, 64)[0]
    video, caption = example["video"], example["caption"]
    with pytest.raises(ValueError, match="uint8"):
        framing_video(video.astype(np.float32), caption)
    with pytest.raises(ValueError, match="uint8"):
        framing_video(video[0], caption)  # one frame without its time axis
    with pytest.raises(ValueError, match="grammar"):
        framing_video(video, "a red thing")
    with pytest.raises(ValueError, match="one caption per video"):
        framing_scores([video], [])
