"""`soraj train`'s sources reach the packed rows at their native sizes: a captioned video folder
of wide, tall and still files gives each segment the patch grid of its own file. The training
clips' frame rate (config.data.fps) is resolved from the source, checked against the footage,
and recorded in the export."""

import json
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
from PIL import Image

from soraj import sharding
from soraj.configs import t2v
from soraj.data.packed_pipeline import caption_from_bytes
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.data.shapes import ShapesSource
from soraj.data.video_folder import VideoFolderSource
from soraj.data.video_io import write_mp4
from soraj.dit_data import check_fps, training_data, training_fps
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec

VAE_DIR = "experiments/shapes/checkpoint/vae"  # ft = fs = 4
FILES = {"wide.mp4": (9, 16, 32), "tall.mp4": (5, 32, 16), "still.mp4": (1, 24, 24)}


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    lines = []
    for i, (name, shape) in enumerate(FILES.items()):
        write_mp4(root / name, ShapesSource(1, *shape, seed=i, split="all")[0]["video"], SHAPES_FPS)
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


# ---- The training clips' frame rate ----
# Every rate below is the one the footage was written at, or the Shapes world's.

NTSC = 30000 / 1001  # 29.97002997...: what an NTSC file's stream rate reads as


@pytest.fixture(scope="module")
def rated_footage(tmp_path_factory):
    """Folders of 5×16×16 clips: "mixed" has two at 24 fps and one at 30, "ntsc" one at
    30000/1001, "stills" only a PNG."""
    root = tmp_path_factory.mktemp("rated")
    clip = ShapesSource(1, 5, 16, 16, seed=0, split="all")[0]["video"]
    folders = {"mixed": {"a.mp4": 24, "b.mp4": 24, "c.mp4": 30}, "ntsc": {"n.mp4": NTSC}}
    for folder, files in folders.items():
        for name, rate in files.items():
            write_mp4(root / folder / name, clip, rate)
    (root / "stills").mkdir()
    Image.fromarray(clip[0]).save(root / "stills" / "frame.png")
    for folder in (*folders, "stills"):
        names = sorted(p.name for p in (root / folder).iterdir())
        lines = [json.dumps({"path": name, "caption": f"clip {name}"}) for name in names]
        (root / folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def data_config(**fields):
    config = t2v.get_config("tiny")
    config.data.update(**fields)
    return config.data


def test_shapes_sources_train_at_the_shapes_rate_unless_one_is_given():
    recaptioned_shapes = SimpleNamespace(kind="shapes_tfds")
    for source, opened in (
        ("shapes", None),
        ("shapes_canvases", None),
        ("shapes_tfds", None),
        ("recaptioned", recaptioned_shapes),
    ):
        assert training_fps(data_config(source=source), opened) == 8.0
        assert training_fps(data_config(source=source, fps=12), opened) == 12.0
    # A latent cache is made of Shapes clips; the cache's source is never asked for a rate.
    cached = data_config(source="shapes", latent_cache="/some/cache")
    assert training_fps(cached, object()) == 8.0


def test_a_video_folder_trains_at_its_videos_most_common_rate(rated_footage):
    mixed = VideoFolderSource(rated_footage / "mixed", 5, None, None)
    data = data_config(source="video_folder", root=str(rated_footage / "mixed"))
    assert training_fps(data, mixed) == 24.0
    data.fps = 24
    assert training_fps(data, mixed) == 24.0
    data.fps = 30
    with pytest.raises(ValueError) as refused:
        training_fps(data, mixed)
    assert str(refused.value) == (
        f"config.data.fps = 30 disagrees with the footage under {rated_footage / 'mixed'}, "
        "whose videos play at 24 fps: 2 files, 30 fps: 1 file; give the most common rate (24) "
        "or leave config.data.fps unset"
    )
    # A recaptioned video folder's footage is its input folder's.
    recaptioned = SimpleNamespace(kind="video_folder", input=rated_footage / "mixed")
    assert training_fps(data_config(source="recaptioned"), recaptioned) == 24.0


def test_a_given_rate_matches_ntsc_footage_within_its_rounding(rated_footage):
    ntsc = VideoFolderSource(rated_footage / "ntsc", 5, None, None)
    data = data_config(source="video_folder", root=str(rated_footage / "ntsc"))
    assert training_fps(data, ntsc) == pytest.approx(NTSC, rel=1e-9)
    data.fps = 29.97
    assert training_fps(data, ntsc) == 29.97
    data.fps = 30.0
    with pytest.raises(ValueError, match="config.data.fps = 30 disagrees .* 29.97 fps: 1 file"):
        training_fps(data, ntsc)


def test_stills_and_class_folders_need_a_given_rate(rated_footage):
    stills = VideoFolderSource(rated_footage / "stills", 5, None, None)
    data = data_config(source="video_folder", root=str(rated_footage / "stills"))
    with pytest.raises(ValueError, match="are all stills, which have no frame rate: give"):
        training_fps(data, stills)
    data.fps = 10
    assert training_fps(data, stills) == 10.0
    data = data_config(source="class_folder", root="/classes")
    with pytest.raises(ValueError, match="'class_folder' needs config.data.fps"):
        check_fps(data)
    data.fps = 25
    assert check_fps(data) == training_fps(data, object()) == 25.0


@pytest.mark.parametrize("fps", [0, -24, float("nan"), float("inf"), True, "24"])
def test_a_bad_rate_is_refused(fps):
    # A plain ConfigDict: absl parses --config.data.fps to a float, a config file may not.
    data = ml_collections.ConfigDict(dict(source="shapes", fps=fps))
    with pytest.raises(ValueError) as refused:
        check_fps(data)
    assert str(refused.value) == (
        "config.data.fps must be a finite number of frames per second > 0 (e.g. 8, 24 or "
        f"29.97), or unset for the source's own rate; got {fps!r}"
    )


def test_the_export_records_the_footage_rate(rated_footage, tmp_path):
    from test_resume import make_config

    from soraj import train

    folder = rated_footage / "mixed"
    config = make_config(
        **{"data.source": "video_folder", "data.root": str(folder), "total_steps": 1}
    )
    train.train_and_evaluate(config, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "export" / "dit" / "config.json").read_text())
    assert stored["trained_on"]["fps"] == 24.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["fps"] == 24.0
    assert config.data.fps is None  # the caller's config is left as it was
    # A given rate the footage contradicts is refused before anything is written.
    config = make_config(
        **{"data.source": "video_folder", "data.root": str(folder), "data.fps": 30.0}
    )
    with pytest.raises(ValueError, match="config.data.fps = 30 disagrees with the footage"):
        train.train_and_evaluate(config, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
