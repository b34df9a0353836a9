"""3D PatchGAN discriminator for VAE training, and its hinge losses; images are one-frame videos."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

# The VAE's CPU path for 3D convs (a batched 2D conv per temporal tap): XLA:CPU's own 3D
# convolution ran this discriminator's forward and backward several times slower.
from soraj.models.conv3d import box_conv_net_kernels, conv3d_as_frame_convs

# Shape letters: B batch, T frames, H height, W width, F conv features.

ALLOWED_DTYPES = ("float32", "bfloat16", "float16")


# ---- Config ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    base_channels: int = 64
    num_downsamples: int = 3  # stride-2 spatial convs; each patch logit sees ~2^(n+2) pixels
    max_multiplier: int = 8  # widths double per downsample up to base_channels × this
    dtype: str = "float32"  # compute dtype; params are always float32

    def __post_init__(self):
        if min(self.base_channels, self.num_downsamples, self.max_multiplier) < 1:
            raise ValueError(
                "base_channels, num_downsamples and max_multiplier must be ≥ 1, got "
                f"{self.base_channels}, {self.num_downsamples}, {self.max_multiplier}."
            )
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype must be one of {ALLOWED_DTYPES}, got {self.dtype!r}.")

    @property
    def min_frame_size(self) -> int:
        """Smallest height and width that leave at least one patch logit."""
        return 2**self.num_downsamples


def check_frame_size(config: DiscriminatorConfig, height: int, width: int) -> None:
    smallest = config.min_frame_size
    if min(height, width) < smallest:
        raise ValueError(
            f"frames of {height}×{width} are too small for a discriminator with "
            f"{config.num_downsamples} downsamples: height and width must be ≥ {smallest}."
        )


# ---- Model -------------------------------------------------------------------------------


class PatchDiscriminator3D(nn.Module):
    """(B, T, H, W, 3) in [-1, 1] → one real/fake logit per spacetime patch (B, T, h, w, 1).

    Plain (non-causal) 3D convs: the discriminator only judges, so it may look both ways in
    time. Time keeps its length, with zero padding of one frame on each side, so a one-frame
    image passes through the same weights as a clip (their centre temporal tap). GroupNorm,
    not BatchNorm: no running statistics, so the train step stays a pure function of its
    inputs.
    """

    config: DiscriminatorConfig

    def init_boxed(self, *args, **kwargs):
        """init with kernels boxed in logical axis names (conv_time, ..., conv_out)."""
        return box_conv_net_kernels(self.init(*args, **kwargs))

    @nn.compact
    def __call__(self, video):  # (B, T, H, W, 3)
        cfg = self.config
        check_frame_size(cfg, *video.shape[2:4])
        dtype = jnp.dtype(cfg.dtype)

        def conv(x, features, spatial_kernel, stride, name):  # (B, T, H, W, F_in)
            pad = (1, 1) if spatial_kernel == 4 else (spatial_kernel // 2,) * 2
            # Time is zero-padded here, so the conv itself pads only space (the CPU path
            # requires that); one frame of zeros on each side keeps T.
            x = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))  # (B, T+2, H, W, F_in)
            on_cpu = jax.default_backend() == "cpu"
            return nn.Conv(
                features,
                (3, spatial_kernel, spatial_kernel),
                strides=(1, stride, stride),
                padding=((0, 0), pad, pad),
                dtype=dtype,
                param_dtype=jnp.float32,
                conv_general_dilated=conv3d_as_frame_convs if on_cpu else None,
                name=name,
            )(x)  # (B, T, H', W', F)

        def norm(x, name):
            # Statistics per sample over (T, H, W) and a group of channels, in float32.
            groups = next(g for g in range(min(32, x.shape[-1]), 0, -1) if x.shape[-1] % g == 0)
            normed = nn.GroupNorm(num_groups=groups, dtype=jnp.float32, name=name)(x)
            return normed.astype(dtype)

        x = video.astype(dtype)
        # Kernel 4, stride 2, padding 1 halves H and W exactly (PatchGAN's downsampling conv).
        x = nn.leaky_relu(conv(x, cfg.base_channels, 4, 2, "conv_in"), 0.2)  # (B, T, H/2, W/2, F)
        for level in range(1, cfg.num_downsamples):
            width = cfg.base_channels * min(2**level, cfg.max_multiplier)
            x = conv(x, width, 4, 2, f"down_{level}")  # (B, T, H/2^(l+1), W/2^(l+1), F)
            x = nn.leaky_relu(norm(x, f"norm_{level}"), 0.2)
        width = cfg.base_channels * min(2**cfg.num_downsamples, cfg.max_multiplier)
        x = nn.leaky_relu(norm(conv(x, width, 3, 1, "conv_mid"), "norm_mid"), 0.2)
        return conv(x, 1, 3, 1, "conv_out").astype(jnp.float32)  # (B, T, h, w, 1)


# ---- Hinge losses ------------------------------------------------------------------------


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """½·(mean relu(1 − D(real)) + mean relu(1 + D(fake))): zero once real logits are ≥ 1 and
    fake ones ≤ −1, so a confident discriminator stops pushing."""
    real = jnp.mean(jax.nn.relu(1.0 - real_logits))
    fake = jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return 0.5 * (real + fake)


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """−mean D(fake): the generator raises the discriminator's score of its reconstructions."""
    return -jnp.mean(fake_logits)
