"""A grain source over a folder of captioned videos and images; broken files are skipped."""

from __future__ import annotations

import json
import logging
import pathlib
import threading

import grain
import numpy as np
from skimage.transform import resize_local_mean

from soraj.data.video_io import READABLE_SUFFIXES, VideoReadError, read_video

logger = logging.getLogger(__name__)


# ---- Frames to a fixed size ----


def center_crop_resize(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crops the centre to height:width aspect, then area-resizes: (T, h, w, 3) -> (T, H, W, 3)."""
    src_h, src_w = video.shape[1:3]
    # Compare aspects with integer products so exact ratios never suffer float rounding.
    if src_w * height > src_h * width:
        crop_h, crop_w = src_h, max(1, round(src_h * width / height))
    else:
        crop_h, crop_w = max(1, round(src_w * height / width)), src_w
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


# ---- Source ----


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
    """Items {"video": uint8 (T, H, W, 3), "caption": str, "path": str} from captions.jsonl.

    Every listed file is probed once (first frame) at construction; unreadable ones are
    logged, counted in num_skipped / skipped_paths, and left out. A file that passes the
    probe but fails later is logged, counted and replaced by the next good item.
    """

    def __init__(
        self,
        root,
        num_frames: int,
        height: int,
        width: int,
        captions_file: str = "captions.jsonl",
    ):
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.root = pathlib.Path(root)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.captions_file = captions_file
        self.skipped_paths: list[str] = []
        self._lock = threading.Lock()
        self._entries = [e for e in _read_captions(self.root / captions_file) if self._probe(e[0])]
        if not self._entries:
            raise ValueError(
                f"no readable video or image under {self.root} "
                f"({len(self.skipped_paths)} listed in {captions_file}, all unreadable)"
            )

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_paths)

    def _skip(self, relative_path: str, error: Exception) -> None:
        with self._lock:
            if relative_path in self.skipped_paths:
                return
            self.skipped_paths.append(relative_path)
        logger.warning("skipping unreadable file %s: %s", self.root / relative_path, error)

    def _probe(self, relative_path: str) -> bool:
        try:
            read_video(self.root / relative_path, max_frames=1)
        except VideoReadError as error:
            self._skip(relative_path, error)
            return False
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        # Walk forward from index so a file that breaks late always maps to the same item.
        for offset in range(len(self)):
            relative_path, caption = self._entries[(int(index) + offset) % len(self)]
            if relative_path in self.skipped_paths:
                continue
            try:
                video, _ = read_video(self.root / relative_path, max_frames=self.num_frames)
            except VideoReadError as error:
                self._skip(relative_path, error)
                continue
            video = center_crop_resize(video, self.height, self.width)  # resize before looping
            return {
                "video": loop_to_length(video, self.num_frames),
                "caption": caption,
                "path": relative_path,
            }
        raise ValueError(f"no readable file left under {self.root}; skipped: {self.skipped_paths}")

    # grain pickles sources into worker processes; a lock cannot be pickled, so make a new one.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"VideoFolderSource(root={str(self.root)!r}, num_frames={self.num_frames}, "
            f"height={self.height}, width={self.width}, captions_file={self.captions_file!r})"
        )
