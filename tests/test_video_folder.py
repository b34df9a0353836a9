"""Tests for soraj.data.video_folder on real footage (iscc-samples) and scikit-image stills."""

import json
import logging
import pickle
import shutil

import av
import chex
import grain
import iscc_samples
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from soraj.data.video_folder import VideoFolderSource, center_crop_resize, loop_to_length
from soraj.data.video_io import write_mp4

DEMO_MP4 = iscc_samples.VIDEO / "demo.mp4"  # 176x144, 24 fps, 1441 frames (CC-BY-4.0)
DEMO_WEBM = iscc_samples.VIDEO / "demo.webm"
STILL_GIF = iscc_samples.IMAGE / "demo.gif"  # one frame, 200x133
# 36x44 has the demo clip's exact aspect (144:176) at a quarter of its size.
NUM_FRAMES, HEIGHT, WIDTH = 5, 36, 44
# The source rounds the exact area average once to uint8; allow float64 summation noise.
AREA_ATOL = 0.5 + 1e-6


def block_mean(video, factor):
    """Naive area downscale by an integer factor."""
    t, h, w, c = video.shape
    blocks = video.reshape(t, h // factor, factor, w // factor, factor, c).astype(np.float64)
    return blocks.mean(axis=(2, 4))


def overlap_weights(source_size, target_size):
    """(target, source) matrix: the share of each source pixel inside each target pixel."""
    scale = source_size / target_size
    edges = np.arange(target_size + 1) * scale
    left, right = edges[:-1, None], edges[1:, None]
    pixel = np.arange(source_size)[None, :]
    overlap = np.clip(np.minimum(right, pixel + 1) - np.maximum(left, pixel), 0, None)
    return overlap / scale


def area_resize_reference(image, height, width):
    """Exact area average of an (h, w, 3) image, in float64."""
    rows = overlap_weights(image.shape[0], height)
    cols = overlap_weights(image.shape[1], width)
    return np.einsum("Hh,hwc,Ww->HWc", rows, image.astype(np.float64), cols)


def first_frames_with_pyav(path, count):
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return np.stack(frames)
    raise AssertionError(f"{path} has fewer than {count} frames")


@pytest.fixture
def folder(tmp_path):
    shutil.copy(DEMO_MP4, tmp_path / "clip.mp4")
    shutil.copy(DEMO_WEBM, tmp_path / "clip.webm")
    shutil.copy(STILL_GIF, tmp_path / "still.gif")
    (tmp_path / "stills").mkdir()
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "stills" / "astronaut.png")
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "stills" / "coffee.png")
    (tmp_path / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(8192))
    # The demo's index (moov box) is at the end of the file, so a cut copy cannot be opened.
    (tmp_path / "truncated.mp4").write_bytes(DEMO_MP4.read_bytes()[:300_000])
    captions = {
        "clip.mp4": "a short real video clip",
        "broken.mp4": "random bytes",
        "stills/astronaut.png": "an astronaut in a white suit",
        "truncated.mp4": "half a download",
        "clip.webm": "the same clip as webm",
        "stills/coffee.png": "a cup of coffee",
        "still.gif": "a one-frame gif",
    }
    lines = [json.dumps({"path": path, "caption": text}) for path, text in captions.items()]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path, captions


# ---- Resizing and looping ----


def test_center_crop_resize_crops_the_wide_side_then_averages_areas():
    video = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    resized = center_crop_resize(video, 4, 4)  # crop columns 4..20, then 4x4 blocks
    chex.assert_shape(resized, (2, 4, 4, 3))
    np.testing.assert_allclose(resized, block_mean(video[:, :, 4:20], 4), atol=AREA_ATOL)


def test_center_crop_resize_crops_the_tall_side():
    video = np.random.default_rng(1).integers(0, 256, (1, 30, 10, 3), dtype=np.uint8)
    resized = center_crop_resize(video, 5, 5)  # crop rows 10..20, then 2x2 blocks
    np.testing.assert_allclose(resized, block_mean(video[:, 10:20], 2), atol=AREA_ATOL)


def test_center_crop_resize_upscales_small_frames_by_area():
    video = np.random.default_rng(2).integers(0, 256, (1, 5, 3, 3), dtype=np.uint8)
    resized = center_crop_resize(video, 9, 7)  # 9:7 of a 3 wide frame is 4 rows: rows 0..4
    chex.assert_shape(resized, (1, 9, 7, 3))
    np.testing.assert_allclose(
        resized[0], area_resize_reference(video[0, :4], 9, 7), atol=AREA_ATOL
    )


def test_loop_to_length_cycles_short_clips():
    video = np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8)
    np.testing.assert_array_equal(loop_to_length(video, 7)[:, 0, 0, 0], [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(loop_to_length(video, 2)[:, 0, 0, 0], [0, 1])


# ---- The source ----


def test_source_skips_broken_files_and_logs_them(folder, caplog):
    root, captions = folder
    with caplog.at_level(logging.WARNING):
        source = VideoFolderSource(root, NUM_FRAMES, HEIGHT, WIDTH)
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    assert source.num_skipped == 2
    assert sorted(source.skipped_paths) == ["broken.mp4", "truncated.mp4"]
    assert "broken.mp4" in caplog.text and "truncated.mp4" in caplog.text
    assert len(source) == 5
    items = [source[i] for i in range(len(source))]
    assert [item["path"] for item in items] == [
        "clip.mp4",
        "stills/astronaut.png",
        "clip.webm",
        "stills/coffee.png",
        "still.gif",
    ]
    for item in items:
        chex.assert_shape(item["video"], (NUM_FRAMES, HEIGHT, WIDTH, 3))
        assert item["video"].dtype == np.uint8
        assert item["caption"] == captions[item["path"]]


def test_items_carry_their_files_frame_rate(folder):
    root, _ = folder
    source = VideoFolderSource(root, NUM_FRAMES, HEIGHT, WIDTH)
    rates = {item["path"]: item["fps"] for item in (source[i] for i in range(len(source)))}
    with av.open(str(DEMO_MP4)) as container:  # the reference: PyAV's own stream rate
        demo_rate = float(container.streams.video[0].average_rate)
    assert rates["clip.mp4"] == rates["clip.webm"] == demo_rate == 24.0
    assert rates["stills/coffee.png"] == 1.0  # a still has no rate of its own: IMAGE_FPS
    assert source.frame_rate == 24.0  # the folder's videos, stills aside
    windows = VideoFolderSource(root, NUM_FRAMES, None, None, num_random_clips=3, seed=1)
    assert all(windows[i]["fps"] == source.frame_rates[windows[i]["path"]] for i in range(3))


def test_the_folder_rate_is_its_videos_most_common_one_and_a_tie_names_none(tmp_path):
    clip = np.zeros((3, 16, 16, 3), np.uint8)
    write_mp4(tmp_path / "a.mp4", clip, 24)
    write_mp4(tmp_path / "b.mp4", clip, 30)
    Image.fromarray(skimage_data.coffee()).save(tmp_path / "still.png")
    names = ["a.mp4", "b.mp4", "still.png"]
    lines = [json.dumps({"path": name, "caption": "x"}) for name in names]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    source = VideoFolderSource(tmp_path, 2, None, None)
    assert source.video_frame_rates == {24.0: 1, 30.0: 1}  # the still has no rate of its own
    with pytest.raises(ValueError) as tie:
        _ = source.frame_rate
    assert str(tie.value) == (
        f"the videos under {tmp_path} have no single most common frame rate "
        "(24 fps: 1 file, 30 fps: 1 file)"
    )
    write_mp4(tmp_path / "c.mp4", clip, 24)
    lines.append(json.dumps({"path": "c.mp4", "caption": "y"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    assert VideoFolderSource(tmp_path, 2, None, None).frame_rate == 24.0
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "still.png", "caption": "z"}))
    assert VideoFolderSource(tmp_path, 2, None, None).frame_rate is None  # stills only


def test_video_item_is_the_area_downscaled_first_frames(folder):
    root, _ = folder
    item = VideoFolderSource(root, NUM_FRAMES, HEIGHT, WIDTH)[0]
    reference = block_mean(first_frames_with_pyav(DEMO_MP4, NUM_FRAMES), 4)  # (5, 36, 44, 3)
    np.testing.assert_allclose(item["video"], reference, atol=AREA_ATOL)


def test_still_item_repeats_one_resized_frame(folder):
    root, _ = folder
    video = VideoFolderSource(root, NUM_FRAMES, HEIGHT, WIDTH)[3]["video"]  # coffee, 400x600
    np.testing.assert_array_equal(video, np.broadcast_to(video[:1], video.shape))
    # Centre crop of the 600 wide still to 36:44 is 489 wide, columns 55..544.
    reference = area_resize_reference(skimage_data.coffee()[:, 55:544], HEIGHT, WIDTH)
    np.testing.assert_allclose(video[0], reference, atol=AREA_ATOL)


def test_native_items_keep_their_size_and_length(folder):
    root, _ = folder
    source = VideoFolderSource(root, NUM_FRAMES, None, None)
    np.testing.assert_array_equal(source[0]["video"], first_frames_with_pyav(DEMO_MP4, NUM_FRAMES))
    np.testing.assert_array_equal(source[3]["video"], skimage_data.coffee()[None])  # png: exact
    windows = VideoFolderSource(root, NUM_FRAMES, None, None, num_random_clips=6, seed=1)
    assert all(windows[i]["video"].shape[0] <= NUM_FRAMES for i in range(6))
    with pytest.raises(ValueError, match="may both be None"):
        VideoFolderSource(root, NUM_FRAMES, None, WIDTH)


def test_file_breaking_after_the_probe_is_replaced_by_the_next_item(folder, caplog):
    root, _ = folder
    source = VideoFolderSource(root, NUM_FRAMES, HEIGHT, WIDTH)
    (root / "stills" / "astronaut.png").write_bytes(b"overwritten with junk")
    with caplog.at_level(logging.WARNING):
        item = source[1]
    assert item["path"] == "clip.webm"
    assert source.num_skipped == 3 and "stills/astronaut.png" in source.skipped_paths
    assert "astronaut.png" in caplog.text
    assert source[1]["path"] == "clip.webm" and source.num_skipped == 3  # same answer again


def test_source_works_in_grain_and_pickles(folder):
    root, _ = folder
    source = VideoFolderSource(root, 2, 16, 16)
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[4]["video"], source[4]["video"])
    batch = grain.MapDataset.source(source).batch(2)[0]
    chex.assert_shape(batch["video"], (2, 2, 16, 16, 3))


# ---- Bad input ----


def test_all_files_unreadable_raises(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"junk")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "x"}))
    with pytest.raises(ValueError, match="no readable"):
        VideoFolderSource(tmp_path, 2, 16, 16)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"path": "a.txt", "caption": "x"}', "unsupported file type"),
        ('{"file": "a.mp4"}', "JSON object"),
        ("not json", "JSON object"),
    ],
)
def test_bad_captions_file_raises(tmp_path, line, message):
    (tmp_path / "captions.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        VideoFolderSource(tmp_path, 2, 16, 16)


def test_bad_arguments_raise(folder):
    root, _ = folder
    with pytest.raises(ValueError, match="captions file"):
        VideoFolderSource(root, 2, 16, 16, captions_file="missing.jsonl")
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolderSource(root, 0, 16, 16)
