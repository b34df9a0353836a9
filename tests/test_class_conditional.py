"""Class-conditional training end to end: a UCF-101-style class folder of clips and images at
their own sizes → packed rows with a label per segment (dropped to the null label with the
caption) → `train_and_evaluate` → an export that samples a named class."""

import json

import numpy as np
import pytest

from soraj.configs import t2v
from soraj.data.class_folder import ClassFolderSource
from soraj.data.packed_pipeline import PackedDataSpec, caption_from_bytes, packed_dataset
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.data.shapes import ShapesSource
from soraj.data.video_io import write_mp4
from soraj.generate import Generator
from soraj.models.latent_codec import LatentCodec
from soraj.train import train_and_evaluate

VAE_DIR = "experiments/shapes/checkpoint/vae"
CLASSES = {"blue_things": (5, 16, 32), "red_things": (5, 32, 16), "still_images": (1, 16, 16)}


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    for c, (name, (frames, height, width)) in enumerate(CLASSES.items()):
        source = ShapesSource(3, frames, height, width, seed=c, split="all")
        for i in range(3):
            write_mp4(root / name / f"clip{i}.mp4", source[i]["video"], SHAPES_FPS)
    (root / "red_things" / "notes.txt").write_text("not a clip")
    return root


def test_class_folder_lists_classes_and_keeps_native_sizes(class_folder):
    source = ClassFolderSource(class_folder, max_frames=9)
    assert source.class_names == sorted(CLASSES) and len(source) == 9
    for i in range(len(source)):
        item = source[i]
        name = source.class_names[item["label"]]
        assert item["caption"] == name
        assert item["video"].shape[:3] == CLASSES[name]  # native size and length kept
    with pytest.raises(ValueError, match="no class folder"):
        ClassFolderSource(class_folder / "missing", max_frames=9)
    with pytest.raises(ValueError, match="max_frames"):
        ClassFolderSource(class_folder, max_frames=0)


def test_packed_rows_carry_each_segment_label_and_drop_it_with_the_caption(class_folder):
    source = ClassFolderSource(class_folder, max_frames=5)
    spec = PackedDataSpec(
        vae_factors=(4, 4),
        patch_size=(1, 2, 2),
        row_length=48,
        max_segments=4,
        rows_per_batch=2,
        token_budget=48,
        max_frames=5,
        min_frames=5,
        caption_dropout=0.4,
        num_classes=3,
        seed=1,
    )
    iterator = iter(packed_dataset(source, spec, LatentCodec.load(VAE_DIR)))
    kinds = set()
    for _ in range(4):
        batch = next(iterator)
        for row, slot in zip(*np.nonzero(batch["grid"][..., 0] > 0), strict=True):
            caption = caption_from_bytes(batch["caption"][row, slot])
            label = batch["labels"][row, slot]
            if caption:
                assert label == source.class_names.index(caption)
            else:
                assert label == 3  # the null label
            kinds.add(bool(caption))
    assert kinds == {True, False}


def class_config(class_folder, num_classes=3):
    config = t2v.get_config("tiny")
    config.vae_checkpoint = VAE_DIR
    config.model.update(conditioning="class", num_classes=num_classes, depth=1, width=64)
    config.model.num_heads = 2
    config.data.update(source="class_folder", root=str(class_folder), num_frames=5, fps=8.0)
    config.data.update(height=16, width=32, row_length=48, token_budget=48)
    config.batch_size = 2
    config.update(total_steps=2, log_every=1, save_every=2, sample_every=2)
    config.sample.steps = 2
    return config


def test_class_model_trains_exports_and_samples_a_named_class(class_folder, tmp_path):
    train_and_evaluate(class_config(class_folder), tmp_path)
    stored = json.loads((tmp_path / "export" / "dit" / "config.json").read_text())
    assert stored["classes"] == sorted(CLASSES)
    generator = Generator.load(tmp_path)
    video = generator(["red_things", "0"], 5, 32, 16, seed=0, steps=2)
    assert video.shape == (2, 5, 32, 16, 3) and video.dtype == np.uint8
    with pytest.raises(ValueError, match="not a class of this model"):
        generator(["green_things"], 5, 32, 16)
    assert (tmp_path / "metrics.jsonl").exists()


def test_class_count_must_match_the_folder(class_folder, tmp_path):
    with pytest.raises(ValueError, match="has 3 classes"):
        train_and_evaluate(class_config(class_folder, num_classes=5), tmp_path)
