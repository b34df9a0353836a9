"""The captioner's fine-tuning examples: labelled captions name a clip's objects left to right
in the first frame of the video it is shown, after mirroring and playing backwards."""

import numpy as np
import pytest

from soraj.captions.train_captioner import (
    CaptionExamples,
    corpus_captions,
    labelled_indices,
    train_and_evaluate,
    training_source,
)
from soraj.captions.vocab import CaptionVocab
from soraj.configs.captioner import get_config
from soraj.data.shapes import COLOURS, parse_dense_caption


def config_for_examples():
    config = get_config("tiny")
    config.data.num_clips = 400
    config.data.recolour_share = 0.0  # objects in their named colours, to be found by colour
    config.data.finetune_original_share = 0.0
    return config


def mean_x_of_colour(frame: np.ndarray, colour: str) -> float:
    """Mean column of the pixels within a small distance of the palette colour."""
    distance = np.abs(frame.astype(int) - np.array(COLOURS[colour])).sum(-1)  # (H, W)
    _, columns = np.nonzero(distance < 30)
    return float(columns.mean())


def first_frame_order_of_dense_examples(config, count: int) -> list[bool]:
    """For `count` two-object dense examples: is the first-named object left of the second in
    the first frame the captioner is shown (object centres found by their palette colour)?"""
    source, labelled = training_source(config), labelled_indices(config)
    vocab = CaptionVocab.from_captions(corpus_captions(config))
    examples = CaptionExamples(config, "finetune", vocab, source, labelled)
    rng, in_order = np.random.default_rng(0), []
    while len(in_order) < count:
        example = examples(source[0], rng)
        caption = vocab.decode(example["tokens"][None])[0]
        if not caption.startswith("A "):
            continue  # a short caption
        scene = parse_dense_caption(caption)
        if len(scene.objects) == 2:
            first, second = (mean_x_of_colour(example["video"][0], o.colour) for o in scene.objects)
            in_order.append(first <= second + 1.0)  # centres may tie within a pixel
    return in_order


def test_dense_captions_name_objects_left_to_right_in_the_first_frame():
    assert all(first_frame_order_of_dense_examples(config_for_examples(), 40))
    # The check can fail: in the order the scene drew them, objects are often right to left.
    config = config_for_examples()
    config.data.object_order = "scene"
    assert not all(first_frame_order_of_dense_examples(config, 40))


def test_unknown_object_order_is_refused_before_training(tmp_path):
    config = config_for_examples()
    config.data.object_order = "random"
    with pytest.raises(ValueError, match="allowed: reading, scene"):
        train_and_evaluate(config, tmp_path)
    assert not any(tmp_path.iterdir())
