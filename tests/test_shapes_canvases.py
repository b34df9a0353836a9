"""Tests for ShapesCanvasSource: canvas assignment, determinism, and framing read from pixels."""

import json

import grain
import numpy as np
import pytest

from soraj.data import shapes
from soraj.data.shapes import BACKGROUNDS, COLOURS, ShapesSource
from soraj.data.shapes_canvases import ShapesCanvasSource

WIDE_TALL_SQUARE = ((32, 64), (64, 32), (32, 32))


# ---- Assignment and determinism ----


def test_clip_i_takes_canvas_i_mod_n_and_has_the_example_contract():
    source = ShapesCanvasSource(7, WIDE_TALL_SQUARE, num_frames=5, seed=2)
    assert isinstance(source, grain.sources.RandomAccessDataSource) and len(source) == 7
    dataset = grain.MapDataset.source(source)
    for index in range(7):
        example = dataset[index]
        height, width = WIDE_TALL_SQUARE[index % 3]
        assert example["video"].shape == (5, height, width, 3)
        assert example["video"].dtype == np.uint8 and example["index"] == index
        assert source.canvas(index) == (height, width)
        scene = shapes.parse_dense_caption(example["caption"])
        assert example["short_caption"] == shapes.short_caption(scene)
        assert json.loads(example["structured"]) == shapes.structured_caption(scene)
    assert source[-1]["index"] == 6 and source.canvas(-1) == WIDE_TALL_SQUARE[0]


def test_same_clip_is_identical_and_one_canvas_equals_shapes_source():
    source = ShapesCanvasSource(12, WIDE_TALL_SQUARE, num_frames=9, seed=5)
    fresh = ShapesCanvasSource(12, WIDE_TALL_SQUARE, num_frames=9, seed=5)
    for index in (0, 4, 11):
        assert source[index]["video"].tobytes() == fresh[index]["video"].tobytes()
        assert source[index]["caption"] == fresh[index]["caption"]
    other_seed = ShapesCanvasSource(12, WIDE_TALL_SQUARE, num_frames=9, seed=6)
    assert other_seed[4]["video"].tobytes() != source[4]["video"].tobytes()
    # A single canvas reproduces ShapesSource clip for clip (same draws from (seed, i)).
    for height, width in ((32, 64), (64, 32)):
        single = ShapesCanvasSource(6, ((height, width),), num_frames=9, seed=5, split="all")
        reference = ShapesSource(6, 9, height, width, seed=5, split="all")
        for index in range(6):
            assert single[index]["video"].tobytes() == reference[index]["video"].tobytes()
            assert single[index]["caption"] == reference[index]["caption"]


# ---- Framing, read back from pixels ----


def _coverage(video, colour, background):
    """Fraction of each pixel covered by `colour` over `background`, from the pixels alone."""
    axis = np.array(colour, np.float64) - background
    return (video.astype(np.float64) - background) @ axis / (axis @ axis)  # (T, H, W)


@pytest.mark.parametrize("canvas", [(32, 64), (64, 32), (32, 96), (96, 40)])
def test_objects_are_whole_inside_every_frame_and_move_along_the_canvas(canvas):
    height, width = canvas
    source = ShapesCanvasSource(60, (canvas,), num_frames=9, seed=3, split="all")
    single = 0
    for index in range(len(source)):
        example = source[index]
        video, scene = example["video"], shapes.parse_dense_caption(example["caption"])
        background = np.array(BACKGROUNDS[scene.background])
        # The outermost ring of every frame is pure background: nothing touches the edge.
        ring = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], 1)
        assert np.all(ring == background), (canvas, index)
        if len(scene.objects) != 1:
            continue
        single += 1
        (obj,) = scene.objects
        coverage = _coverage(video, COLOURS[obj.colour], background)  # (T, H, W)
        # Whole in every frame: the covered area is the closed-form area of the shape whose
        # side is its fraction of the canvas's shorter side.
        side = shapes.SIZES[obj.size] * min(height, width)
        area = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[obj.shape] * side**2
        np.testing.assert_allclose(coverage.sum(axis=(1, 2)), area, rtol=0.02)
        # Motion: 0.3 to 0.6 of the canvas along the motion axis, none across it.
        rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
        mass = coverage.sum(axis=(1, 2))
        centre = np.stack(
            [coverage.sum(axis=2) @ rows / mass, coverage.sum(axis=1) @ cols / mass], axis=-1
        )  # (T, 2) as (y, x)
        shift = (centre[-1] - centre[0]) / np.array([height, width])
        step = np.array(shapes.MOTION_DIRECTIONS[obj.motion])
        np.testing.assert_allclose(shift[step == 0], 0.0, atol=0.01)
        if step.any():
            along = float(shift[step != 0][0] * step[step != 0][0])
            assert 0.3 - 0.01 <= along <= 0.6 + 0.01, (canvas, obj.motion, shift)
    assert single >= 20


# ---- Bad input ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(canvases=()), "canvases"),
        (dict(canvases=(32, 64)), "canvases"),
        (dict(canvases=((32, 64, 3),)), "canvases"),
        (dict(canvases=((32, 8),)), "canvases"),
        (dict(canvases=((32.0, 64),)), "canvases"),
        (dict(canvases="32x64"), "canvases"),
        (dict(num_clips=0), "num_clips"),
        (dict(num_frames=0), "num_frames"),
        (dict(seed=-1), "seed"),
        (dict(split="test"), "split"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    arguments = dict(num_clips=4, canvases=((32, 64),), num_frames=9, seed=0, split="train")
    with pytest.raises(ValueError, match=message):
        ShapesCanvasSource(**{**arguments, **kwargs})


def test_rejects_bad_indices():
    source = ShapesCanvasSource(3, ((32, 64),), num_frames=9)
    with pytest.raises(IndexError, match="out of range"):
        source[3]
    with pytest.raises(TypeError, match="integer"):
        source[1.0]
