"""The latent cache: a dataset encoded once by a VAE into a TFDS ArrayRecord dataset of
normalised latents, captions and, optionally, frozen text states, so DiT training reads latents
instead of running the VAE (and the text encoder) on every batch.

A cache folder holds records/ (the TFDS dataset), null_text.npz (the null caption's states,
for caption dropout) and latent_cache.json, written last: it names the VAE by a fingerprint of
its weights and normalisation, so training refuses latents from any other VAE.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

METADATA_FILE = "latent_cache.json"
NULL_TEXT_FILE = "null_text.npz"
RECORDS_DIR = "records"
DATASET_NAME = "soraj_latents"
FORMAT = "soraj-latent-cache-v1"


# ---- What made the cache ----------------------------------------------------------------------


def vae_fingerprint(codec) -> str:
    """sha256 of the VAE's config, latent normalisation and weights. Latents are only
    meaningful to the decoder of the VAE that made them, so a cache is tied to this value."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(codec.config), sort_keys=True).encode())
    if codec.frame_fold != 1:  # caches made before the fold existed keep their fingerprint
        digest.update(f"latent_frame_fold={codec.frame_fold}".encode())
    digest.update(np.asarray(codec.shift, np.float32).tobytes())
    digest.update(np.asarray(codec.scale, np.float32).tobytes())
    for path, leaf in jax.tree_util.tree_flatten_with_path(codec.params)[0]:  # keys sorted
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(leaf, np.float32).tobytes())
    return digest.hexdigest()


def shapes_description(num_clips, num_frames, height, width, seed, split) -> dict:
    """The fields that make a Shapes source: a cache records them; training compares them."""
    return dict(
        source="shapes",
        num_clips=int(num_clips),
        num_frames=int(num_frames),
        height=int(height),
        width=int(width),
        seed=int(seed),
        split=split,
    )


def canvases_description(
    num_clips, num_frames, canvases, seed, split, token_budget, vae_factors, patch_size
) -> dict:
    """The fields that make a native-size cache of ShapesCanvasSource clips: each clip was cut
    by the native-size policy (soraj/data/native_size.py) to num_frames frames within
    token_budget patches of patch_size, once, when the cache was written."""
    return dict(
        source="shapes_canvases",
        num_clips=int(num_clips),
        num_frames=int(num_frames),
        canvases=[[int(h), int(w)] for h, w in canvases],
        seed=int(seed),
        split=split,
        token_budget=int(token_budget),
        vae_factors=[int(f) for f in vae_factors],
        patch_size=[int(p) for p in patch_size],
    )


# ---- Reading ----------------------------------------------------------------------------------


class LatentCacheSource(grain.sources.RandomAccessDataSource):
    """Record i: {"latents": f32 (T', H', W', C), "caption": str, "index": int} and, when asked,
    "text_states" f32 (M, E) and "text_mask" bool (M,)."""

    def __init__(self, records: Path, text_states: bool):
        self.records, self.text_states = records, text_states
        self._data = tfds.builder_from_directory(str(records)).as_data_source(split="train")

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        record = self._data[index]
        item = {
            "latents": record["latents"],
            "caption": record["caption"].decode("utf-8"),  # TFDS stores Text as utf-8 bytes
            "index": int(record["index"]),
        }
        if self.text_states:
            item.update(text_states=record["text_states"], text_mask=record["text_mask"])
        return item

    def __repr__(self) -> str:
        return f"LatentCacheSource({str(self.records)!r}, text_states={self.text_states})"


@dataclasses.dataclass(frozen=True)
class LatentCache:
    path: Path
    metadata: dict

    @classmethod
    def open(cls, path) -> "LatentCache":
        path = Path(path)
        if not (path / METADATA_FILE).is_file():
            raise ValueError(
                f"{path} is not a latent cache: it has no {METADATA_FILE} "
                "(write one with `soraj cache-latents`)"
            )
        metadata = json.loads((path / METADATA_FILE).read_text())
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"latent cache {path} has format {metadata.get('format')!r}; this code reads "
                f"{FORMAT!r}: rebuild it with `soraj cache-latents`"
            )
        return cls(path, metadata)

    @property
    def has_text_states(self) -> bool:
        return self.metadata["text"] is not None

    def check_vae(self, codec, vae_dir) -> None:
        stored = self.metadata["vae"]
        if stored["fingerprint"] != vae_fingerprint(codec):
            raise ValueError(
                f"latent cache {self.path} was encoded by a different VAE (the export at "
                f"{stored['export']}, step {stored['step']}) than {vae_dir}: its latents mean "
                f"nothing to this VAE's decoder. Rebuild the cache with "
                f"`soraj cache-latents --vae {vae_dir} ...` or train with the VAE it was made by"
            )

    def check_source(self, expected: dict) -> None:
        stored = self.metadata["source"]
        differ = [
            k for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)
        ]
        if differ:
            listed = ", ".join(
                f"{k}: cache {stored.get(k)!r}, config {expected.get(k)!r}" for k in differ
            )
            raise ValueError(
                f"latent cache {self.path} holds another dataset than the config describes "
                f"({listed}); set the config to match (config.seed is the Shapes seed) or "
                "rebuild the cache"
            )

    def check_text(self, max_tokens: int) -> None:
        cached = self.metadata["text"]["max_tokens"]
        if cached != max_tokens:
            raise ValueError(
                f"latent cache {self.path} holds MiniLM states of {cached} tokens, the config "
                f"asks for max_tokens={max_tokens}: set config.text.max_tokens={cached} or "
                "rebuild the cache with --max-tokens"
            )

    def null_text(self) -> tuple[np.ndarray, np.ndarray]:
        """The null caption's states (M, E) and mask (M,), what caption dropout trains on."""
        with np.load(self.path / NULL_TEXT_FILE) as stored:
            return stored["states"], stored["mask"]

    def source(self, text_states: bool) -> LatentCacheSource:
        if text_states and not self.has_text_states:
            raise ValueError(f"latent cache {self.path} holds no text states")
        return LatentCacheSource(self.path / self.metadata["records"], text_states)
