"""The DiT trainer reads prepared datasets: the Shapes TFDS dataset of `soraj make-dataset` and a
`soraj recaption` folder (captions.jsonl written here by hand), with the caption mix over their
fields; and the default text length holds the longest dense Shapes caption whole."""

import itertools
import json
import pickle

import numpy as np
import pytest

from soraj import exports, sharding
from soraj.configs import t2v
from soraj.data.caption_versions import RecaptionedSource
from soraj.data.packed_pipeline import caption_from_bytes
from soraj.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    FPS,
    MOTIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    ShapesScene,
    ShapesSource,
    dense_caption,
)
from soraj.data.tfds_shapes import load_shapes_dataset, make_shapes_dataset
from soraj.data.video_io import read_video, write_mp4
from soraj.dit_data import training_data
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec

VAE_DIR = "experiments/shapes/checkpoint/vae"  # the shipped tiny VAE: ft = fs = 4
SHIPPED_DIT = "experiments/shapes/checkpoint/dit"
TRAIN_RECORDS = (3, 0, 5)
SEP_ID = 102  # MiniLM's (BERT uncased) [SEP]  # recaption keeps input order; any order must work


@pytest.fixture(scope="module")
def shapes_tfds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tfds")
    return make_shapes_dataset(folder, 6, 9, 32, 32, seed=2, num_validation=2)


def write_recaption(folder, kind, input_path, records) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "dataset.json").write_text(json.dumps({"kind": kind, "input": str(input_path)}))
    return str(folder)


def shapes_record(index, split, original):
    return {
        "index": index,
        "split": split,
        "caption_original": original,
        "caption_dense": f"dense caption of {split} {index}.",
        "caption_short": f"short {split} {index}",
    }


@pytest.fixture(scope="module")
def recaptioned(shapes_tfds, tmp_path_factory):
    train = load_shapes_dataset(shapes_tfds, "train")
    records = [shapes_record(i, "train", train[i]["caption_original"]) for i in TRAIN_RECORDS]
    records.append(shapes_record(1, "validation", "an old caption"))
    return write_recaption(
        tmp_path_factory.mktemp("recaptioned"), "shapes_tfds", shapes_tfds, records
    )


# ---- The recaptioned Shapes dataset ----


def test_records_read_their_clip_from_the_input_dataset(recaptioned, shapes_tfds):
    source = RecaptionedSource(recaptioned, max_frames=9, split="train")
    tfds_train = load_shapes_dataset(shapes_tfds, "train")
    assert len(source) == len(TRAIN_RECORDS)
    assert source.caption_fields == (
        "caption",
        "caption_dense",
        "caption_oracle",
        "caption_original",
        "caption_short",
    )
    for position, index in enumerate(TRAIN_RECORDS):
        item, clip = source[position], tfds_train[index]
        assert item["video"].dtype == np.uint8 and item["video"].shape == (9, 32, 32, 3)
        np.testing.assert_array_equal(item["video"], clip["video"])
        assert item["caption"] == item["caption_dense"] == f"dense caption of train {index}."
        assert item["caption_oracle"] == clip["caption"]  # the exact dense caption
        assert item["caption_original"] == clip["caption_original"]
        assert item["caption_short"] == f"short train {index}"
        assert (item["index"], item["split"]) == (index, "train")


def test_split_selects_records_and_all_by_default(recaptioned):
    assert len(RecaptionedSource(recaptioned, 9)) == len(TRAIN_RECORDS) + 1
    (only,) = RecaptionedSource(recaptioned, 9, split="validation")
    assert only["caption_original"] == "an old caption"


def test_source_survives_pickling_for_grain_workers(recaptioned):
    source = RecaptionedSource(recaptioned, 9, split="train")
    source[0]  # opens a TFDS reader, which stays behind in the copy
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[1]["video"], source[1]["video"])


# ---- A recaptioned video folder ----


def test_video_folder_records_read_the_video_file(tmp_path):
    footage = tmp_path / "footage"
    footage.mkdir()
    clip = ShapesSource(1, 5, 16, 24, seed=1, split="all")[0]["video"]
    write_mp4(footage / "a.mp4", clip, FPS)
    records = [
        {"path": str(footage / "a.mp4"), "caption_original": "a", "caption_dense": "A dense."},
        {"path": "a.mp4", "caption_original": "b", "caption_dense": "B.", "caption_short": "b"},
    ]
    root = write_recaption(tmp_path / "new", "video_folder", footage, records)
    source = RecaptionedSource(root, max_frames=3)
    first, second = source[0], source[1]
    np.testing.assert_array_equal(first["video"], read_video(footage / "a.mp4", max_frames=3)[0])
    assert first["video"].shape == (3, 16, 24, 3)
    assert (first["caption"], first["caption_original"]) == ("A dense.", "a")
    assert second["path"] == str(footage / "a.mp4")  # a relative path is under the input
    assert "caption_oracle" not in source.caption_fields


# ---- Bad folders ----


def test_bad_folders_fail_with_one_clear_line(tmp_path, shapes_tfds):
    def fails(match, *records, kind="shapes_tfds", split=None, input_path=shapes_tfds):
        root = write_recaption(
            tmp_path / f"bad{len(list(tmp_path.iterdir()))}", kind, input_path, records
        )
        with pytest.raises(ValueError, match=match) as error:
            RecaptionedSource(root, 9, split)
        assert "\n" not in str(error.value)

    good = shapes_record(0, "train", "x")
    fails("unknown kind 'images'; allowed: shapes_tfds, video_folder", good, kind="images")
    fails("missing caption_dense", {k: v for k, v in good.items() if k != "caption_dense"})
    fails("missing index", {k: v for k, v in good.items() if k != "index"})
    fails("must be strings", dict(good, caption_dense=None))
    fails("indices \\[99\\] of split 'train' are outside the 6 records", dict(good, index=99))
    fails("no records of split 'validation'; it has \\['train'\\]", good, split="validation")
    fails("exactly one built Shapes dataset", good, input_path=tmp_path / "nowhere")
    fails("holds no records")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a `soraj recaption` folder: it has no dataset.json"):
        RecaptionedSource(tmp_path / "empty", 9)
    root = write_recaption(tmp_path / "broken", "shapes_tfds", shapes_tfds, [good])
    with open(f"{root}/captions.jsonl", "a") as lines:
        lines.write('{"index": 1, "split": "tr\n')  # a line cut short by a killed run
    with pytest.raises(ValueError, match="captions.jsonl:2: not a JSON line"):
        RecaptionedSource(root, 9)


# ---- The trainer reads them ----


def packed_captions(config, batches: int = 2) -> set[str]:
    config.vae_checkpoint = VAE_DIR
    config.text.encoder = "bytes"  # no MiniLM load: the captions are only read back here
    config.data.caption_dropout = 0.0
    config.data.masks.shares = (("text_to_video", 1.0),)  # masked samples drop text too
    config.batch_size = 2
    iterator, _ = training_data(
        config,
        LatentCodec.load(VAE_DIR),
        VAE_DIR,
        TextConfig(**config.text),
        config.model.patch_size,
        sharding.make_mesh(),
    )
    captions = set()
    for _ in range(batches):
        batch = next(iterator)
        used = batch["grid"][..., 0] > 0
        captions |= {caption_from_bytes(slot) for slot in batch["caption"][used]}
    return captions


def test_trainer_reads_the_recaptioned_dataset_with_a_caption_mix(recaptioned):
    config = t2v.get_config("tiny")
    config.data.update(source="recaptioned", root=recaptioned)
    config.data.caption_mix = (("caption_dense", 0.5), ("caption_original", 0.5))
    source = RecaptionedSource(recaptioned, 9, split="train")
    allowed = {
        source[i][f] for i in range(len(source)) for f in ("caption_dense", "caption_original")
    }
    seen = packed_captions(config, batches=3)
    assert seen <= allowed
    assert any(c.startswith("dense caption of train") for c in seen)
    assert seen - {source[i]["caption_dense"] for i in range(len(source))}  # some originals


def test_trainer_reads_the_shapes_tfds_dataset(shapes_tfds):
    config = t2v.get_config("tiny")
    config.data.update(source="shapes_tfds", root=shapes_tfds)
    config.data.caption_mix = (("caption_original", 1.0),)
    train = load_shapes_dataset(shapes_tfds, "train")
    assert packed_captions(config) <= {train[i]["caption_original"] for i in range(len(train))}
    config.data.split = "heldout"
    with pytest.raises(ValueError, match="allowed: train, validation"):
        packed_captions(config)
    config.data.update(split="train", root="")
    with pytest.raises(ValueError, match="needs config.data.root.*make-dataset shapes"):
        packed_captions(config)


# ---- Longer text ----


def longest_dense_caption(tokens_of) -> str:
    """The dense caption of most tokens over the whole grammar. WordPiece splits at spaces and
    punctuation first, so a caption's count is the sum of its sentences' (checked below): the
    longest pairs the two longest object sentences of distinct colours."""
    objects = [
        ShapeObject(*attributes)
        for attributes in itertools.product(COLOURS, SHAPES, SIZES, MOTIONS)
    ]
    sentence = {o: tokens_of(dense_caption(ShapesScene((o,), "black"))) for o in objects}
    first, second = max(
        ((a, b) for a, b in itertools.product(objects, objects) if a.colour != b.colour),
        key=lambda pair: sentence[pair[0]] + sentence[pair[1]],
    )
    background = max(BACKGROUNDS, key=lambda b: tokens_of(dense_caption(ShapesScene((first,), b))))
    return dense_caption(ShapesScene((first, second), background))


def test_the_longest_dense_caption_fits_the_default_text_length():
    from soraj.models.text import MiniLMEncoder

    max_tokens = t2v.get_config("tiny").text.max_tokens
    encoder = MiniLMEncoder(max_tokens=512)  # no truncation below the caption's own length

    def tokens_of(*captions):
        return encoder.tokenize(list(captions))[1].sum(1)  # [CLS] and [SEP] included

    longest = longest_dense_caption(lambda caption: int(tokens_of(caption)[0]))
    length = int(tokens_of(longest)[0])
    assert length == 26  # measured: e.g. two "cyan" objects' sentences, cyan being 2 pieces
    # Random two-object captions never beat it (the sum rule above, checked on a sample).
    rng = np.random.default_rng(0)
    sample = []
    for _ in range(500):
        colours = rng.choice(list(COLOURS), 2, replace=False)
        objects = [
            ShapeObject(c, rng.choice(SHAPES), rng.choice(list(SIZES)), rng.choice(MOTIONS))
            for c in colours
        ]
        sample.append(dense_caption(ShapesScene(objects, rng.choice(list(BACKGROUNDS)))))
    assert tokens_of(*sample).max() <= length
    assert length <= max_tokens // 2  # whole, with room for longer descriptive captions
    ids, mask = MiniLMEncoder(max_tokens=max_tokens).tokenize([longest])
    assert mask.sum() == length and ids[0, length - 1] == SEP_ID  # ends whole, in [SEP]


def test_shipped_checkpoint_keeps_its_own_text_length():
    """Generation rebuilds the text config from the export, so raising the default changes
    nothing for the shipped checkpoint, which was trained on 32 tokens."""
    stored = exports.load_export_config(SHIPPED_DIT)
    assert TextConfig(**stored["text"]).max_tokens == 32
    assert t2v.get_config("tiny").text.max_tokens == 64
