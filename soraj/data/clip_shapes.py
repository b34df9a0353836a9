"""Training clips of several shapes: (frames, height, width, batch_size) each, frames = 1 for
images, with one deterministic, checkpointable batch iterator per shape (Shapes or a video
folder)."""

import dataclasses

import ml_collections

from soraj.data.pipeline import batch_iterator
from soraj.data.shapes import ShapesSource
from soraj.data.video_folder import VideoFolderSource

# ---- Clip shapes ----


@dataclasses.dataclass(frozen=True)
class ClipShape:
    frames: int
    height: int
    width: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def clip_shapes(config: ml_collections.ConfigDict) -> tuple[ClipShape, ...]:
    """config.data.clip_shapes, or the single-shape fields as (videos, images) when it is None
    (see soraj/configs/vae.py)."""
    data = config.data
    if data.clip_shapes is None:
        num_images = int(round(config.batch_size * data.image_fraction))
        return (
            ClipShape(data.num_frames, data.height, data.width, config.batch_size - num_images),
            ClipShape(1, data.height, data.width, max(1, num_images)),
        )
    shapes = []
    for entry in data.clip_shapes:
        values = tuple(entry)
        if len(values) != 4 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(
                "each entry of config.data.clip_shapes must be 4 ints (frames, height, width, "
                f"batch_size), got {entry!r}"
            )
        shapes.append(ClipShape(*values))
    return tuple(shapes)


# ---- Iterators ----


def make_iterators(config, shapes: tuple[ClipShape, ...]) -> dict:
    """{shape name: batch iterator}; shape i reads with seed config.seed + i and shuffles with
    config.seed + 7·i (the two-shape Shapes configs thus read what they always did)."""
    data, iterators = config.data, {}
    for index, shape in enumerate(shapes):
        seed = config.seed + index
        if data.source == "shapes":
            source = ShapesSource(
                data.num_clips, shape.frames, shape.height, shape.width, seed=seed, split="all"
            )
        else:
            source = VideoFolderSource(
                data.folder,
                shape.frames,
                shape.height,
                shape.width,
                num_random_clips=data.num_clips,
                seed=seed,
                min_crop_scale=data.min_crop_scale,
            )
        iterators[shape.name] = batch_iterator(
            source, shape.batch_size, config.seed + 7 * index, num_threads=data.read_threads
        )
    return iterators
