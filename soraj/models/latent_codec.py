"""A trained VAE with its latent normalisation: uint8 video ↔ normalised latents.

The DiT always sees normalised latents, (z - shift) / scale per channel, with the shift and
scale measured on the VAE's training data and stored in its export.
"""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj import exports
from soraj.models.vae import VAEConfig, VideoVAE, check_video_shape, latent_shape
from soraj.models.vae_memory_plan import decode_within_budget, encode_within_budget


def vae_config_from_dict(fields: dict) -> VAEConfig:
    tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
    return VAEConfig(**{**fields, **tuples})


def video_to_model_range(video: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return video.astype(jnp.float32) / 127.5 - 1.0


def model_range_to_video(x: jax.Array) -> jax.Array:
    """float [-1, 1] → uint8 [0, 255], clipping what the decoder overshoots."""
    return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def check_finite(name: str, array) -> None:
    """Host-side check; inside jit a NaN would only surface as a NaN video much later."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf); all must be finite.")


@dataclasses.dataclass(frozen=True)
class LatentCodec:
    config: VAEConfig
    params: dict
    shift: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)

    @property
    def model(self) -> VideoVAE:
        return VideoVAE(self.config)

    @classmethod
    def load(cls, directory: str | Path) -> "LatentCodec":
        """Loads the VAE export that exports.find_export finds at directory (the export, a
        bundle's vae/, a `soraj train-vae` workdir's export/ or a `soraj train` workdir's
        export/vae/)."""
        directory = exports.find_export(directory, "vae")
        stored = exports.load_export_config(
            directory, "vae", required=("vae_config", "latent_shift", "latent_scale")
        )
        with exports.config_errors(directory):
            config = vae_config_from_dict(stored["vae_config"])
            shift = np.asarray(stored["latent_shift"], np.float32)  # (C,)
            scale = np.asarray(stored["latent_scale"], np.float32)  # (C,)
        video = jnp.zeros((1, 1 + config.temporal_factor, 16, 16, 3))
        abstract = jax.eval_shape(lambda: VideoVAE(config).init(jax.random.key(0), video)["params"])
        params, _ = exports.load_export(directory, abstract)
        return cls(config, params, shift, scale)

    def check_shape(self, num_frames: int, height: int, width: int):
        check_video_shape(self.config, num_frames, height, width)

    def latent_shape(self, num_frames: int, height: int, width: int):
        return latent_shape(self.config, num_frames, height, width)

    def encode(self, params, video: jax.Array) -> jax.Array:
        """uint8 (B, T, H, W, 3) → normalised latent means (B, T', H', W', C). Jittable."""
        mean, _ = self.model.apply(
            {"params": params}, video_to_model_range(video), method=VideoVAE.encode
        )
        return (mean - self.shift) / self.scale

    def decode(self, params, latents: jax.Array) -> jax.Array:
        """normalised latents (B, T', H', W', C) → uint8 (B, T, H, W, 3). Jittable."""
        z = latents * self.scale + self.shift
        return model_range_to_video(self.model.apply({"params": params}, z, method=VideoVAE.decode))

    # ---- Host-side, memory-bounded entry points ----

    def encode_within_budget(self, video, memory_budget: int) -> jax.Array:
        """uint8 or [-1, 1] float (B, T, H, W, 3) → normalised latent means, cut into the time
        chunks and spatial tiles the planner picks for memory_budget bytes."""
        video = np.asarray(video)
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must have shape (B, T, H, W, 3), got {video.shape}.")
        check_finite("video", video)
        self.check_shape(*video.shape[1:4])
        x = video_to_model_range(video) if video.dtype == np.uint8 else jnp.asarray(video)
        mean, _ = encode_within_budget(self.model, self.params, x, memory_budget)
        return (mean - self.shift) / self.scale

    def decode_within_budget(self, latents, memory_budget: int) -> jax.Array:
        """normalised latents (B, T', H', W', C) → uint8 video, planned for memory_budget."""
        latents = np.asarray(latents)
        c = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[-1] != c:
            raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")
        check_finite("latents", latents)
        z = latents * self.scale + self.shift
        return model_range_to_video(decode_within_budget(self.model, self.params, z, memory_budget))


# ---- One clip at a time ----


@functools.partial(jax.jit, static_argnames="config")
def _encode_clip(params, shift, scale, video, *, config):
    return LatentCodec(config, params, shift, scale).encode(params, video[None])[0]


def encode_clip(codec: LatentCodec, video) -> jax.Array:
    """uint8 (T, H, W, 3) → normalised latents (T', H', W', C), one clip per call. XLA picks
    convolution algorithms by batch shape, so training's pipeline and the latent cache both
    encode this way: cached latents then equal online ones bit for bit. Compiled once per
    (VAE config, clip shape) for the whole process."""
    return _encode_clip(codec.params, codec.shift, codec.scale, video, config=codec.config)
