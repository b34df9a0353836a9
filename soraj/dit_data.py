"""The DiT trainer's data: the decoded-clip source config.data names (or a latent cache), the
packed host batches of soraj/data/packed_pipeline.py over logical data shards, and the
BatchBuilder that turns a host batch into device arrays (docs/architecture.md §4)."""

import math
from pathlib import Path

import numpy as np

from soraj import sharding
from soraj.data.caption_versions import (
    DEFAULT_CAPTION_MIX,
    RecaptionedSource,
    check_caption_mix,
    check_mix_fields,
)
from soraj.data.class_folder import ClassFolderSource
from soraj.data.data_shards import HostBatches
from soraj.data.latent_cache import LatentCache, canvases_description, shapes_description
from soraj.data.packed_pipeline import caption_from_bytes, spec_from_config
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.data.shapes import ShapesSource
from soraj.data.shapes_canvases import ShapesCanvasSource
from soraj.data.tfds_shapes import SPLITS as TFDS_SPLITS
from soraj.data.tfds_shapes import load_shapes_dataset
from soraj.data.video_folder import VideoFolderSource, describe_rates
from soraj.models.conditioning import TextConfig
from soraj.models.latent_codec import LatentCodec

# ---- Building packed batches ----------------------------------------------------------------


DEVICE_KEYS = ("latents", "coords", "segment_ids", "cond_mask", "cond_t", "mask_type", "grid")
CONDITIONING_KEYS = {"text": ("text", "text_mask"), "class": ("labels",)}


class BatchBuilder:
    """Host batches of packed_pipeline → device batches (docs/architecture.md §4). Captions of a
    batch are encoded here in one call; records of a latent cache may bring text states instead."""

    def __init__(self, text_encoder, mesh, conditioning: str = "text"):
        self.text_encoder = text_encoder  # None when batches bring text states, or labels
        self.mesh, self.conditioning = mesh, conditioning
        self.class_names: tuple[str, ...] = ()
        self.fps: float | None = None  # the training clips' frame rate (training_fps)

    def text_inputs(self, host_batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, M, ...) text inputs and (B, S, M) mask; unused slots get zeros and no mask."""
        if "text" in host_batch:
            return host_batch["text"], host_batch["text_mask"]
        used = host_batch["grid"][..., 0] > 0  # (B, S)
        captions = [caption_from_bytes(slot) for slot in host_batch["caption"][used]]
        states, mask = self.text_encoder.encode(captions)  # (n, M, ...), (n, M)
        states, mask = np.asarray(states), np.asarray(mask)
        text = np.zeros((*used.shape, *states.shape[1:]), states.dtype)
        text_mask = np.zeros((*used.shape, mask.shape[1]), bool)
        text[used], text_mask[used] = states, mask
        return text, text_mask

    def __call__(self, host_batch: dict) -> dict:
        batch = dict(host_batch)
        if self.conditioning == "text":
            batch["text"], batch["text_mask"] = self.text_inputs(host_batch)
        keys = DEVICE_KEYS + CONDITIONING_KEYS[self.conditioning]
        return sharding.shard_batch({k: batch[k] for k in keys}, self.mesh)


def host_batch_metrics(host_batch: dict) -> dict:
    """What the data did this step: samples packed, padding share, bad records so far."""
    return {
        "samples": int(np.sum(host_batch["grid"][..., 0] > 0)),
        "padding": float(np.mean(host_batch["segment_ids"] == 0)),
        "bad_records": int(host_batch["bad_records"]),
    }


# Sources that read a dataset a soraj command wrote, and the command.
DATASET_WRITERS = {"shapes_tfds": "soraj make-dataset shapes", "recaptioned": "soraj recaption"}


def training_source(config):
    """The decoded-clip source config.data.source names (the latent cache aside)."""
    data = config.data
    if data.source == "shapes":
        return ShapesSource(
            data.num_clips, data.num_frames, data.height, data.width, config.seed, data.split
        )
    if data.source == "shapes_canvases":
        canvases = tuple(tuple(c) for c in data.canvases)
        return ShapesCanvasSource(
            data.num_clips, canvases, data.num_frames, config.seed, data.split
        )
    if data.source == "video_folder":  # ROOT/captions.jsonl, clips at their native size
        clips = data.num_random_clips or None
        return VideoFolderSource(
            data.root, data.max_frames, None, None, num_random_clips=clips, seed=config.seed
        )
    if data.source == "class_folder":
        return ClassFolderSource(data.root, data.max_frames)
    if data.source in DATASET_WRITERS and not data.root:
        raise ValueError(
            f"config.data.source={data.source!r} needs config.data.root: the folder "
            f"`{DATASET_WRITERS[data.source]}` wrote"
        )
    if data.source == "shapes_tfds":  # `soraj make-dataset shapes` output, clips at its size
        if data.split not in TFDS_SPLITS:
            raise ValueError(
                f"config.data.split={data.split!r} for source 'shapes_tfds'; allowed: "
                f"{', '.join(TFDS_SPLITS)} (the dataset's splits)"
            )
        return load_shapes_dataset(data.root, data.split)
    if data.source == "recaptioned":  # `soraj recaption` output; "caption" is the dense one
        return RecaptionedSource(data.root, data.max_frames, data.split)
    raise ValueError(
        f"config.data.source={data.source!r}; allowed: shapes, shapes_canvases, "
        "video_folder, class_folder, shapes_tfds, recaptioned"
    )


# ---- The training clips' frame rate ------------------------------------------------------------

# Sources of Shapes clips, which play at the Shapes world's rate (a recaptioned folder is one
# when its input was a Shapes TFDS dataset).
SHAPES_SOURCES = ("shapes", "shapes_canvases", "shapes_tfds")
FPS_EXAMPLES = "e.g. 8, 24 or 29.97"
# Rates this close are one rate: 29.97 given for NTSC footage's 30000/1001 (29.97003).
FPS_TOLERANCE = 1e-4


def check_fps(data) -> float | None:
    """config.data.fps as given: None (the source's rate) or a finite number of frames per
    second > 0. A class folder has no rate of its own, so it needs one given. Checked before
    any work; training_fps resolves an unset rate once the source is open."""
    fps = data.fps
    if fps is not None and (
        isinstance(fps, bool)
        or not isinstance(fps, int | float)
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ValueError(
            f"config.data.fps must be a finite number of frames per second > 0 ({FPS_EXAMPLES}), "
            f"or unset for the source's own rate; got {fps!r}"
        )
    if fps is None and data.source == "class_folder":
        raise ValueError(
            "config.data.source='class_folder' needs config.data.fps: its clips state no frame "
            "rate the trainer can trust, and the export records the one given (`soraj "
            f"generate` writes videos at it); give the footage's, {FPS_EXAMPLES}"
        )
    return None if fps is None else float(fps)


def footage_fps(footage: VideoFolderSource, given: float | None) -> float:
    """The frame rate of a video folder's footage: its videos' most common rate, which a rate
    given in config.data.fps must match. A folder whose top rates tie takes a given one of
    them; a folder of stills takes any given rate and refuses to guess one."""
    counts = footage.video_frame_rates
    ranked = counts.most_common()
    if not ranked:
        if given is None:
            raise ValueError(
                f"the files under {footage.root} are all stills, which have no frame rate: give "
                f"the rate the model should record as config.data.fps ({FPS_EXAMPLES})"
            )
        return given
    if given is None:
        try:
            return footage.frame_rate  # the most common rate; a tie raises, naming the rates
        except ValueError as error:
            raise ValueError(
                f"{error}; give the rate the model should record as config.data.fps"
            ) from error
    top = [rate for rate, count in ranked if count == ranked[0][1]]
    if any(math.isclose(given, rate, rel_tol=FPS_TOLERANCE) for rate in top):
        return given
    dominant = "the most common rate" if len(top) == 1 else "one of the most common rates"
    raise ValueError(
        f"config.data.fps = {given:g} disagrees with the footage under {footage.root}, whose "
        f"videos play at {describe_rates(ranked)}; give {dominant} ("
        f"{' or '.join(f'{rate:g}' for rate in top)}) or leave config.data.fps unset"
    )


def training_fps(data, source) -> float:
    """The frame rate the model trains at and its export records (trained_on.fps): the Shapes
    rate for Shapes clips (from a latent cache too, which is made of Shapes clips), the
    footage's for a video folder (recaptioned or not), the one given for a class folder. A rate
    given in config.data.fps wins for Shapes clips, which have no rate but the one they play
    at, and must match real footage."""
    given = check_fps(data)
    recaptioned = data.source == "recaptioned"
    if data.source in SHAPES_SOURCES or (recaptioned and source.kind == "shapes_tfds"):
        return float(SHAPES_FPS) if given is None else given
    if data.source == "video_folder":
        return footage_fps(source, given)
    if recaptioned:  # a recaptioned video folder: the footage is its input folder's
        return footage_fps(VideoFolderSource(source.input, 1, None, None), given)
    return given  # class_folder: check_fps required one


def check_classes(config, source) -> None:
    """A class-conditional model needs a labelled source with exactly its classes, and the
    reverse; checked before any training work."""
    model_classes = config.model.num_classes if config.model.conditioning == "class" else 0
    source_classes = len(getattr(source, "class_names", ()))
    if model_classes != source_classes:
        raise ValueError(
            f"config.model.conditioning={config.model.conditioning!r} with num_classes="
            f"{config.model.num_classes}, but config.data.source={config.data.source!r} has "
            f"{source_classes} classes; class-conditional models train on source 'class_folder' "
            "with --config.model.num_classes equal to its class count"
        )


def cached_dataset_description(config, codec: LatentCodec, patch_size) -> dict:
    """What a latent cache for this config must have been made from: the 'shapes' source at
    its one size, or 'shapes_canvases' clips cut to native size once, at num_frames frames."""
    data = config.data
    if data.source == "shapes":
        return shapes_description(
            data.num_clips, data.num_frames, data.height, data.width, config.seed, data.split
        )
    if data.source != "shapes_canvases":
        raise ValueError(
            f"config.data.latent_cache is made from source 'shapes' or 'shapes_canvases', "
            f"not {data.source!r}"
        )
    if not data.min_frames == data.max_frames == data.num_frames:
        raise ValueError(
            "a native-size latent cache holds one length per clip: set config.data.min_frames "
            f"and max_frames to num_frames={data.num_frames} (they are {data.min_frames} and "
            f"{data.max_frames})"
        )
    return canvases_description(
        data.num_clips,
        data.num_frames,
        data.canvases,
        config.seed,
        data.split,
        data.token_budget,
        (codec.temporal_factor, codec.spatial_factor),
        patch_size,
    )


def training_data(config, codec: LatentCodec, vae_dir: Path, text: TextConfig, patch_size, mesh):
    """(host batch iterator, BatchBuilder): packed rows of native-size clips encoded on the fly,
    or of the records of config.data.latent_cache, which must come from this VAE and this
    config's dataset."""
    data = config.data
    caption_mix = check_caption_mix(data.get("caption_mix", DEFAULT_CAPTION_MIX))
    null_text = None
    if data.latent_cache:
        dataset = cached_dataset_description(config, codec, patch_size)
        cache = LatentCache.open(data.latent_cache)
        cache.check_vae(codec, vae_dir)
        cache.check_source(dataset)
        cached_text = cache.has_text_states and not text.trainable  # byte ids are not states
        if cached_text:
            cache.check_text(text.max_tokens)
            null_text = cache.null_text()
        source = cache.source(text_states=cached_text)
    else:
        source = training_source(config)
    fps = training_fps(data, source)
    check_classes(config, source)
    check_mix_fields(caption_mix, source)
    factors = (codec.temporal_factor, codec.spatial_factor)
    num_classes = len(getattr(source, "class_names", ()))
    spec = spec_from_config(data, factors, patch_size, config.batch_size, config.seed, num_classes)
    iterator = HostBatches(source, spec, codec, null_text, data.shards)
    conditioning = config.model.conditioning
    needs_encoder = null_text is None and conditioning == "text"
    text_encoder = text.host_encoder() if needs_encoder else None
    build = BatchBuilder(text_encoder, mesh, conditioning)
    build.class_names = tuple(getattr(source, "class_names", ()))  # label order, for exports
    build.fps = fps  # the clips' frame rate, for exports (trained_on.fps) and samples
    return iterator, build
