"""Tests for soraj.data.tfds_shapes: the ArrayRecord dataset holds exactly ShapesSource's clips."""

import json
import pathlib
import sys

import chex
import numpy as np
import pytest
import tensorflow_datasets as tfds

from soraj.data.shapes import ShapesSource
from soraj.data.tfds_shapes import (
    VALIDATION_SEED_OFFSET,
    load_shapes_dataset,
    make_shapes_dataset,
)

NUM_CLIPS, NUM_VALIDATION, NUM_FRAMES, HEIGHT, WIDTH, SEED = 8, 3, 3, 16, 16, 5


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return make_shapes_dataset(
        data_dir, NUM_CLIPS, NUM_FRAMES, HEIGHT, WIDTH, seed=SEED, num_validation=NUM_VALIDATION
    )


def assert_items_equal(item, reference):
    assert item["video"].dtype == np.uint8
    chex.assert_shape(item["video"], (NUM_FRAMES, HEIGHT, WIDTH, 3))
    np.testing.assert_array_equal(item["video"], reference["video"])
    for key in ("caption", "caption_original", "short_caption", "structured", "index"):
        assert item[key] == reference[key], key


def test_train_split_equals_shapes_source_byte_for_byte(dataset_path):
    reference = ShapesSource(NUM_CLIPS, NUM_FRAMES, HEIGHT, WIDTH, seed=SEED)
    train = load_shapes_dataset(dataset_path, "train")
    assert len(train) == NUM_CLIPS
    for index in range(NUM_CLIPS):
        assert_items_equal(train[index], reference[index])


def test_validation_split_uses_its_own_seed(dataset_path):
    reference = ShapesSource(
        NUM_VALIDATION, NUM_FRAMES, HEIGHT, WIDTH, seed=SEED + VALIDATION_SEED_OFFSET
    )
    validation = load_shapes_dataset(dataset_path, "validation")
    assert len(validation) == NUM_VALIDATION
    for index in range(NUM_VALIDATION):
        assert_items_equal(validation[index], reference[index])
    train_first = ShapesSource(NUM_CLIPS, NUM_FRAMES, HEIGHT, WIDTH, seed=SEED)[0]
    assert not np.array_equal(validation[0]["video"], train_first["video"])


def test_plain_tfds_data_source_reads_it(dataset_path):
    """Anyone with TFDS reads the files by name, as bytes, without soraj's wrapper."""
    data_dir, config = pathlib.Path(dataset_path).parents[2], pathlib.Path(dataset_path).parent.name
    source = tfds.data_source(f"soraj_shapes/{config}", data_dir=data_dir, split="train")
    reference = ShapesSource(NUM_CLIPS, NUM_FRAMES, HEIGHT, WIDTH, seed=SEED)[2]
    record = source[2]
    np.testing.assert_array_equal(record["video"], reference["video"])
    assert record["caption"] == reference["caption"].encode("utf-8")
    assert record["caption_original"] == reference["caption_original"].encode("utf-8")
    assert json.loads(record["structured"]) == json.loads(reference["structured"])


def test_load_finds_the_only_dataset_under_its_root(dataset_path):
    root = pathlib.Path(dataset_path).parents[2]  # <root>/soraj_shapes/<config>/<version>
    assert len(load_shapes_dataset(root, "validation")) == NUM_VALIDATION


def test_tensorflow_is_not_needed():
    assert "tensorflow" not in sys.modules


def test_bad_arguments_raise(dataset_path, tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        load_shapes_dataset(dataset_path, "test")
    with pytest.raises(ValueError, match="exactly one built Shapes dataset"):
        load_shapes_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="num_clips"):
        make_shapes_dataset(tmp_path, 0, NUM_FRAMES, HEIGHT, WIDTH)
    with pytest.raises(ValueError, match="height"):
        make_shapes_dataset(tmp_path, 4, NUM_FRAMES, 4, WIDTH)
    assert not any(tmp_path.iterdir())  # nothing written before the arguments were checked
