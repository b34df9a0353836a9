"""Web-style original captions of Shapes clips: deterministic, and each odds field honoured."""

import numpy as np
import pytest

from soraj.data.shapes import COLOURS, SHAPES, ShapesSource, parse_dense_caption, sample_scene
from soraj.data.shapes_alt_text import (
    BACKGROUND_WORDS,
    IRRELEVANT,
    SHAPE_WORDS,
    AltTextNoise,
    is_labelled,
    main_object,
    original_caption,
)

N = 2000


def scenes(n=N, seed=3):
    return [sample_scene(np.random.default_rng((seed, i)), 9, "train") for i in range(n)]


def binomial_bound(p, n):
    """Four standard deviations of a mean of n Bernoulli(p) draws."""
    return 4 * np.sqrt(p * (1 - p) / n) + 1e-9


def test_deterministic_in_seed_and_index():
    source = ShapesSource(8, 9, 32, 32, seed=5)
    again = ShapesSource(8, 9, 32, 32, seed=5)
    assert [source[i]["caption_original"] for i in range(8)] == [
        again[i]["caption_original"] for i in range(8)
    ]
    other = ShapesSource(8, 9, 32, 32, seed=6)
    assert [source[i]["caption_original"] for i in range(8)] != [
        other[i]["caption_original"] for i in range(8)
    ]


def test_background_odds_and_irrelevant_share():
    noise = AltTextNoise(background=0.4, irrelevant=0.1, casing=0.0, filler=0.0)
    captions = [original_caption(s, 0, i, noise) for i, s in enumerate(scenes())]
    irrelevant = np.mean([c in IRRELEVANT for c in captions])  # returned as they are
    assert abs(irrelevant - 0.1) < binomial_bound(0.1, N)
    relevant = [(c, s) for c, s in zip(captions, scenes(), strict=True) if c not in IRRELEVANT]
    named = np.mean([any(w in c for w in BACKGROUND_WORDS[s.background]) for c, s in relevant])
    assert abs(named - 0.4) < binomial_bound(0.4, len(relevant))


def test_wrong_colour_rate():
    """With the colour always named and no second object, the first palette colour named is
    the main object's unless it was replaced: that happens at the wrong_colour odds."""
    noise = AltTextNoise(colour=1.0, second=0.0, wrong_colour=0.25, irrelevant=0.0, casing=0.0)
    wrong = []
    for i, scene in enumerate(scenes()):
        caption = original_caption(scene, 0, i, noise)
        named = [c for c in COLOURS if f" {c} " in f" {caption} "]
        assert len(named) == 1, caption
        wrong.append(named[0] != main_object(scene).colour)
    assert abs(np.mean(wrong) - 0.25) < binomial_bound(0.25, N)


def test_every_relevant_caption_names_the_main_shape():
    noise = AltTextNoise(irrelevant=0.0, casing=0.0)
    for i, scene in enumerate(scenes(300)):
        caption = original_caption(scene, 0, i, noise)
        assert any(w in caption for w in SHAPE_WORDS[main_object(scene).shape]), caption
        assert caption  # never empty


def test_original_captions_are_not_dense_captions():
    source = ShapesSource(50, 9, 32, 32)
    for i in range(50):
        with pytest.raises(ValueError):
            parse_dense_caption(source[i]["caption_original"])


def test_labelled_subset_size_and_limit():
    chosen = np.mean([is_labelled(0, i, 0.05) for i in range(N)])
    assert abs(chosen - 0.05) < binomial_bound(0.05, N)
    with pytest.raises(ValueError, match=r"\[0, 0.05\]"):
        is_labelled(0, 1, 0.2)
    with pytest.raises(ValueError, match="alt-text odds second"):
        AltTextNoise(second=1.5)
    assert set(SHAPE_WORDS) == set(SHAPES)
