"""Causal 3D-conv video VAE; the first frame is encoded alone so images and videos share latents."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from soraj.models.conv3d import box_conv_net_kernels, conv3d_as_frame_convs
from soraj.models.vae_config import (  # noqa: F401  (config, presets, shape contract)
    ALLOWED_DTYPES,
    ALLOWED_SPATIAL_FACTORS,
    ALLOWED_TEMPORAL_FACTORS,
    LATENT_CHANNEL_RANGE,
    VAE_PRESETS,
    VAEConfig,
    check_video_shape,
    kl_divergence,
    latent_shape,
)

# Shape letters: B batch, T frames, H height, W width, F conv features, C latent channels.
# Pixel-space frames are written T_px (= 1 + ft·k) where the latent frames T (= 1 + k) differ.

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


# ---- Layers ------------------------------------------------------------------------------


def _num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Largest group count ≤ max_groups that divides channels, with ≥ min_group_size channels
    per group: one-channel groups are instance norm, which erases each channel's per-frame
    mean, and with it flat colours."""
    limit = max(1, min(max_groups, channels // min_group_size))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


class FrameGroupNorm(nn.Module):
    """GroupNorm in f32 with statistics per frame: pooling over time would leak the future."""

    @nn.compact
    def __call__(self, x):  # (B, T, H, W, F)
        b, t, h, w, f = x.shape
        frames = x.reshape(b * t, h, w, f).astype(jnp.float32)  # (B·T, H, W, F)
        normed = nn.GroupNorm(num_groups=_num_groups(f), dtype=jnp.float32)(frames)
        return normed.reshape(b, t, h, w, f).astype(x.dtype)  # (B, T, H, W, F)


def _streaming(module: nn.Module) -> bool:
    """Chunked processing (vae_chunked.py) applies with a mutable "cache" collection; init
    makes every collection mutable, so it is excluded and never creates cache entries."""
    return module.is_mutable_collection("cache") and not module.is_initializing()


class CausalConv3d(nn.Module):
    """3D conv whose output frame k sees only input frames ≤ k.

    Time is padded at the front with copies of frame 0 (not zeros), so frame 0 is computed
    from itself alone, exactly as for a one-frame video. With a temporal stride of 2 the
    output frame j ≥ 1 sees input frames 2j-2 .. 2j: frame 0 stays alone, pairs are merged.
    """

    features: int
    kernel_size: tuple[int, int, int] = (3, 3, 3)
    strides: tuple[int, int, int] = (1, 1, 1)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, T, H, W, F_in)
        kt, kh, kw = self.kernel_size
        if kt > 1:
            # Streaming (the "cache" collection is mutable): after the first chunk, the frames
            # carried over from the previous chunk stand where copies of frame 0 would.
            if _streaming(self) and self.has_variable("cache", "frames"):
                front = self.get_variable("cache", "frames")  # (B, kt-st, H, W, F_in)
            else:
                front = jnp.repeat(x[:, :1], kt - 1, axis=1)  # (B, kt-1, H, W, F_in)
            x = jnp.concatenate([front, x], axis=1)  # (B, T+kt-1, H, W, F_in)
            if _streaming(self):
                # The next chunk's first output window starts kt - st frames before its input.
                carried = kt - self.strides[0]
                self.put_variable("cache", "frames", x[:, x.shape[1] - carried :])
        conv = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            conv_general_dilated=conv3d_as_frame_convs if jax.default_backend() == "cpu" else None,
        )
        return conv(x)  # (B, T/st, H/ss, W/ss, F)


class ResBlock(nn.Module):
    features: int
    dtype: jnp.dtype = jnp.float32
    temporal_kernel: int = 3

    @nn.compact
    def __call__(self, x):  # (B, T, H, W, F_in)
        kernel = (self.temporal_kernel, 3, 3)
        h = nn.silu(FrameGroupNorm()(x))
        h = CausalConv3d(self.features, kernel, dtype=self.dtype)(h)
        h = nn.silu(FrameGroupNorm()(h))
        h = CausalConv3d(self.features, kernel, dtype=self.dtype)(h)  # (B, T, H, W, F)
        if x.shape[-1] != self.features:
            x = CausalConv3d(self.features, kernel_size=(1, 1, 1), dtype=self.dtype)(x)
        return x + h  # (B, T, H, W, F)


class FrameSelfAttention(nn.Module):
    """Single-head self-attention within each frame; frames never attend to each other."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, T, H, W, F)
        b, t, h, w, f = x.shape
        dense = lambda name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        tokens = FrameGroupNorm()(x).reshape(b * t, h * w, f)  # (B·T, H·W, F)
        q, k, v = dense("query")(tokens), dense("key")(tokens), dense("value")(tokens)
        # Logits accumulate and stay in f32: a bf16 logit of ~100 has a spacing of 0.5.
        logits = jnp.einsum("bqf,bkf->bqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / jnp.sqrt(f)  # (B·T, H·W, H·W)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # (B·T, H·W, H·W)
        attended = jnp.einsum("bqk,bkf->bqf", weights, v)  # (B·T, H·W, F)
        return x + dense("out")(attended).reshape(b, t, h, w, f)  # (B, T, H, W, F)


class Downsample(nn.Module):
    """Halves time (keeping frame 0 alone) and/or space with one strided causal conv."""

    features: int
    halve_time: bool
    halve_space: bool
    dtype: jnp.dtype = jnp.float32
    temporal_kernel: int = 3  # used when time is not halved

    @nn.compact
    def __call__(self, x):  # (B, 1+2m, H, W, F)
        st, ss = (2 if self.halve_time else 1), (2 if self.halve_space else 1)
        kernel = (3 if self.halve_time else self.temporal_kernel, 3, 3)
        return CausalConv3d(self.features, kernel, strides=(st, ss, ss), dtype=self.dtype)(x)


class Upsample(nn.Module):
    """Mirror of Downsample: frame 0 stays, frames 1..m become 2m; nearest repeat + conv."""

    features: int
    double_time: bool
    double_space: bool
    dtype: jnp.dtype = jnp.float32
    temporal_kernel: int = 3  # used when time is not doubled

    @nn.compact
    def __call__(self, x):  # (B, 1+m, H, W, F)
        if self.double_time:
            # Only the clip's very first frame stays single; in later chunks every frame doubles.
            later_chunk = _streaming(self) and self.has_variable("cache", "started")
            single = 0 if later_chunk else 1
            x = jnp.concatenate([x[:, :single], jnp.repeat(x[:, single:], 2, axis=1)], axis=1)
            if _streaming(self):
                self.put_variable("cache", "started", jnp.ones((), bool))
        if self.double_space:
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # (B, T, 2H, 2W, F)
        # The causal conv after the repeat keeps output frame k on latent frames ≤ ceil(k/2).
        kernel = (3 if self.double_time else self.temporal_kernel, 3, 3)
        return CausalConv3d(self.features, kernel, dtype=self.dtype)(x)


def _mid_block(x, features: int, attention: bool, dtype, temporal_kernel: int):
    x = ResBlock(features, dtype=dtype, temporal_kernel=temporal_kernel)(x)
    if attention:
        x = FrameSelfAttention(dtype=dtype)(x)
    return ResBlock(features, dtype=dtype, temporal_kernel=temporal_kernel)(x)


# ---- Pixel patches -----------------------------------------------------------------------


def pixels_to_patches(video, patch: int):  # (B, T, H·p, W·p, F) -> (B, T, H, W, p·p·F)
    b, t, h, w, f = video.shape
    x = video.reshape(b, t, h // patch, patch, w // patch, patch, f)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h // patch, w // patch, -1)


def patches_to_pixels(x, patch: int):  # (B, T, H, W, p·p·F) -> (B, T, H·p, W·p, F)
    b, t, h, w, channels = x.shape
    x = x.reshape(b, t, h, w, patch, patch, channels // patch**2)
    return x.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h * patch, w * patch, -1)


# ---- Encoder / decoder -------------------------------------------------------------------


class Encoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, video):  # (B, T_px, H·fs, W·fs, 3)
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        kt, kernel = cfg.temporal_kernel, (cfg.temporal_kernel, 3, 3)
        x = pixels_to_patches(video.astype(dtype), cfg.pixel_patch)  # (B, T_px, H', W', 3p²)
        x = CausalConv3d(widths[0], kernel, dtype=dtype)(x)
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                x = ResBlock(width, dtype=dtype, temporal_kernel=kt)(x)
            if level < len(widths) - 1:
                x = Downsample(
                    width,
                    halve_time=cfg.temporal_downsample[level],
                    halve_space=cfg.spatial_downsample[level],
                    dtype=dtype,
                    temporal_kernel=kt,
                )(x)
        x = _mid_block(x, widths[-1], cfg.mid_attention, dtype, kt)  # (B, T, H, W, F)
        x = nn.silu(FrameGroupNorm()(x))
        moments = CausalConv3d(2 * cfg.latent_channels, kernel, dtype=dtype)(x)
        moments = moments.astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)  # (B, T, H, W, C) each
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


class Decoder(nn.Module):
    config: VAEConfig

    @nn.compact
    def __call__(self, latents):  # (B, T, H, W, C)
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        widths = [cfg.base_channels * m for m in cfg.channel_multipliers]
        kt, kernel = cfg.temporal_kernel, (cfg.temporal_kernel, 3, 3)
        x = CausalConv3d(widths[-1], kernel, dtype=dtype)(latents.astype(dtype))
        x = _mid_block(x, widths[-1], cfg.mid_attention, dtype, kt)  # (B, T, H, W, F)
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                x = ResBlock(widths[level], dtype=dtype, temporal_kernel=kt)(x)
            if level > 0:
                x = Upsample(
                    widths[level - 1],
                    double_time=cfg.temporal_downsample[level - 1],
                    double_space=cfg.spatial_downsample[level - 1],
                    dtype=dtype,
                    temporal_kernel=kt,
                )(x)
        x = nn.silu(FrameGroupNorm()(x))
        # No output activation: the loss sees raw values; display code clips to [-1, 1].
        x = CausalConv3d(3 * cfg.pixel_patch**2, kernel, dtype=dtype)(x)  # (B, T_px, H', W', 3p²)
        return patches_to_pixels(x, cfg.pixel_patch).astype(jnp.float32)  # (B, T_px, H·fs, W·fs, 3)


# ---- VideoVAE ----------------------------------------------------------------------------


class VideoVAE(nn.Module):
    """encode: (B, 1+ft·k, H, W, 3) in [-1, 1] → (mean, logvar) (B, 1+k, H/fs, W/fs, C)."""

    config: VAEConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def init_boxed(self, *args, **kwargs):
        """init with kernels boxed in logical axis names (conv_time, ..., conv_out)."""
        return box_conv_net_kernels(self.init(*args, **kwargs))

    def encode(self, video):  # (B, T_px, H·fs, W·fs, 3)
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"video must have shape (B, T, H, W, 3), got {video.shape}.")
        check_video_shape(self.config, *video.shape[1:4])
        return self.encoder(video)  # (B, T, H, W, C) twice

    def decode(self, latents):  # (B, T, H, W, C)
        c = self.config.latent_channels
        if latents.ndim != 5 or latents.shape[-1] != c:
            raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")
        return self.decoder(latents)  # (B, T_px, H·fs, W·fs, 3)

    def encode_chunk(self, video):  # (B, T_chunk, H·fs, W·fs, 3)
        """One chunk of a clip, streaming: apply with mutable=["cache"] (vae_chunked.py)."""
        return self.encoder(video)

    def decode_chunk(self, latents):  # (B, T_chunk, H, W, C)
        return self.decoder(latents)

    def __call__(self, video, sample_rng=None):
        mean, logvar = self.encode(video)  # (B, T, H, W, C)
        latents = mean
        if sample_rng is not None:
            noise = jax.random.normal(sample_rng, mean.shape, mean.dtype)
            latents = mean + jnp.exp(0.5 * logvar) * noise
        return self.decode(latents), mean, logvar
