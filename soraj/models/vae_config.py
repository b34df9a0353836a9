"""The video VAE's config, presets and shape contract (which clip sizes it takes, the latent
shape it gives) and the KL term; read without building the model."""

import dataclasses

import jax
import jax.numpy as jnp

ALLOWED_DTYPES = ("float32", "bfloat16", "float16")
ALLOWED_TEMPORAL_FACTORS = (1, 2, 4, 8)
ALLOWED_SPATIAL_FACTORS = (4, 8, 16)
ALLOWED_PIXEL_PATCHES = (1, 2, 4)
ALLOWED_TEMPORAL_KERNELS = (1, 3)
LATENT_CHANNEL_RANGE = (4, 64)


# ---- Config ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 1
    latent_channels: int = 8
    temporal_downsample: tuple[bool, ...] = (True, True)  # per downsampling step: halve time?
    spatial_downsample: tuple[bool, ...] = (True, True)  # per downsampling step: halve H, W?
    mid_attention: bool = False
    dtype: str = "float32"  # compute dtype; params are always float32
    # Space-to-depth of p×p pixels before the first conv, and back after the last (LTX-Video's
    # patchify): the full-resolution level, which dominates a conv VAE's cost, runs at 1/p² of
    # the pixels with 3p² input channels, and loses nothing (the rearrangement is invertible).
    pixel_patch: int = 1
    # Frames each conv sees (causally) where time is not halved or doubled: 3 mixes a frame
    # with its two predecessors everywhere; 1 codes every frame on its own except in the
    # strided convs that merge frames (none at temporal factor 1: a per-frame image VAE, in
    # which a moving object cannot leave ghosts of its past positions).
    temporal_kernel: int = 3

    def __post_init__(self):
        num_steps = len(self.channel_multipliers) - 1
        if num_steps < 0:
            raise ValueError("channel_multipliers must have at least one entry, got ().")
        for name in ("temporal_downsample", "spatial_downsample"):
            if len(getattr(self, name)) != num_steps:
                raise ValueError(
                    f"{name} must have len(channel_multipliers) - 1 = {num_steps} entries "
                    f"(one per downsampling step), got {getattr(self, name)!r}."
                )
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype must be one of {ALLOWED_DTYPES}, got {self.dtype!r}.")
        if min(self.base_channels, self.latent_channels, *self.channel_multipliers) < 1:
            raise ValueError("base_channels, latent_channels and channel_multipliers must be ≥ 1.")
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be ≥ 0, got {self.num_res_blocks}.")
        if self.temporal_kernel not in ALLOWED_TEMPORAL_KERNELS:
            raise ValueError(
                f"temporal_kernel must be one of {ALLOWED_TEMPORAL_KERNELS}, "
                f"got {self.temporal_kernel!r}."
            )
        if self.pixel_patch not in ALLOWED_PIXEL_PATCHES:
            raise ValueError(
                f"pixel_patch must be one of {ALLOWED_PIXEL_PATCHES}, got {self.pixel_patch!r}."
            )
        if self.temporal_factor not in ALLOWED_TEMPORAL_FACTORS:
            raise ValueError(
                f"temporal_downsample gives a temporal factor of {self.temporal_factor}; "
                f"allowed: {ALLOWED_TEMPORAL_FACTORS} (0 to 3 True entries)."
            )
        if self.spatial_factor not in ALLOWED_SPATIAL_FACTORS:
            raise ValueError(
                f"pixel_patch × 2^(True entries of spatial_downsample) gives a spatial factor "
                f"of {self.spatial_factor}; allowed: {ALLOWED_SPATIAL_FACTORS}."
            )
        low, high = LATENT_CHANNEL_RANGE
        if not low <= self.latent_channels <= high:
            raise ValueError(
                f"latent_channels must be in [{low}, {high}], got {self.latent_channels}."
            )

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return self.pixel_patch * 2 ** sum(self.spatial_downsample)


VAE_PRESETS = {
    # CPU-trainable: 9×32×32 clips → 3×8×8×8 latents. The full-resolution level dominates
    # the cost (base 16 made the train step 3x slower), so it is 8 wide and later ones widen.
    "tiny": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(True, True),
        spatial_downsample=(True, True),
    ),
    # 9×64×64 Shapes clips → 3×16×16×8. Pixel patches of 2×2 first, so the 64×64 VAE costs
    # what "tiny" costs at 32×32; the one spatial halving is the first step, with time.
    "tiny64": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(True, True),
        spatial_downsample=(True, False),
        pixel_patch=2,
    ),
    # The same with less temporal compression: time halved once (9 frames → 5 latent frames)
    # or never (9 → 9). Shapes objects move up to 3.4 pixels a frame at 64×64, so four
    # frames in one latent frame smear them (experiments/shapes/NOTES.md, the VAE ceiling).
    "tiny64-t2": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(True, False),
        spatial_downsample=(True, False),
        pixel_patch=2,
    ),
    "tiny64-t1": VAEConfig(
        base_channels=8,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(False, False),
        spatial_downsample=(True, False),
        pixel_patch=2,
    ),
    # 4×4 pixel patches straight into a wider trunk at 16×16: no spatial downsampling left,
    # time halved once. Wider where the shape's corners are decided, at "tiny64"'s cost.
    "p4-b16": VAEConfig(
        base_channels=16,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(True,),
        spatial_downsample=(False,),
        pixel_patch=4,
    ),
    # Every frame coded on its own (no temporal compression, no conv across frames): a moving
    # object cannot smear into its past positions, the ghosting that the 3D VAEs above show
    # (experiments/shapes/NOTES.md). Time is left to the DiT's temporal patch.
    "p4-frames": VAEConfig(
        base_channels=32,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(False,),
        spatial_downsample=(False,),
        pixel_patch=4,
        temporal_kernel=1,
    ),
    "small": VAEConfig(
        base_channels=64,
        channel_multipliers=(1, 2, 4),
        num_res_blocks=2,
        latent_channels=8,
        temporal_downsample=(True, True),
        spatial_downsample=(True, True),
        mid_attention=True,
        dtype="bfloat16",
    ),
    # CPU-sized real-footage VAEs (experiments/vae_real): a few million params each, small
    # enough to ship (bf16 exports) and to reconstruct a clip on a laptop CPU in seconds.
    "cpu-4x4x4-c8": VAEConfig(
        base_channels=32,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        latent_channels=8,
        temporal_downsample=(True, True),
        spatial_downsample=(True, True),
    ),
    "cpu-4x8x8-c16": VAEConfig(
        base_channels=32,
        channel_multipliers=(1, 2, 2, 4),
        num_res_blocks=1,
        latent_channels=16,
        temporal_downsample=(True, True, False),
        spatial_downsample=(True, True, True),
    ),
    # Time is halved in the first two steps: the widest-resolution levels are the most
    # expensive, and every later level then runs on a quarter of the frames.
    "4x8x8-c16": VAEConfig(
        base_channels=128,
        channel_multipliers=(1, 2, 4, 4),
        num_res_blocks=2,
        latent_channels=16,
        temporal_downsample=(True, True, False),
        spatial_downsample=(True, True, True),
        mid_attention=True,
        dtype="bfloat16",
    ),
}


# ---- Shape contract ----------------------------------------------------------------------


def check_video_shape(config: VAEConfig, num_frames: int, height: int, width: int) -> None:
    """Raises ValueError unless (T, H, W) is a size this VAE can encode."""
    ft, fs = config.temporal_factor, config.spatial_factor
    if num_frames < 1 or (num_frames - 1) % ft != 0:
        raise ValueError(
            f"num_frames must be 1 + {ft}·k for k ≥ 0 (1, {1 + ft}, {1 + 2 * ft}, ...), "
            f"got {num_frames}."
        )
    for name, size in (("height", height), ("width", width)):
        if size < fs or size % fs != 0:
            raise ValueError(
                f"{name} must be a positive multiple of the spatial factor {fs} "
                f"({fs}, {2 * fs}, ...), got {size}."
            )


def latent_shape(
    config: VAEConfig, num_frames: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """(T', H', W', C) of the latents of a (num_frames, height, width) video."""
    check_video_shape(config, num_frames, height, width)
    ft, fs = config.temporal_factor, config.spatial_factor
    return (1 + (num_frames - 1) // ft, height // fs, width // fs, config.latent_channels)


def kl_divergence(mean: jax.Array, logvar: jax.Array, per_sample: bool = False) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over each sample's latent elements.

    Returns the batch mean (a scalar), or shape (B,) when per_sample is True.
    """
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    elementwise = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    per_sample_kl = elementwise.reshape(elementwise.shape[0], -1).sum(axis=-1)  # (B,)
    return per_sample_kl if per_sample else per_sample_kl.mean()
