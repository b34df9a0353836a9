"""A trained VAE with its latent normalisation: uint8 video ↔ normalised latents.

The DiT always sees normalised latents, (z - shift) / scale per channel, with the shift and
scale measured on the VAE's training data and stored in its export.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from soraj import checkpoint
from soraj.models.vae import VAEConfig, VideoVAE, check_video_shape, latent_shape


def vae_config_from_dict(fields: dict) -> VAEConfig:
    tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
    return VAEConfig(**{**fields, **tuples})


def video_to_model_range(video: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return video.astype(jnp.float32) / 127.5 - 1.0


def model_range_to_video(x: jax.Array) -> jax.Array:
    """float [-1, 1] → uint8 [0, 255], clipping what the decoder overshoots."""
    return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


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
        """Loads a `soraj train-vae` export (WORKDIR/export or a shipped copy)."""
        stored = checkpoint.load_export_config(directory)
        if stored.get("kind") != "vae":
            raise ValueError(f"{directory} holds a {stored.get('kind')!r} export, not a VAE")
        config = vae_config_from_dict(stored["vae_config"])
        video = jnp.zeros((1, 1 + config.temporal_factor, 16, 16, 3))
        abstract = jax.eval_shape(lambda: VideoVAE(config).init(jax.random.key(0), video)["params"])
        params, _ = checkpoint.load_export(directory, abstract)
        return cls(
            config,
            params,
            np.asarray(stored["latent_shift"], np.float32),
            np.asarray(stored["latent_scale"], np.float32),
        )

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
