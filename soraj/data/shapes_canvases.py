"""Shapes clips on several canvases (wide, tall, square) in one grain source, for native-size
training: clip i is drawn at canvases[i % len(canvases)]."""

import grain
import numpy as np

from soraj.data.shapes import (  # the private checks keep the error messages of ShapesSource
    MIN_CANVAS,
    SPLITS,
    _check_choice,
    _check_int,
    clip_item,
)


def _check_canvases(canvases) -> tuple[tuple[int, int], ...]:
    """canvases as a tuple of (height, width) int pairs, each side >= MIN_CANVAS."""
    expected = (
        f"a non-empty sequence of (height, width) integer pairs, each side >= {MIN_CANVAS}, "
        "e.g. ((32, 64), (64, 32))"
    )
    if isinstance(canvases, str | bytes) or not hasattr(canvases, "__len__") or not canvases:
        raise ValueError(f"canvases must be {expected}; got {canvases!r}.")
    checked = []
    for canvas in canvases:
        sides = tuple(canvas) if hasattr(canvas, "__len__") else (canvas,)
        if len(sides) != 2 or not all(
            isinstance(side, int | np.integer) and not isinstance(side, bool) and side >= MIN_CANVAS
            for side in sides
        ):
            raise ValueError(f"canvases must be {expected}; entry {canvas!r} is not.")
        checked.append((int(sides[0]), int(sides[1])))
    return tuple(checked)


class ShapesCanvasSource(grain.sources.RandomAccessDataSource):
    """num_clips captioned clips; clip i is a pure function of (seed, i) and is drawn at
    canvases[i % len(canvases)]. With one canvas it equals ShapesSource at that canvas: both
    draw the scene and its placement from default_rng((seed, i)) in the same order."""

    def __init__(
        self, num_clips: int, canvases, num_frames: int, seed: int = 0, split: str = "train"
    ):
        _check_int("num_clips", num_clips, 1)
        self.canvases = _check_canvases(canvases)
        _check_int("num_frames", num_frames, 1)
        _check_int("seed", seed, 0)
        _check_choice("split", split, SPLITS)
        self.num_clips, self.num_frames = int(num_clips), int(num_frames)
        self.seed, self.split = int(seed), split

    def __len__(self) -> int:
        return self.num_clips

    def _checked_index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"Clip index must be an integer, got {type(index).__name__}.")
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"Clip index {index} out of range for {self.num_clips} clips.")
        return int(index) % self.num_clips

    def canvas(self, index: int) -> tuple[int, int]:
        """(height, width) of clip `index`, known without rendering it (for packing plans)."""
        return self.canvases[self._checked_index(index) % len(self.canvases)]

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        height, width = self.canvas(index)
        return clip_item(self.seed, index, self.num_frames, height, width, self.split)

    def __repr__(self) -> str:
        return (
            f"ShapesCanvasSource(num_clips={self.num_clips}, canvases={self.canvases}, "
            f"num_frames={self.num_frames}, seed={self.seed}, split={self.split!r})"
        )
