"""The datasets `soraj recaption` reads: a Shapes TFDS dataset or a folder of videos."""

from __future__ import annotations

import pathlib

import av
import numpy as np

from soraj.data.video_folder import _read_captions
from soraj.data.video_io import READABLE_SUFFIXES, VIDEO_SUFFIXES, VideoReadError, read_video


def spread_indices(num_frames: int, k: int) -> np.ndarray:
    """k frame indices evenly spread from the first frame to the last (fewer if T < k)."""
    return np.unique(np.linspace(0, num_frames - 1, k).round().astype(int))


def read_spread_frames(path: pathlib.Path, k: int) -> np.ndarray:
    """k frames spread over a file: uint8 (k', H, W, 3). A video is read twice, counting
    packets and then decoding up to the last wanted frame, so long footage never sits in
    memory whole."""
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        video = read_video(path)[0]
        return video[spread_indices(len(video), k)]
    try:
        with av.open(str(path)) as container:
            count = sum(1 for packet in container.demux(video=0) if packet.size)
        wanted = set(spread_indices(max(count, 1), k).tolist())
        frames = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if index >= max(wanted):
                    break
    except Exception as error:  # decoders raise many unrelated types
        raise VideoReadError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    if not frames:
        raise VideoReadError(f"cannot read {path}: it holds no decodable frames")
    return np.stack(frames)


class ShapesInput:
    """Every record of a Shapes TFDS dataset, split by split (train, then validation)."""

    kind = "shapes_tfds"

    def __init__(self, root: pathlib.Path):
        from soraj.data.tfds_shapes import SPLITS, load_shapes_dataset

        try:
            self.splits = {split: load_shapes_dataset(root, split) for split in SPLITS}
        except Exception as error:  # TFDS raises many types for a broken dataset
            raise ValueError(f"cannot read the Shapes dataset under {root}: {error}") from None
        self.path = next(iter(self.splits.values())).path  # the dataset folder itself
        self._keys = [(s, i) for s, source in self.splits.items() for i in range(len(source))]

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> dict:
        split, index = self._keys[i]
        return {"index": index, "split": split}

    def counts(self) -> dict:
        return {"splits": {split: len(source) for split, source in self.splits.items()}}

    def _record(self, i: int) -> tuple[str, np.ndarray]:
        split, index = self._keys[i]
        record = self.splits[split][index]
        # Datasets made before alt-text captions have only the exact caption.
        return record.get("caption_original", record["caption"]), record["video"]

    def original(self, i: int) -> str:
        return self._record(i)[0]

    def read(self, i: int, k: int) -> tuple[str, np.ndarray]:
        """(caption_original, video): k frames spread over the clip (all of a shorter one)."""
        original, video = self._record(i)  # (T, H, W, 3)
        return original, video[spread_indices(len(video), k)]


class VideoFolderInput:
    """The files of DIR/captions.jsonl, or, without it, every video and image under DIR
    (sorted by path, original caption "")."""

    kind = "video_folder"

    def __init__(self, root: pathlib.Path, skip: pathlib.Path | None = None):
        self.path = str(root)
        if (root / "captions.jsonl").is_file():
            entries = [(root / p, c) for p, c in _read_captions(root / "captions.jsonl")]
            missing = [str(p) for p, _ in entries if not p.is_file()]
            if missing:
                raise ValueError(
                    f"{root / 'captions.jsonl'} lists {len(missing)} missing files, e.g. "
                    f"{missing[0]}"
                )
        else:
            entries = [
                (p, "")
                for p in sorted(root.rglob("*"))
                if p.is_file()
                and p.suffix.lower() in READABLE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
                and not (skip and p.is_relative_to(skip))
            ]
        if not entries:
            raise ValueError(
                f"no dataset under {root}: neither a Shapes TFDS dataset (dataset_info.json), "
                f"nor a captions.jsonl with records, nor files of the allowed suffixes "
                f"{', '.join(READABLE_SUFFIXES)}"
            )
        self._entries = [(str(p.absolute()), c) for p, c in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, i: int) -> dict:
        return {"path": self._entries[i][0]}

    def counts(self) -> dict:
        return {}

    def original(self, i: int) -> str:
        return self._entries[i][1]

    def read(self, i: int, k: int) -> tuple[str, np.ndarray]:
        """(caption_original, video): k frames spread over the file (all of a shorter one).
        Raises VideoReadError for a file that cannot be decoded."""
        path, original = self._entries[i]
        return original, read_spread_frames(pathlib.Path(path), k)


def open_input(root, skip=None) -> ShapesInput | VideoFolderInput:
    """The input at root, told apart by its content; ValueError when it is neither."""
    root = pathlib.Path(root).absolute()
    if not root.is_dir():
        raise ValueError(f"--input {root} is not a folder; give a Shapes dataset or video folder")
    try:
        is_shapes = (root / "dataset_info.json").is_file() or any(
            root.glob("soraj_shapes/*/*/dataset_info.json")
        )
        return ShapesInput(root) if is_shapes else VideoFolderInput(root, skip)
    except OSError as error:
        raise ValueError(f"cannot read --input {root}: {error}") from None
