"""The Shapes world written as a TFDS ArrayRecord dataset, built and read without TensorFlow."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from soraj.data.shapes import ShapesSource

DATASET_NAME = "soraj_shapes"
SPLITS = ("train", "validation")
# Validation clips come from a far-away seed so they never repeat a training clip.
VALIDATION_SEED_OFFSET = 1_000_003
TEXT_KEYS = ("caption", "caption_original", "short_caption", "structured")


# ---- Builder ----


@dataclasses.dataclass(kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
    num_clips: int = 1024
    num_validation: int = 64
    num_frames: int = 9
    height: int = 32
    width: int = 32
    seed: int = 0


def shapes_config(num_clips, num_frames, height, width, seed=0, num_validation=64) -> ShapesConfig:
    """A config whose name spells its sizes, so different datasets never share a folder."""
    name = f"n{num_clips}_v{num_validation}_t{num_frames}_h{height}_w{width}_s{seed}"
    return ShapesConfig(
        name=name,
        description=f"{num_clips} train clips of {num_frames}x{height}x{width}, seed {seed}",
        num_clips=num_clips,
        num_validation=num_validation,
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
    )


class ShapesBuilder(tfds.core.GeneratorBasedBuilder):
    """Clips and captions of soraj.data.shapes.ShapesSource, split into train and validation."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "caption_original: web-style alt-text beside the exact dense caption "
        "(soraj.data.shapes_alt_text, default AltTextNoise odds).",
    }
    BUILDER_CONFIGS = [shapes_config(1024, 9, 32, 32)]
    # TFDS looks up a packaged builder's folder through importlib_resources, which is not
    # installed; the module file is the same answer (and no checksums file sits next to it).
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        video_shape = (config.num_frames, config.height, config.width, 3)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(shape=video_shape, dtype=np.uint8),
                    "caption": tfds.features.Text(),
                    "caption_original": tfds.features.Text(),
                    "short_caption": tfds.features.Text(),
                    "structured": tfds.features.Text(),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            description="Moving shapes with exact dense captions and web-style alt-text.",
            # Keep records in clip order so record i is clip i; grain shuffles at read time.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated, nothing is downloaded
        config = self.builder_config
        return {
            "train": self._generate_examples(config.num_clips, config.seed),
            "validation": self._generate_examples(
                config.num_validation, config.seed + VALIDATION_SEED_OFFSET
            ),
        }

    def _generate_examples(self, num_clips: int, seed: int):
        config = self.builder_config
        source = ShapesSource(num_clips, config.num_frames, config.height, config.width, seed=seed)
        for index in range(len(source)):
            yield index, source[index]


# ---- Make and load ----


def make_shapes_dataset(
    data_dir, num_clips, num_frames, height, width, seed=0, num_validation=64
) -> str:
    """Builds the dataset under data_dir (progress bars from TFDS); returns its folder."""
    for name, value in (("num_clips", num_clips), ("num_validation", num_validation)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    # ShapesSource checks the clip size and seed, before anything is written.
    ShapesSource(num_clips, num_frames, height, width, seed=seed)
    config = shapes_config(num_clips, num_frames, height, width, seed, num_validation)
    builder = ShapesBuilder(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    print(f"Wrote the Shapes dataset to {builder.data_dir}")
    return str(builder.data_dir)


class ShapesRecordSource:
    """A grain source over one split; items match ShapesSource's (text as str, index as int)."""

    def __init__(self, data_source, path: str, split: str):
        self._data_source, self.path, self.split = data_source, path, split

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> dict:
        item = dict(self._data_source[index])
        for key in TEXT_KEYS:
            if key in item:  # a 1.0.0 dataset has no caption_original
                item[key] = item[key].decode("utf-8")  # TFDS stores Text as utf-8 bytes
        item["index"] = int(item["index"])
        return item

    def __repr__(self) -> str:
        return f"ShapesRecordSource(path={self.path!r}, split={self.split!r})"


def _find_dataset_folder(data_dir: pathlib.Path) -> pathlib.Path:
    if (data_dir / "dataset_info.json").is_file():
        return data_dir
    found = sorted(p.parent for p in data_dir.glob(f"{DATASET_NAME}/*/*/dataset_info.json"))
    if len(found) != 1:
        listing = ", ".join(str(p) for p in found) or "none"
        raise ValueError(
            f"expected exactly one built Shapes dataset under {data_dir}, found: {listing}; "
            "pass the folder make_shapes_dataset returned"
        )
    return found[0]


def load_shapes_dataset(data_dir, split: str = "train") -> ShapesRecordSource:
    """Reads a split with tfds.data_source; data_dir is a make_shapes_dataset folder or its root."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    folder = _find_dataset_folder(pathlib.Path(data_dir))
    # builder_from_directory reads dataset_info.json, so no config has to be registered.
    data_source = tfds.builder_from_directory(str(folder)).as_data_source(split=split)
    return ShapesRecordSource(data_source, str(folder), split)
