"""Tests for soraj.data.video_io: mp4 and GIF round trips checked with PyAV and Pillow directly."""

import av
import chex
import iscc_samples
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from soraj.data.video_io import VideoReadError, read_video, write_gif, write_mp4

DEMO_MP4 = iscc_samples.VIDEO / "demo.mp4"  # 176x144, 24 fps, 1441 frames (CC-BY-4.0)


def smooth_video(num_frames=6, height=32, width=32):
    """Gradients that drift over time: smooth, so H.264 with yuv420p keeps it well."""
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    frames = []
    for t in range(num_frames):
        phase = t / num_frames
        red = 0.5 + 0.4 * np.sin(2 * np.pi * (cols + phase))
        green = 0.5 + 0.4 * np.cos(2 * np.pi * (rows - phase))
        blue = 0.3 + 0.4 * (rows + cols) / 2
        frames.append(np.stack([red, green, blue], axis=-1))
    return np.round(np.stack(frames) * 255).astype(np.uint8)  # (T, H, W, 3)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def decode_with_pyav(path):
    """The reference reader: PyAV's own decode loop, no soraj code."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.pix_fmt, float(stream.average_rate))
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return frames, info


# ---- mp4 ----


def test_write_mp4_is_h264_and_close_to_the_input(tmp_path):
    video = smooth_video()
    written = write_mp4(tmp_path / "nested" / "dir" / "clip.mp4", video, fps=8)
    assert written == str(tmp_path / "nested" / "dir" / "clip.mp4")
    frames, (codec, pix_fmt, fps) = decode_with_pyav(written)
    assert (codec, pix_fmt, fps) == ("h264", "yuv420p", 8.0)
    chex.assert_shape(frames, video.shape)
    assert psnr(frames, video) > 30


@pytest.mark.parametrize("fps", [12, 29.97])
def test_an_mp4_is_read_back_at_the_rate_it_was_written(tmp_path, fps):
    written = write_mp4(tmp_path / "clip.mp4", smooth_video(), fps=fps)
    _, (_, _, stored) = decode_with_pyav(written)
    _, read = read_video(written)
    assert read == stored == pytest.approx(fps, abs=1e-3)


def test_write_mp4_upscales_by_nearest_neighbour(tmp_path):
    video = smooth_video(num_frames=3, height=16, width=16)
    frames, _ = decode_with_pyav(write_mp4(tmp_path / "big.mp4", video, 8, upscale=3))
    reference = video.repeat(3, axis=1).repeat(3, axis=2)  # (T, 48, 48, 3)
    chex.assert_shape(frames, (3, 48, 48, 3))
    assert psnr(frames, reference) > 30


def test_write_mp4_pads_odd_sizes_by_edge_replication(tmp_path):
    video = smooth_video(num_frames=4, height=31, width=33)
    frames, _ = decode_with_pyav(write_mp4(tmp_path / "odd.mp4", video, 8))
    chex.assert_shape(frames, (4, 32, 34, 3))
    assert psnr(frames[:, :31, :33], video) > 30
    padded = np.pad(video, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="edge")
    assert psnr(frames[:, 31], padded[:, 31]) > 30  # the new row repeats the last one
    assert psnr(frames[:, :, 33], padded[:, :, 33]) > 30


def test_read_video_matches_pyav_on_real_footage():
    video, fps = read_video(DEMO_MP4, max_frames=5)
    reference, (codec, _, reference_fps) = decode_with_pyav(DEMO_MP4)
    assert codec == "h264" and reference.shape[0] == 1441
    chex.assert_shape(video, (5, 144, 176, 3))
    assert video.dtype == np.uint8 and fps == reference_fps == 24.0
    np.testing.assert_array_equal(video, reference[:5])


# ---- GIF and stills ----


def few_colour_video():
    """A moving square on a flat background: 2 colours, so the GIF palette is lossless."""
    video = np.zeros((4, 20, 24, 3), np.uint8)
    video[...] = (15, 15, 15)
    for t in range(4):
        video[t, 5:11, 2 + 4 * t : 8 + 4 * t] = (220, 40, 40)
    return video


def test_gif_round_trip_is_exact_and_loops(tmp_path):
    video = few_colour_video()
    path = write_gif(tmp_path / "gifs" / "clip.gif", video, fps=10, upscale=2)
    reference = video.repeat(2, axis=1).repeat(2, axis=2)  # (T, 40, 48, 3)
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
        pillow_frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            pillow_frames.append(np.asarray(gif.convert("RGB")))
    np.testing.assert_array_equal(np.stack(pillow_frames), reference)
    frames, fps = read_video(path)
    np.testing.assert_array_equal(frames, reference)
    assert fps == 10.0


def test_gif_delay_is_rounded_to_whole_centiseconds(tmp_path):
    for fps, stored_ms in [(8, 120), (25, 40), (100, 20)]:
        path = write_gif(tmp_path / f"{fps}.gif", few_colour_video(), fps=fps)
        with Image.open(path) as gif:
            assert gif.info["duration"] == stored_ms


def test_read_video_reads_a_still_as_one_frame(tmp_path):
    astronaut = skimage_data.astronaut()  # (512, 512, 3)
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    video, _ = read_video(tmp_path / "astronaut.png")
    chex.assert_shape(video, (1, 512, 512, 3))
    np.testing.assert_array_equal(video[0], astronaut)


# ---- Errors ----


@pytest.mark.parametrize(
    "name, content",
    [
        ("random.mp4", np.random.default_rng(0).bytes(4096)),
        ("empty.webm", b""),
        ("garbage.png", b"not an image at all"),
        ("garbage.gif", b"GIF89a broken"),
    ],
)
def test_corrupt_files_raise_video_read_error_naming_the_path(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match=name):
        read_video(path)


def test_truncated_mp4_raises_video_read_error(tmp_path):
    path = tmp_path / "truncated.mp4"
    path.write_bytes(DEMO_MP4.read_bytes()[:100_000])  # its index (moov) sits at the end
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        read_video(path)
    assert issubclass(VideoReadError, ValueError)


def test_missing_file_raises_video_read_error(tmp_path):
    with pytest.raises(VideoReadError, match="nothing.mp4"):
        read_video(tmp_path / "nothing.mp4")


@pytest.mark.parametrize(
    "video, kwargs, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), {}, "uint8"),
        (np.zeros((8, 8, 3), np.uint8), {}, "uint8"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"upscale": 0}, "upscale"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": 0}, "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": float("nan")}, "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": float("inf")}, "fps"),
    ],
)
def test_writers_reject_bad_input(tmp_path, video, kwargs, message):
    kwargs = {"fps": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "x.mp4", video, **kwargs)
    with pytest.raises(ValueError, match=message):
        write_gif(tmp_path / "x.gif", video, **kwargs)


def test_writers_have_no_default_frame_rate(tmp_path):
    """A clip is written at its own rate: a forgotten fps is an error, not a silent 8."""
    video = np.zeros((2, 8, 8, 3), np.uint8)
    for write, name in ((write_mp4, "x.mp4"), (write_gif, "x.gif")):
        with pytest.raises(TypeError, match="fps"):
            write(tmp_path / name, video)
        assert not (tmp_path / name).exists()


def test_read_video_rejects_bad_max_frames():
    with pytest.raises(ValueError, match="max_frames"):
        read_video(DEMO_MP4, max_frames=0)
