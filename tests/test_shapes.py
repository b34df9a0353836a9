"""Tests for the Shapes world: determinism, exact captions, geometry checked from pixels, errors."""

import json

import chex
import grain
import numpy as np
import pytest

from soraj.data import shapes
from soraj.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    ShapeObject,
    ShapesScene,
    ShapesSource,
)

SIZES_TO_CHECK = [(9, 32, 32), (17, 64, 64), (9, 48, 80), (9, 80, 48), (5, 16, 16)]


def _scenes(num, num_frames=9, split="all", seed=0):
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng, num_frames, split) for _ in range(num)]


def _coverage(video, colour, background):
    """Fraction of each pixel covered by `colour` over `background`, read back from the pixels."""
    axis = np.array(colour, np.float64) - background
    return (video.astype(np.float64) - background) @ axis / (axis @ axis)  # (T, H, W)


# ---- Determinism ----


def test_same_clip_is_identical_bytes_and_indices_differ():
    source = ShapesSource(num_clips=20, num_frames=9, height=32, width=32, seed=3)
    first, again = source[7], source[7]
    fresh = ShapesSource(num_clips=20, num_frames=9, height=32, width=32, seed=3)[7]
    for other in (again, fresh):
        assert first["video"].tobytes() == other["video"].tobytes()
        assert first["caption"] == other["caption"] and first["index"] == other["index"] == 7
    videos = [source[i]["video"].tobytes() for i in range(10)]
    assert len(set(videos)) == 10
    other_seed = ShapesSource(num_clips=20, num_frames=9, height=32, width=32, seed=4)[7]
    assert other_seed["video"].tobytes() != first["video"].tobytes()


def test_source_is_a_grain_source_with_the_example_contract():
    source = ShapesSource(num_clips=5, num_frames=9, height=48, width=80, seed=1)
    assert isinstance(source, grain.sources.RandomAccessDataSource) and len(source) == 5
    example = grain.MapDataset.source(source)[2]
    chex.assert_shape(example["video"], (9, 48, 80, 3))
    assert example["video"].dtype == np.uint8
    scene = shapes.parse_dense_caption(example["caption"])
    assert json.loads(example["structured"]) == shapes.structured_caption(scene)
    assert example["short_caption"] == shapes.short_caption(scene)
    assert source[-1]["index"] == 4
    with pytest.raises(IndexError, match="out of range"):
        source[5]


# ---- Captions ----


def test_captions_of_a_hand_built_scene():
    scene = ShapesScene(
        objects=(
            ShapeObject(colour="red", shape="circle", size="large", motion="moves to the left"),
            ShapeObject(colour="blue", shape="square", size="small", motion="stays still"),
        ),
        background="black",
    )
    assert shapes.dense_caption(scene) == (
        "A large red circle moves to the left. A small blue square stays still. "
        "The background is black."
    )
    assert shapes.short_caption(scene) == "red circle and blue square"
    assert shapes.structured_caption(scene) == {
        "background": "black",
        "objects": [
            {"colour": "red", "shape": "circle", "size": "large", "motion": "moves to the left"},
            {"colour": "blue", "shape": "square", "size": "small", "motion": "stays still"},
        ],
    }
    single = ShapesScene(objects=scene.objects[:1], background="gray")
    assert shapes.short_caption(single) == "red circle"
    assert shapes.dense_caption(single) == (
        "A large red circle moves to the left. The background is gray."
    )


def test_parse_inverts_dense_caption():
    scenes = _scenes(300, num_frames=9) + _scenes(50, num_frames=1, seed=1)
    for scene in scenes:
        assert shapes.parse_dense_caption(shapes.dense_caption(scene)) == scene


@pytest.mark.parametrize(
    "text",
    [
        "A large red circle moves left. The background is black.",
        "A huge red circle stays still. The background is black.",
        "A large red circle stays still.",
        "The background is black.",
        "A large red circle stays still. The background is pink.",
        "A large red circle stays still. A small red square moves up. The background is gray.",
        "A small red circle stays still. A small blue square stays still. A small green "
        "triangle stays still. The background is gray.",
    ],
)
def test_parse_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match="grammar|distinct|1 or 2"):
        shapes.parse_dense_caption(text)


# ---- Splits ----


def test_splits_keep_held_out_pairs_apart():
    def pairs(scene):
        return {(obj.colour, obj.shape) for obj in scene.objects}

    assert all(not pairs(scene) & HELD_OUT_PAIRS for scene in _scenes(500, split="train"))
    assert all(pairs(scene) & HELD_OUT_PAIRS for scene in _scenes(500, split="heldout"))
    mixed = [bool(pairs(scene) & HELD_OUT_PAIRS) for scene in _scenes(500, split="all")]
    assert any(mixed) and not all(mixed)
    assert all(len({o.colour for o in s.objects}) == len(s.objects) for s in _scenes(500))


def test_held_out_prompts_are_deterministic_heldout_captions():
    prompts = shapes.split_prompts("heldout", n=20, seed=5)
    assert prompts == shapes.split_prompts("heldout", n=20, seed=5) and len(prompts) == 20
    assert prompts != shapes.split_prompts("heldout", n=20, seed=6)
    for prompt in prompts:
        scene = shapes.parse_dense_caption(prompt)
        assert {(o.colour, o.shape) for o in scene.objects} & HELD_OUT_PAIRS
    for prompt in shapes.split_prompts("train", n=20):
        scene = shapes.parse_dense_caption(prompt)
        assert not {(o.colour, o.shape) for o in scene.objects} & HELD_OUT_PAIRS


# ---- Geometry, read back from pixels ----


@pytest.mark.parametrize("num_frames, height, width", SIZES_TO_CHECK)
def test_rendered_pixels_match_the_scene(num_frames, height, width):
    source = ShapesSource(40, num_frames, height, width, seed=11, split="all")
    for index in range(len(source)):
        example = source[index]
        video, scene = example["video"], shapes.parse_dense_caption(example["caption"])
        chex.assert_shape(video, (num_frames, height, width, 3))
        background = np.array(BACKGROUNDS[scene.background])
        # Every frame's border is pure background: objects stay fully inside the frame.
        border = np.concatenate(
            [video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1
        )  # (T, 2H + 2W, 3)
        assert np.all(border == background)
        # Every pixel mixes the background with the captioned colours and nothing else.
        axes = np.array([COLOURS[obj.colour] for obj in scene.objects], np.float64) - background
        offsets = video.reshape(-1, 3) - background  # (T*H*W, 3)
        weights = np.linalg.lstsq(axes.T, offsets.T, rcond=None)[0]  # (O, T*H*W)
        residual = np.abs(axes.T @ weights - offsets.T).max()
        assert residual <= 1.0 and weights.min() >= -0.01 and weights.sum(0).max() <= 1.01
        for obj in scene.objects:
            solid = np.all(video == COLOURS[obj.colour], axis=-1)  # (T, H, W)
            assert solid.any(axis=(1, 2)).all()


def _supersampled(shape, centre, extent, height, width, factor=16):
    """Coverage (H, W) by counting a factor x factor grid of point samples inside the shape."""
    offsets = (np.arange(factor) + 0.5) / factor
    ys = (np.arange(height)[:, None] + offsets).reshape(-1) - centre[0]
    xs = (np.arange(width)[:, None] + offsets).reshape(-1) - centre[1]
    dy, dx, half = ys[:, None], xs[None, :], extent / 2
    if shape == "circle":
        inside = dy**2 + dx**2 <= half**2
    elif shape == "square":
        inside = (np.abs(dy) <= half) & (np.abs(dx) <= half)
    else:  # apex up at (-half, 0), base from (half, -half) to (half, half)
        inside = (dy <= half) & (2 * np.abs(dx) <= dy + half)
    return inside.reshape(height, factor, width, factor).mean(axis=(1, 3))


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("size", ["small", "large"])
def test_rendering_matches_a_supersampled_rasteriser(shape, size):
    height, width = 32, 48
    scene = ShapesScene((ShapeObject("green", shape, size, "moves to the right"),), "gray")
    tracks = np.array([[[13.3, 12.7], [13.3, 20.15], [13.3, 27.6]]])  # (O, T, 2) as (y, x)
    video = shapes.render_tracks(scene, tracks, height, width)
    chex.assert_shape(video, (3, height, width, 3))
    extent = shapes.SIZES[size] * min(height, width)
    colour, background = np.array(COLOURS["green"]), np.array(BACKGROUNDS["gray"])
    for frame, centre in enumerate(tracks[0]):
        reference = _supersampled(shape, centre, extent, height, width)
        expected = background + reference[..., None] * (colour - background)  # (H, W, 3)
        # Analytic edge coverage differs from the exact box filter by < 0.16 at vertices only.
        tolerance = 0.16 * np.abs(colour - background).max() + 0.5
        np.testing.assert_allclose(video[frame], expected, atol=tolerance)
        covered = _coverage(video[frame], colour, background).sum()
        np.testing.assert_allclose(covered, reference.sum(), rtol=0.02)


def _single_object_examples(num_frames, height, width, num=60):
    source = ShapesSource(num, num_frames, height, width, seed=2, split="all")
    for index in range(num):
        example = source[index]
        scene = shapes.parse_dense_caption(example["caption"])
        if len(scene.objects) == 1:
            yield example["video"], scene


@pytest.mark.parametrize("num_frames, height, width", [(9, 32, 32), (17, 64, 64), (9, 48, 80)])
def test_motion_and_area_from_pixels(num_frames, height, width):
    checked = 0
    for video, scene in _single_object_examples(num_frames, height, width):
        (obj,) = scene.objects
        coverage = _coverage(video, COLOURS[obj.colour], np.array(BACKGROUNDS[scene.background]))
        # Anti-aliased area matches the closed-form area of the shape.
        extent = shapes.SIZES[obj.size] * min(height, width)
        exact_area = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[obj.shape] * extent**2
        np.testing.assert_allclose(coverage.sum(axis=(1, 2)), exact_area, rtol=0.02)
        assert np.any((coverage > 0.05) & (coverage < 0.95)), "edges should be anti-aliased"
        rows, cols = np.arange(height) + 0.5, np.arange(width) + 0.5
        mass = coverage.sum(axis=(1, 2))
        centre = np.stack(
            [coverage.sum(axis=2) @ rows / mass, coverage.sum(axis=1) @ cols / mass], axis=-1
        )  # (T, 2) as (y, x)
        shift = (centre[-1] - centre[0]) / np.array([height, width])
        expected = np.array(shapes.MOTION_DIRECTIONS[obj.motion])
        along = float(np.abs(expected) @ shift) * (expected.sum() or 1)
        if obj.motion == "stays still":
            np.testing.assert_allclose(shift, 0.0, atol=0.01)
        else:
            assert 0.3 - 0.01 <= along <= 0.6 + 0.01, (obj.motion, shift)
            np.testing.assert_allclose(shift[expected == 0], 0.0, atol=0.01)
            # Constant velocity: centroid steps are equal.
            np.testing.assert_allclose(np.diff(centre, 2, axis=0), 0.0, atol=0.15)
        checked += 1
    assert checked >= 15


def test_two_object_tracks_are_inside_and_mostly_apart():
    rng = np.random.default_rng(0)
    clean = total = 0
    for _ in range(200):
        scene = shapes.sample_scene(rng, 9, "all")
        tracks = shapes.sample_tracks(scene, 9, 48, 80, rng)  # (O, T, 2)
        halves = np.array([shapes.SIZES[o.size] * 48 / 2 for o in scene.objects])
        low, high = tracks - halves[:, None, None], tracks + halves[:, None, None]
        assert np.all(low >= 1.0 - 1e-9) and np.all(high <= np.array([48, 80]) - 1.0 + 1e-9)
        if len(scene.objects) == 2:
            total += 1
            apart = np.any(np.abs(tracks[0] - tracks[1]) >= halves.sum(), axis=-1)  # (T,)
            clean += bool(apart.all())
    assert clean == total  # a 48 x 80 canvas always has room for two clean tracks


def test_one_frame_clips_are_still_images():
    source = ShapesSource(30, 1, 32, 32, seed=0, split="all")
    for index in range(len(source)):
        example = source[index]
        chex.assert_shape(example["video"], (1, 32, 32, 3))
        scene = shapes.parse_dense_caption(example["caption"])
        assert all(obj.motion == "stays still" for obj in scene.objects)


# ---- Bad input ----


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=15), "height"),
        (dict(width=8), "width"),
        (dict(num_frames=0), "num_frames"),
        (dict(num_clips=0), "num_clips"),
        (dict(split="test"), "split"),
        (dict(seed=-1), "seed"),
    ],
)
def test_source_rejects_bad_arguments(kwargs, message):
    arguments = dict(num_clips=4, num_frames=9, height=32, width=32, seed=0, split="train")
    with pytest.raises(ValueError, match=message):
        ShapesSource(**{**arguments, **kwargs})


def test_scene_and_render_reject_bad_input():
    with pytest.raises(ValueError, match="colour"):
        ShapeObject(colour="pink", shape="circle", size="small", motion="stays still")
    with pytest.raises(ValueError, match="split"):
        shapes.sample_scene(np.random.default_rng(0), 9, "validation")
    moving = shapes.parse_dense_caption("A small red square moves up. The background is gray.")
    with pytest.raises(ValueError, match="1-frame"):
        shapes.render_scene(moving, 1, 32, 32, np.random.default_rng(0))
