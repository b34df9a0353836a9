"""A grain source over a folder of captioned videos and images; broken files are skipped."""

from __future__ import annotations

import collections
import json
import logging
import pathlib
import threading

import grain
import numpy as np
from PIL import Image
from skimage.transform import resize_local_mean

from soraj.data.video_io import IMAGE_SUFFIXES, READABLE_SUFFIXES, VideoReadError, read_video

logger = logging.getLogger(__name__)


# ---- Frames to a fixed size ----


def _largest_crop(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """(crop_h, crop_w): the largest crop of a src_h × src_w frame with height:width aspect."""
    # Compare aspects with integer products so exact ratios never suffer float rounding.
    if src_w * height > src_h * width:
        return src_h, max(1, round(src_h * width / height))
    return max(1, round(src_w * height / width)), src_w


def center_crop_resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crops the centre to height:width aspect, then area-resizes: (T, h, w, 3) -> (T, H, W, 3)."""
    src_h, src_w = video.shape[1:3]
    crop_h, crop_w = _largest_crop(src_h, src_w, height, width)
    top, left = (src_h - crop_h) // 2, (src_w - crop_w) // 2
    cropped = video[:, top : top + crop_h, left : left + crop_w]  # (T, h', w', 3)
    if (crop_h, crop_w) == (height, width):
        return np.ascontiguousarray(cropped)
    # Area resize: each target pixel averages exactly the source area it covers (fractional
    # pixels weighted), so downscaling never aliases. Pillow's BOX filter rounds pixels in or out.
    frames = [
        resize_local_mean(
            frame, (height, width), grid_mode=True, preserve_range=True, channel_axis=-1
        )
        for frame in cropped
    ]
    return np.rint(np.stack(frames)).astype(np.uint8)  # (T, H, W, 3)


def loop_to_length(video: np.ndarray, num_frames: int) -> np.ndarray:
    """First num_frames frames; a short clip loops, so a still becomes a static clip."""
    return video[np.arange(num_frames) % video.shape[0]]  # (num_frames, H, W, 3)


def random_window_crop(
    video: np.ndarray,
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    min_crop_scale: float,
) -> np.ndarray:
    """A random num_frames window (looped if the clip is shorter) and a random crop of
    height:width aspect, box-resized: (T, h, w, 3) -> (num_frames, height, width, 3).

    The crop's side is a uniform fraction in [min_crop_scale, 1] of the largest crop, but
    never below the target size where the source is large enough, so frames are not upscaled.
    Pillow's box filter resizes: much faster than the exact area average, and a crop of
    random size and place needs no exact pixel grid.
    """
    start = int(rng.integers(0, max(1, video.shape[0] - num_frames + 1)))
    window = loop_to_length(video[start : start + num_frames], num_frames)  # (num_frames, h, w, 3)
    src_h, src_w = video.shape[1:3]
    largest_h, largest_w = _largest_crop(src_h, src_w, height, width)
    no_upscale = min(1.0, max(height / largest_h, width / largest_w))
    scale = rng.uniform(max(min_crop_scale, no_upscale), 1.0)
    crop_h = min(src_h, max(1, round(largest_h * scale)))
    crop_w = min(src_w, max(1, round(largest_w * scale)))
    top = int(rng.integers(0, src_h - crop_h + 1))
    left = int(rng.integers(0, src_w - crop_w + 1))
    box = (left, top, left + crop_w, top + crop_h)
    frames = [
        np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BOX, box=box))
        for frame in window
    ]
    return np.stack(frames)  # (num_frames, height, width, 3)


# ---- Source ----


def describe_rates(ranked) -> str:
    """(rate, count) pairs, most common first, as "24 fps: 10 files, 30 fps: 3 files"."""
    return ", ".join(f"{rate:g} fps: {count} file{'s' * (count != 1)}" for rate, count in ranked)


def _read_captions(captions_path: pathlib.Path) -> list[tuple[str, str]]:
    if not captions_path.is_file():
        raise ValueError(f"captions file {captions_path} does not exist")
    entries = []
    for line_number, line in enumerate(captions_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            relative_path, caption = record["path"], record["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{captions_path}:{line_number}: each line must be a JSON object "
                f'{{"path": ..., "caption": ...}}, got {line[:80]!r}'
            ) from error
        if pathlib.PurePath(relative_path).suffix.lower() not in READABLE_SUFFIXES:
            raise ValueError(
                f"{captions_path}:{line_number}: unsupported file type {relative_path!r}; "
                f"allowed suffixes: {', '.join(READABLE_SUFFIXES)}"
            )
        entries.append((str(relative_path), str(caption)))
    return entries


class VideoFolderSource(grain.sources.RandomAccessDataSource):
    """Items {"video": uint8 (T, H, W, 3), "caption": str, "path": str, "fps": float} from
    captions.jsonl; "fps" is the file's own frame rate (read_video's; a still's is IMAGE_FPS).

    Every listed file is probed once (first frame) at construction; unreadable ones are
    logged, counted in num_skipped / skipped_paths, and left out. A file that passes the
    probe but fails later is logged, counted and replaced by the next good item.

    By default item i is file i: its first num_frames frames, centre-cropped. With height and
    width None, items keep their native size and a shorter clip its own length (an image is
    T = 1): the input of native-size training (soraj/data/native_size.py). With
    num_random_clips = N there are N items instead, so a few long clips give many training
    samples: item i is a random window and crop (random_window_crop) of file i mod the file
    count, drawn from (seed, i) alone, so an item is the same whenever it is read. Each file
    is then decoded whole once and kept in memory.
    """

    def __init__(
        self,
        root,
        num_frames: int,
        height: int,
        width: int,
        captions_file: str = "captions.jsonl",
        num_random_clips: int | None = None,
        seed: int = 0,
        min_crop_scale: float = 1.0,
    ):
        native = height is None and width is None
        sizes = (("num_frames", num_frames),) + (
            () if native else (("height", height), ("width", width))
        )
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} must be a positive int, got {value!r} (height and width may both "
                    "be None: native size)"
                )
        if num_random_clips is not None and (
            isinstance(num_random_clips, bool)
            or not isinstance(num_random_clips, int)
            or num_random_clips < 1
        ):
            raise ValueError(
                f"num_random_clips must be None or a positive int, got {num_random_clips!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int ≥ 0, got {seed!r}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale!r}")
        self.root = pathlib.Path(root)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.captions_file = captions_file
        self.num_random_clips = num_random_clips
        self.seed, self.min_crop_scale = seed, min_crop_scale
        self.skipped_paths: list[str] = []
        self._lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._decoded: dict[str, np.ndarray] = {}
        self.frame_rates: dict[str, float] = {}  # each readable file's, from its probe
        self._entries = [e for e in _read_captions(self.root / captions_file) if self._probe(e[0])]
        if not self._entries:
            raise ValueError(
                f"no readable video or image under {self.root} "
                f"({len(self.skipped_paths)} listed in {captions_file}, all unreadable)"
            )

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_paths)

    @property
    def video_frame_rates(self) -> collections.Counter:
        """How many of the folder's readable videos have each frame rate (stills have none of
        their own and are left out)."""
        return collections.Counter(
            r for p, r in self.frame_rates.items() if not p.lower().endswith(IMAGE_SUFFIXES)
        )

    @property
    def frame_rate(self) -> float | None:
        """The frame rate most of the folder's videos have, or None for a folder of stills: the
        rate a model trained on it records (config.data.fps). Rates tied for most are a
        ValueError: the footage then names no one rate."""
        ranked = self.video_frame_rates.most_common()
        if not ranked:
            return None
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            raise ValueError(
                f"the videos under {self.root} have no single most common frame rate "
                f"({describe_rates(ranked)})"
            )
        return ranked[0][0]

    def _skip(self, relative_path: str, error: Exception) -> None:
        with self._lock:
            if relative_path in self.skipped_paths:
                return
            self.skipped_paths.append(relative_path)
        logger.warning("skipping unreadable file %s: %s", self.root / relative_path, error)

    def _probe(self, relative_path: str) -> bool:
        try:
            _, self.frame_rates[relative_path] = read_video(self.root / relative_path, max_frames=1)
        except VideoReadError as error:
            self._skip(relative_path, error)
            return False
        return True

    def __len__(self) -> int:
        return len(self._entries) if self.num_random_clips is None else self.num_random_clips

    def _whole_file(self, relative_path: str) -> np.ndarray:
        """Every frame of a file, decoded once per source (random clips re-read it often)."""
        with self._decode_lock:
            if relative_path not in self._decoded:
                self._decoded[relative_path] = read_video(self.root / relative_path)[0]
            return self._decoded[relative_path]

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        rng = np.random.default_rng((self.seed, index))
        # Walk forward from index so a file that breaks late always maps to the same item.
        for offset in range(len(self._entries)):
            relative_path, caption = self._entries[(index + offset) % len(self._entries)]
            if relative_path in self.skipped_paths:
                continue
            try:
                if self.num_random_clips is None:
                    video, _ = read_video(self.root / relative_path, max_frames=self.num_frames)
                else:
                    video = self._whole_file(relative_path)
            except VideoReadError as error:
                self._skip(relative_path, error)
                continue
            if self.height is None:  # native size: the frames as decoded, a short clip short
                if self.num_random_clips is not None:
                    start = int(rng.integers(0, max(1, len(video) - self.num_frames + 1)))
                    video = video[start : start + self.num_frames]
            elif self.num_random_clips is None:
                video = center_crop_resize(video, self.height, self.width)  # resize, then loop
                video = loop_to_length(video, self.num_frames)
            else:
                video = random_window_crop(
                    video, self.num_frames, self.height, self.width, rng, self.min_crop_scale
                )
            fps = self.frame_rates[relative_path]
            return {"video": video, "caption": caption, "path": relative_path, "fps": fps}
        raise ValueError(f"no readable file left under {self.root}; skipped: {self.skipped_paths}")

    # grain pickles sources into worker processes; a lock cannot be pickled, so make a new one.
    # The decoded frames stay behind too: a copy decodes again on first use.
    def __getstate__(self) -> dict:
        unpicklable = ("_lock", "_decode_lock", "_decoded")
        return {key: value for key, value in self.__dict__.items() if key not in unpicklable}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._decode_lock, self._decoded = threading.Lock(), threading.Lock(), {}

    def __repr__(self) -> str:
        return (
            f"VideoFolderSource(root={str(self.root)!r}, num_frames={self.num_frames}, "
            f"height={self.height}, width={self.width}, captions_file={self.captions_file!r}, "
            f"num_random_clips={self.num_random_clips}, seed={self.seed}, "
            f"min_crop_scale={self.min_crop_scale})"
        )
