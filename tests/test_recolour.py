"""Recolouring augmentation: the same clip in other colours, held-out pairs kept out, colour
words left unscored."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.data import shapes
from soraj.data.shapes import BACKGROUNDS, COLOURS, HELD_OUT_PAIRS, ShapeObject, ShapesScene
from soraj.data.shapes_recolour import (
    MIN_BACKGROUND_DISTANCE,
    MIN_OBJECT_DISTANCE,
    nearest_palette_colour,
    random_object_colours,
)


def test_recoloured_clip_has_the_same_coverage_in_the_new_colour():
    scene, tracks = shapes.clip_scene_tracks(0, 5, 9, 32, 32, "train")
    palette = shapes.render_tracks(scene, tracks, 32, 32).astype(np.float64)
    np.testing.assert_array_equal(palette, shapes.clip_item(0, 5, 9, 32, 32, "train")["video"])
    solo = ShapesScene(scene.objects[:1], scene.background)
    colour = np.array([30.0, 250.0, 140.0])
    background = np.array(BACKGROUNDS[scene.background], np.float64)
    recoloured = shapes.render_tracks(solo, tracks[:1], 32, 32, colour[None])
    original = shapes.render_tracks(solo, tracks[:1], 32, 32)
    # Each pixel is background + alpha·(colour − background); alpha must not change.
    alpha_new = (
        (recoloured - background) @ (colour - background) / np.sum((colour - background) ** 2)
    )
    old_axis = np.array(COLOURS[solo.objects[0].colour], np.float64) - background
    alpha_old = (original - background) @ old_axis / np.sum(old_axis**2)
    np.testing.assert_allclose(alpha_new, alpha_old, atol=0.02)
    assert np.all(recoloured[alpha_new > 0.999] == np.rint(colour).astype(np.uint8))


def test_render_rejects_a_colour_count_that_is_not_one_per_object():
    scene, tracks = shapes.clip_scene_tracks(0, 5, 9, 32, 32, "train")
    with pytest.raises(ValueError, match="one per object"):
        shapes.render_tracks(scene, tracks, 32, 32, np.zeros((len(scene.objects) + 1, 3)))


def test_nearest_palette_colour_of_the_palette_is_itself():
    for name, rgb in COLOURS.items():
        assert nearest_palette_colour(rgb) == name
    assert nearest_palette_colour((160, 70, 190)) == "purple"


def test_random_colours_keep_held_out_pairs_out_and_objects_visible():
    rng = np.random.default_rng(0)
    named = {shape: set() for shape in shapes.SHAPES}
    for i in range(600):
        shape = shapes.SHAPES[i % 3]
        background = tuple(BACKGROUNDS)[i % 2]
        objects = (
            ShapeObject("red", shape, "small", "moves up"),
            ShapeObject("blue", shapes.SHAPES[(i + 1) % 3], "large", "stays still"),
        )
        colours = random_object_colours(ShapesScene(objects, background), rng).astype(np.float64)
        assert colours.shape == (2, 3)
        assert np.linalg.norm(colours[0] - colours[1]) >= MIN_OBJECT_DISTANCE
        for obj, colour in zip(objects, colours, strict=True):
            name = nearest_palette_colour(colour)
            assert (name, obj.shape) not in HELD_OUT_PAIRS
            assert np.linalg.norm(colour - BACKGROUNDS[background]) >= MIN_BACKGROUND_DISTANCE
            named[obj.shape].add(name)
    # Every shape is drawn near every palette colour it is allowed with, not only its own few.
    for shape, names in named.items():
        allowed = {c for c in COLOURS if (c, shape) not in HELD_OUT_PAIRS}
        assert names == allowed, shape


def test_word_positions_mark_every_piece_of_a_word_in_any_casing():
    from soraj.captions.vocab import CaptionVocab

    captions = ["A small cyan square moves up. The background is black.", "RED box, not redder"]
    vocab = CaptionVocab.from_captions(captions)
    first = vocab.word_positions(captions[0], list(COLOURS), 24)
    tokens = vocab.encode(captions[:1], ["dense"], 24)[0]
    marked = [vocab.wordpiece_ids[i] for i in tokens[first]]
    assert vocab._tokenizer.decode(marked) == "cyan" and first.sum() >= 2  # "cy", "##an"
    second = vocab.word_positions(captions[1], list(COLOURS), 24)
    assert np.flatnonzero(second).tolist() == [2]  # "RED" only: "redder" is another word


def test_unscored_pieces_have_no_loss_and_are_read_as_unknown():
    from soraj.captions.captioner import CaptionerConfig, CaptionModel, caption_loss
    from soraj.captions.vocab import UNK_ID

    config = CaptionerConfig(
        frames=3, height=16, width=16, tubelet=(3, 8, 8), model_width=16, encoder_depth=1,
        decoder_depth=1, num_heads=2, max_length=8, vocab_size=12,
    )  # fmt: skip
    model = CaptionModel(config)
    video = jax.random.uniform(jax.random.key(0), (2, 3, 16, 16, 3), minval=-1, maxval=1)
    tokens = jnp.array([[1, 4, 7, 8, 9, 2, 0, 0], [1, 5, 10, 11, 2, 0, 0, 0]], jnp.int32)
    unscored = jnp.zeros(tokens.shape, bool).at[0, 3].set(True).at[1, 2].set(True)
    params = model.init(jax.random.key(1), video, tokens[:, :-1])["params"]
    loss = caption_loss(params, model, video, tokens, unscored=unscored)
    # Naive reference: feed UNK by hand, average −log p over the scored targets only.
    fed = np.array(tokens[:, :-1])
    fed[0, 3], fed[1, 2] = UNK_ID, UNK_ID
    log_p = np.asarray(jax.nn.log_softmax(model.apply({"params": params}, video, fed)))
    # Targets are tokens[:, 1:]: the mode target (j = 0), PAD and the unscored ones drop out.
    scored = [(0, 1), (0, 3), (0, 4), (1, 2), (1, 3)]
    expected = -np.mean([log_p[b, j, int(tokens[b, j + 1])] for b, j in scored])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_form_stem_sees_shape_but_not_colour_or_background():
    from soraj.captions.captioner import FormStem

    tracks = np.array([[[15.3, 16.2]]])  # (O, T, 2): one still object off the pixel grid

    def frame(colour, shape, background="black"):
        scene = ShapesScene((ShapeObject("red", shape, "large", "stays still"),), background)
        video = shapes.render_tracks(scene, tracks, 32, 32, np.array([colour], np.float32))
        return video[0].astype(np.float32) / 127.5 - 1.0  # (H, W, 3)

    purple, red, white = (150, 60, 200), (220, 40, 40), (240, 240, 240)
    frames = jnp.stack(
        [
            frame(purple, "triangle"),
            frame(red, "triangle"),
            frame(white, "triangle", "gray"),
            frame(purple, "circle"),
            frame(purple, "square"),
        ]
    )
    stem = FormStem(16)
    form = np.asarray(stem.apply(stem.init(jax.random.key(0), frames), frames))

    def distance(i, j):
        return np.abs(form[i] - form[j]).mean()

    same_shape = max(distance(0, 1), distance(0, 2))
    other_shape = min(distance(0, 3), distance(0, 4))
    # Rounding to uint8 and the flat-pixel epsilon leave a trace of colour; shape is 20× more.
    assert same_shape * 20 < other_shape, (same_shape, other_shape)
