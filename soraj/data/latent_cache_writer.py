"""Writes a latent cache (see latent_cache.py): every clip of a source encoded once by a VAE, in
batches, into TFDS ArrayRecord records in clip order, then the null text and the metadata."""

import datetime
import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import shuffle as tfds_shuffle
from tqdm import tqdm

from soraj import checkpoint, exports
from soraj.data.latent_cache import (
    DATASET_NAME,
    FORMAT,
    METADATA_FILE,
    NULL_TEXT_FILE,
    RECORDS_DIR,
    vae_fingerprint,
)
from soraj.data.native_size import apply_native_size_plan, plan_native_size
from soraj.models.latent_codec import encode_clip

STAGING_SUFFIX = ".cache-latents-tmp"

# ---- The TFDS builder -------------------------------------------------------------------------


class LatentCacheBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One "train" split, written in the order the examples come, so record i is clip i."""

    name = DATASET_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    code_path = epath.Path(__file__)  # TFDS would look it up through importlib_resources

    def __init__(self, *, features, examples, **kwargs):
        self._features, self._examples = features, examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Normalised VAE latents with captions (soraj cache-latents).",
            features=self._features,
            disable_shuffling=True,  # grain shuffles at read time
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is computed, nothing is downloaded
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from self._examples

    # TFDS prints "downloading ... to <staging folder>" around a build; nothing is downloaded
    # and the folder is renamed at the end, so the command prints where the cache went instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


def _features(latent_shape, text_shape) -> tfds.features.FeaturesDict:
    features = {
        # Native-size caches have a (T', H', W') per clip; TFDS stores those as raw bytes.
        "latents": tfds.features.Tensor(
            shape=tuple(latent_shape),
            dtype=np.float32,
            encoding="bytes" if None in latent_shape else "none",
        ),
        "caption": tfds.features.Text(),
        "index": tfds.features.Scalar(dtype=np.int64),
    }
    if text_shape is not None:
        features["text_states"] = tfds.features.Tensor(shape=tuple(text_shape), dtype=np.float32)
        features["text_mask"] = tfds.features.Tensor(shape=text_shape[:1], dtype=np.bool_)
    return tfds.features.FeaturesDict(features)


# ---- Encoding ---------------------------------------------------------------------------------


def native_size_cut(description: dict):
    """For a native-size cache: clip i → the clip the native-size policy cuts from it, with the
    description's frames (all of them), token budget and patches; None for fixed-size caches."""
    if "token_budget" not in description:
        return None
    frames = description["num_frames"]

    def cut(index: int, video: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng((description["seed"], index))
        plan = plan_native_size(
            video.shape[:3],
            description["vae_factors"],
            description["patch_size"],
            description["token_budget"],
            frames,
            rng,
            min_frames=frames,
        )
        return apply_native_size_plan(video, plan)

    return cut


def _encoded_examples(codec, source, batch_size, text_encoder, cut=None):
    """(index, example) pairs: each clip (cut by `cut(index, video)` when given) through
    training's own one-clip encode (encode_clip), so the cache holds bit for bit what
    on-the-fly encoding computes; captions go to the text encoder batch_size at a time."""
    for start in tqdm(range(0, len(source), batch_size), desc="encoding", unit="batch"):
        indices = range(start, min(start + batch_size, len(source)))
        items = [source[i] for i in indices]
        videos = [x["video"] for x in items]
        if cut is not None:
            videos = [cut(i, v) for i, v in zip(indices, videos, strict=True)]
        latents = [np.asarray(encode_clip(codec, v)) for v in videos]  # (T', H', W', C) each
        captions = [str(x["caption"]) for x in items]
        if text_encoder is not None:
            states, mask = text_encoder.encode(captions)  # (B, M, E), (B, M)
        for j, caption in enumerate(captions):
            example = {"latents": latents[j], "caption": caption, "index": start + j}
            if text_encoder is not None:
                example.update(text_states=states[j], text_mask=mask[j])
            yield start + j, example


def estimated_record_bytes(latent_shape, description: dict, text_shape) -> int:
    """Bytes of one record, at most: its float32 latents (the largest clip of a native-size
    source), text states and mask, and the caption."""
    if None in latent_shape:  # native sizes: at most token_budget patches of the clip
        patch = int(np.prod(description["patch_size"]))
        latent_floats = description["token_budget"] * patch * latent_shape[-1]
    else:
        latent_floats = int(np.prod(latent_shape))
    text_bytes = 0 if text_shape is None else int(np.prod(text_shape)) * 4 + int(text_shape[0])
    return 4 * latent_floats + text_bytes + 1024


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory_for(cache_bytes: int, out) -> None:
    available = available_memory_bytes()
    if available is not None and cache_bytes > 0.8 * available:
        raise ValueError(
            f"the cache {out} would hold about {cache_bytes / 2**30:.1f} GiB, which the writer "
            f"keeps in memory until it is written, but only {available / 2**30:.1f} GiB are "
            "free; cache fewer clips (--num-clips) or free memory"
        )


def write_latent_cache(
    out, codec, source, description: dict, batch_size: int, vae_dir, text_encoder=None
) -> Path:
    """Encodes every clip of source into the new cache folder `out` and returns it. The folder
    appears only when complete: everything is written to a staging folder, then renamed."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists; give a new directory for the cache")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive int, got {batch_size!r}")
    if text_encoder is not None and text_encoder.trainable:
        raise ValueError("only a frozen text encoder's states can be cached (minilm), not bytes")
    cut = native_size_cut(description)
    if cut is None:  # every clip has the description's size
        size = (description["num_frames"], description["height"], description["width"])
        codec.check_shape(*size)
        latent_shape = list(codec.latent_shape(*size))  # (T', H', W', C)
    else:  # each clip keeps its own (T', H', W')
        latent_shape = [None, None, None, codec.latent_channels]
    vae_stored = exports.load_export_config(vae_dir, "vae")
    metadata = {
        "format": FORMAT,
        "num_records": len(source),
        "latent_shape": latent_shape,
        "latent_dtype": "float32",
        "encode_batch_size": batch_size,
        "source": description,
        "text": None,
        "vae": {
            "fingerprint": vae_fingerprint(codec),
            "export": str(Path(vae_dir).absolute()),
            "step": vae_stored.get("step"),
            "code_version": vae_stored.get("code_version"),
        },
        "code_version": checkpoint.code_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    text_shape = None
    if text_encoder is not None:
        null_states, null_mask = text_encoder.null_text()  # (M, E), (M,)
        text_shape = null_states.shape
        metadata["text"] = dict(
            encoder="minilm", max_tokens=text_encoder.max_tokens, width=text_shape[1]
        )

    staging = out.with_name(out.name + STAGING_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted run; never a finished cache
    staging.mkdir(parents=True)
    tfds.display_progress_bar(False)  # the encoding bar says all there is
    record_bytes = estimated_record_bytes(latent_shape, description, text_shape)
    check_memory_for(record_bytes * len(source), out)
    builder = LatentCacheBuilder(
        features=_features(metadata["latent_shape"], text_shape),
        examples=_encoded_examples(codec, source, batch_size, text_encoder, cut),
        data_dir=str(staging / RECORDS_DIR),
        file_format="array_record",
    )
    # TFDS gathers a split's records in memory and spills past 1 GB to disk buckets through
    # TensorFlow's file API, which this project does not install: the limit is raised to hold
    # this cache (checked against the free memory above), and set back afterwards.
    default_limit = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(default_limit, int(1.25 * record_bytes * len(source)))
    try:
        builder.download_and_prepare()
    finally:
        tfds_shuffle.MAX_MEM_BUFFER_SIZE = default_limit
    shutil.rmtree(staging / RECORDS_DIR / "downloads", ignore_errors=True)
    metadata["records"] = str(Path(builder.data_dir).relative_to(staging))
    if text_encoder is not None:
        np.savez(staging / NULL_TEXT_FILE, states=null_states, mask=null_mask)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    os.replace(staging, out)
    return out
