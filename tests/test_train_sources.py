"""`soraj train`'s sources reach the packed rows at their native sizes: a captioned video folder
of wide, tall and still files gives each segment the patch grid of its own file."""

import json

import numpy as np
import pytest

from soraj import sharding
from soraj.configs import t2v
from soraj.data.packed_pipeline import caption_from_bytes
from soraj.data.shapes import ShapesSource
from soraj.data.video_io import write_mp4
from soraj.dit_data import training_data
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec

VAE_DIR = "experiments/shapes/checkpoint/vae"  # ft = fs = 4
FILES = {"wide.mp4": (9, 16, 32), "tall.mp4": (5, 32, 16), "still.mp4": (1, 24, 24)}


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    lines = []
    for i, (name, shape) in enumerate(FILES.items()):
        write_mp4(root / name, ShapesSource(1, *shape, seed=i, split="all")[0]["video"])
        lines.append(json.dumps({"path": name, "caption": f"clip {name}"}))
    (root / "captions.jsonl").write_text("\n".join(lines))
    return root


def test_video_folder_rows_hold_each_file_at_its_native_grid(footage):
    config = t2v.get_config("tiny")
    config.vae_checkpoint = VAE_DIR
    config.text.encoder = "bytes"  # no MiniLM load: the captions are only read back here
    config.data.update(source="video_folder", root=str(footage), caption_dropout=0.0)
    config.data.update(num_frames=9, min_frames=1, row_length=64, token_budget=64)
    config.batch_size = 2
    iterator, _ = training_data(
        config,
        LatentCodec.load(VAE_DIR),
        VAE_DIR,
        TextConfig(**config.text),
        config.model.patch_size,
        sharding.make_mesh(),
    )
    seen = {}
    for _ in range(3):
        batch = next(iterator)
        for row, slot in zip(*np.nonzero(batch["grid"][..., 0] > 0), strict=True):
            seen[caption_from_bytes(batch["caption"][row, slot])] = tuple(batch["grid"][row, slot])
    # Latent grid of a (T, H, W) file with ft = fs = 4 and 1×2×2 patches; a clip is cut to
    # 1 + 4k frames of its own length at most, so only the spatial grid is fixed.
    for name, (frames, height, width) in FILES.items():
        gt, gh, gw = seen[f"clip {name}"]
        assert (gh, gw) == (height // 8, width // 8)
        assert 1 <= gt <= 1 + (frames - 1) // 4
