"""Class-labelled clips in the UCF-101 layout: ROOT/<class name>/<clip file>, one folder per
class, for class-conditional training (DiTConfig.conditioning = "class")."""

import pathlib

import grain

from soraj.data.video_io import GIF_SUFFIXES, IMAGE_SUFFIXES, read_video

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


class ClassFolderSource(grain.sources.RandomAccessDataSource):
    """Item i: {"video": uint8 (T, H, W, 3) at its native size, its first max_frames frames (an
    image is T = 1), "caption": the class name, "label": the class index}. Classes are the
    sorted folder names; files are taken in sorted order. A file that fails to decode raises
    here, and the training pipeline's ReplacingSource replaces and counts it."""

    def __init__(self, root, max_frames: int):
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
        self.root, self.max_frames = pathlib.Path(root), max_frames
        if not self.root.is_dir():
            raise ValueError(f"no class folder at {self.root}: expected ROOT/<class>/<clips>")
        suffixes = {*VIDEO_SUFFIXES, *GIF_SUFFIXES, *IMAGE_SUFFIXES}
        self.class_names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.items = [
            (path.relative_to(self.root).as_posix(), label)
            for label, name in enumerate(self.class_names)
            for path in sorted((self.root / name).iterdir())
            if path.suffix.lower() in suffixes
        ]
        if not self.items:
            raise ValueError(
                f"{self.root} holds no clips in class folders; expected ROOT/<class>/<file> with "
                f"a suffix in {sorted(suffixes)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        relative_path, label = self.items[int(index)]
        video, _ = read_video(self.root / relative_path, max_frames=self.max_frames)
        return {"video": video, "caption": self.class_names[label], "label": label}

    def __repr__(self) -> str:
        return f"ClassFolderSource({str(self.root)!r}, max_frames={self.max_frames})"
