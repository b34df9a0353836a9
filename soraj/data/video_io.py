"""Video and image IO: read anything to uint8 (T, H, W, 3), write H.264 mp4 and looping GIF."""

from __future__ import annotations

import fractions
import pathlib

import av
import imageio.v3 as iio
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GIF_SUFFIXES = (".gif",)
VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v")
READABLE_SUFFIXES = IMAGE_SUFFIXES + GIF_SUFFIXES + VIDEO_SUFFIXES

# Stills have no frame rate; report a neutral one so callers never divide by zero.
IMAGE_FPS = 1.0


class VideoReadError(ValueError):
    """A file could not be decoded into at least one RGB frame."""


# ---- Reading ----


def read_video(path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes a video, GIF or still image to (uint8 (T, H, W, 3), fps); an image is T = 1."""
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be None or a positive int, got {max_frames!r}")
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            video, fps = _read_image(path), IMAGE_FPS
        elif suffix in GIF_SUFFIXES:
            video, fps = _read_gif(path, max_frames)
        else:
            video, fps = _read_with_pyav(path, max_frames)
    except VideoReadError:
        raise
    except Exception as error:  # decoders raise many unrelated types
        raise VideoReadError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    if video.shape[0] == 0:
        raise VideoReadError(f"cannot read {path}: it holds no decodable frames")
    return video, fps


def _read_image(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))[None]  # (1, H, W, 3)


def _read_gif(path: pathlib.Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    # Pillow composes partial GIF frames onto the canvas, so every frame is a full picture.
    frames = []
    for frame in iio.imiter(path, mode="RGB", plugin="pillow"):
        frames.append(frame)  # (H, W, 3)
        if max_frames is not None and len(frames) >= max_frames:
            break
    duration_ms = iio.immeta(path, index=0, plugin="pillow").get("duration") or 0
    fps = 1000.0 / duration_ms if duration_ms > 0 else IMAGE_FPS
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8), fps


def _read_with_pyav(path: pathlib.Path, max_frames: int | None) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoReadError(f"cannot read {path}: it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        frames = []
        for frame in container.decode(stream):
            # Rare streams change size mid-way; keep the first size so frames stack.
            width, height = (frames[0].shape[1], frames[0].shape[0]) if frames else (None, None)
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8), fps
    return np.stack(frames), fps  # (T, H, W, 3)


# ---- Writing ----


def _check_video(video: np.ndarray, fps: float, upscale: int) -> np.ndarray:
    video = np.asarray(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] < 1:
        raise ValueError(
            f"video must be uint8 (T, H, W, 3) with T >= 1, got {video.dtype} {video.shape}"
        )
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive, finite number of frames per second, got {fps!r}")
    if not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive int, got {upscale!r}")
    # Nearest neighbour keeps the pixels of tiny clips crisp instead of blurring them.
    return np.repeat(np.repeat(video, upscale, axis=1), upscale, axis=2)  # (T, H*u, W*u, 3)


def _parent_made(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_mp4(path, video: np.ndarray, fps: float, upscale: int = 1, crf: int = 18) -> str:
    """Writes uint8 (T, H, W, 3) as H.264 yuv420p at fps frames per second (the clip's own
    rate: there is no default); returns the path written."""
    video = _check_video(video, fps, upscale)
    # yuv420p stores chroma at half resolution, so H.264 needs even sides: replicate the edge.
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = _parent_made(path)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))  # flush frames the encoder held back
    return str(path)


def write_gif(path, video: np.ndarray, fps: float, upscale: int = 1) -> str:
    """Writes uint8 (T, H, W, 3) as a GIF that loops forever at fps frames per second (the
    clip's own rate: there is no default); returns the path written.

    The frame delay is 1/fps rounded to whole centiseconds (8 fps plays at 1/0.12 s).
    """
    video = _check_video(video, fps, upscale)
    path = _parent_made(path)
    # GIF stores delays in whole centiseconds, and browsers slow delays under 2 cs to 10 cs.
    duration_ms = 10 * max(2, round(100 / fps))
    iio.imwrite(path, video, extension=".gif", plugin="pillow", duration=duration_ms, loop=0)
    return str(path)
