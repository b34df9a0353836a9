"""A trained VAE with its latent normalisation: uint8 video ↔ normalised latents.

The DiT always sees normalised latents, (z - shift) / scale per channel, with the shift and
scale measured on the VAE's training data and stored in its export.

An export may also fold time into channels (its "latent_frame_fold" f, default 1): after
normalising, every f consecutive latent frames become one latent frame of f·C channels,
causally, as a temporal VAE compresses: the first frame is a latent frame of its own (its
latents repeated f times), then frames 1..f, f+1..2f, ... So a per-frame VAE's latents reach
the DiT at the token count of a VAE with f× more temporal compression, while the VAE still
codes every frame on its own (no conv across frames, so a moving object leaves no ghost), and
everything after the codec (packing, prompting modes, sampling) sees an ordinary VAE with
temporal factor f × the VAE's. The fold is lossless; decoding averages the first frame's
copies.
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

ALLOWED_FRAME_FOLDS = (1, 2, 4, 8)


def vae_config_from_dict(fields: dict) -> VAEConfig:
    tuples = {k: tuple(v) for k, v in fields.items() if isinstance(v, list)}
    return VAEConfig(**{**fields, **tuples})


def check_frame_fold(frame_fold) -> int:
    if frame_fold not in ALLOWED_FRAME_FOLDS:
        raise ValueError(
            f"latent_frame_fold must be one of {ALLOWED_FRAME_FOLDS}, got {frame_fold!r}"
        )
    return int(frame_fold)


def stored_frame_fold(stored: dict) -> int:
    """The fold a VAE export's config records (1 for exports made before it existed)."""
    return check_frame_fold(stored.get("latent_frame_fold", 1))


def stored_factors(stored: dict) -> tuple[int, int]:
    """(temporal, spatial) factor of the latents the DiT sees, read from a VAE export's config
    without loading weights: the VAE's, times the fold in time."""
    config = vae_config_from_dict(stored["vae_config"])  # pixel patches included
    return config.temporal_factor * stored_frame_fold(stored), config.spatial_factor


# ---- Frame fold ----


def fold_frames(z: jax.Array, fold: int) -> jax.Array:
    """(B, 1+f·k, H, W, C) → (B, 1+k, H, W, f·C): the first frame repeated f times, then each
    f frames side by side on channels (frame-major)."""
    if fold == 1:
        return z
    b, t, h, w, c = z.shape
    first = jnp.tile(z[:, :1], (1, 1, 1, 1, fold))  # (B, 1, H, W, f·C)
    rest = z[:, 1:].reshape(b, (t - 1) // fold, fold, h, w, c)
    rest = rest.transpose(0, 1, 3, 4, 2, 5).reshape(b, (t - 1) // fold, h, w, fold * c)
    return jnp.concatenate([first, rest], axis=1)  # (B, 1+k, H, W, f·C)


def unfold_frames(z: jax.Array, fold: int) -> jax.Array:
    """(B, 1+k, H, W, f·C) → (B, 1+f·k, H, W, C); the first frame is its f copies' mean."""
    if fold == 1:
        return z
    b, t, h, w, fc = z.shape
    c = fc // fold
    first = z[:, :1].reshape(b, 1, h, w, fold, c).mean(axis=4)  # (B, 1, H, W, C)
    rest = z[:, 1:].reshape(b, t - 1, h, w, fold, c).transpose(0, 1, 4, 2, 3, 5)
    rest = rest.reshape(b, (t - 1) * fold, h, w, c)
    return jnp.concatenate([first, rest], axis=1)  # (B, 1+f·k, H, W, C)


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
    frame_fold: int = 1  # latent frames folded into channels (the module docstring)

    @property
    def model(self) -> VideoVAE:
        return VideoVAE(self.config)

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame the DiT sees (after the first)."""
        return self.config.temporal_factor * self.frame_fold

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the DiT sees."""
        return self.config.latent_channels * self.frame_fold

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
            frame_fold = stored_frame_fold(stored)
        video = jnp.zeros((1, 1 + config.temporal_factor, 16, 16, 3))
        abstract = jax.eval_shape(lambda: VideoVAE(config).init(jax.random.key(0), video)["params"])
        params, _ = exports.load_export(directory, abstract)
        return cls(config, params, shift, scale, frame_fold)

    def check_shape(self, num_frames: int, height: int, width: int):
        check_video_shape(self.config, num_frames, height, width)
        ft = self.temporal_factor
        if (num_frames - 1) % ft:
            raise ValueError(
                f"num_frames must be 1 + {ft}·k for k ≥ 0 (1, {1 + ft}, {1 + 2 * ft}, ...): "
                f"this VAE's latents fold {self.frame_fold} frames into one; got {num_frames}."
            )

    def latent_shape(self, num_frames: int, height: int, width: int):
        """(T', H', W', C) of the latents the DiT sees for a (num_frames, height, width) clip."""
        self.check_shape(num_frames, height, width)
        t, h, w, _ = latent_shape(self.config, num_frames, height, width)
        return (1 + (t - 1) // self.frame_fold, h, w, self.latent_channels)

    def normalise(self, mean: jax.Array) -> jax.Array:
        """The VAE's latent means (B, T, H, W, C) → the DiT's latents (normalised, folded)."""
        return fold_frames((mean - self.shift) / self.scale, self.frame_fold)

    def denormalise(self, latents: jax.Array) -> jax.Array:
        """The DiT's latents → what the VAE's decoder takes."""
        self.check_latents(latents)
        return unfold_frames(jnp.asarray(latents), self.frame_fold) * self.scale + self.shift

    def check_latents(self, latents) -> None:
        c = self.latent_channels
        if latents.ndim != 5 or latents.shape[-1] != c:
            raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")

    def encode(self, params, video: jax.Array) -> jax.Array:
        """uint8 (B, T, H, W, 3) → normalised latent means (B, T', H', W', C). Jittable."""
        self.check_shape(*video.shape[1:4])
        mean, _ = self.model.apply(
            {"params": params}, video_to_model_range(video), method=VideoVAE.encode
        )
        return self.normalise(mean)

    def decode(self, params, latents: jax.Array) -> jax.Array:
        """normalised latents (B, T', H', W', C) → uint8 (B, T, H, W, 3). Jittable."""
        z = self.denormalise(latents)
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
        return self.normalise(mean)

    def decode_within_budget(self, latents, memory_budget: int) -> jax.Array:
        """normalised latents (B, T', H', W', C) → uint8 video, planned for memory_budget."""
        latents = np.asarray(latents)
        self.check_latents(latents)
        check_finite("latents", latents)
        z = self.denormalise(latents)
        return model_range_to_video(decode_within_budget(self.model, self.params, z, memory_budget))


# ---- One clip at a time ----


@functools.partial(jax.jit, static_argnames=("config", "frame_fold"))
def _encode_clip(params, shift, scale, video, *, config, frame_fold):
    return LatentCodec(config, params, shift, scale, frame_fold).encode(params, video[None])[0]


def encode_clip(codec: LatentCodec, video) -> jax.Array:
    """uint8 (T, H, W, 3) → normalised latents (T', H', W', C), one clip per call. XLA picks
    convolution algorithms by batch shape, so training's pipeline and the latent cache both
    encode this way: cached latents then equal online ones bit for bit. Compiled once per
    (VAE config, clip shape) for the whole process."""
    return _encode_clip(
        codec.params,
        codec.shift,
        codec.scale,
        video,
        config=codec.config,
        frame_fold=codec.frame_fold,
    )
