"""Random windows and crops of the video-folder source (a few real clips → many samples)."""

import json
import pickle

import chex
import numpy as np
import pytest
from PIL import Image

from soraj.data.video_folder import VideoFolderSource, random_window_crop
from soraj.data.video_io import write_mp4


def coordinate_video(frames, height, width):
    """uint8 (T, H, W, 3) whose channels are 8·t, 4·y and 4·x: every pixel says where it is."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    return np.stack([8 * t, 4 * y, 4 * x], axis=-1).astype(np.uint8)


def test_same_size_crop_is_an_exact_window_and_crop_of_the_source():
    video = np.random.default_rng(0).integers(0, 256, (12, 20, 30, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(10):
        # The largest 20×20 crop of a 20×30 frame is already the target size: no resizing.
        clip = random_window_crop(video, 4, 20, 20, rng, min_crop_scale=1.0)
        matches = [
            (start, left)
            for start in range(12 - 4 + 1)
            for left in range(30 - 20 + 1)
            if np.array_equal(clip, video[start : start + 4, :, left : left + 20])
        ]
        assert len(matches) == 1


def test_integer_downscale_is_the_block_mean_of_a_window():
    video = np.random.default_rng(2).integers(0, 256, (9, 20, 20, 3), dtype=np.uint8)
    clip = random_window_crop(video, 3, 10, 10, np.random.default_rng(3), min_crop_scale=1.0)
    blocks = video.reshape(9, 10, 2, 10, 2, 3).astype(np.float64).mean(axis=(2, 4))
    # Pillow resizes in two passes (rows, then columns) and rounds to uint8 after each: at most
    # ½ from the first pass (averaged) plus ½ from the second.
    errors = [np.abs(clip - blocks[s : s + 3]).max() for s in range(9 - 3 + 1)]
    assert min(errors) <= 1.0


def test_windows_and_crop_sizes_cover_their_allowed_ranges():
    video = coordinate_video(12, 40, 40)
    rng = np.random.default_rng(4)
    starts, sides = [], []
    for _ in range(200):
        clip = random_window_crop(video, 4, 10, 10, rng, min_crop_scale=0.5).astype(float)
        frame_times = clip[:, 0, 0, 0] / 8
        np.testing.assert_array_equal(np.diff(frame_times), 1)  # consecutive frames
        starts.append(frame_times[0])
        # Box averages of the 4·x ramp: the first and last output column centres lie
        # (side - side/10) source pixels apart, up to Pillow's rounding at the box edges.
        sides.append((clip[0, 0, -1, 2] - clip[0, 0, 0, 2]) / 4 * 10 / 9)
    assert min(starts) == 0 and max(starts) == 12 - 4
    # Crop sides lie in [0.5 · 40, 40] and both ends are reached.
    assert 19 <= min(sides) < 23 and 37 < max(sides) <= 41


def test_short_clips_loop_and_small_sources_are_not_refused():
    video = coordinate_video(2, 8, 8)
    clip = random_window_crop(video, 5, 16, 16, np.random.default_rng(5), min_crop_scale=0.5)
    chex.assert_shape(clip, (5, 16, 16, 3))
    np.testing.assert_array_equal(clip[:, 0, 0, 0] / 8, [0, 1, 0, 1, 0])


@pytest.fixture
def footage(tmp_path):
    rng = np.random.default_rng(6)
    smooth = np.cumsum(rng.integers(0, 3, (30, 36, 44, 3)), axis=0) % 256
    write_mp4(tmp_path / "walk.mp4", smooth.astype(np.uint8), fps=8)
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "still.png")
    lines = [
        json.dumps({"path": "walk.mp4", "caption": "a clip"}),
        json.dumps({"path": "still.png", "caption": "a still"}),
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_random_clip_source_is_deterministic_per_seed_and_index(footage):
    source = VideoFolderSource(footage, 5, 16, 16, num_random_clips=40, seed=3, min_crop_scale=0.5)
    assert len(source) == 40
    items = [source[i] for i in range(6)]
    assert [item["path"] for item in items] == ["walk.mp4", "still.png"] * 3
    for item in items:
        chex.assert_shape(item["video"], (5, 16, 16, 3))
        assert item["video"].dtype == np.uint8
    still = items[1]["video"]
    np.testing.assert_array_equal(still, np.broadcast_to(still[:1], still.shape))
    assert not np.array_equal(items[0]["video"], items[2]["video"])  # other window or crop
    again = VideoFolderSource(footage, 5, 16, 16, num_random_clips=40, seed=3, min_crop_scale=0.5)
    copy = pickle.loads(pickle.dumps(source))
    for i in (0, 1, 39):
        np.testing.assert_array_equal(again[i]["video"], source[i]["video"])
        np.testing.assert_array_equal(copy[i]["video"], source[i]["video"])
    other_seed = VideoFolderSource(footage, 5, 16, 16, num_random_clips=40, seed=4)
    assert not np.array_equal(other_seed[0]["video"], source[0]["video"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_random_clips=0), "num_random_clips"),
        (dict(num_random_clips=10, min_crop_scale=0.0), "min_crop_scale"),
        (dict(num_random_clips=10, seed=-1), "seed"),
    ],
)
def test_bad_random_clip_arguments_raise(footage, overrides, message):
    with pytest.raises(ValueError, match=message):
        VideoFolderSource(footage, 5, 16, 16, **overrides)
