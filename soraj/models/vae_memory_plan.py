"""Memory planner for VAE encode and decode: given a budget in bytes, pick the time chunk and
the spatial tile, from an analytic model of peak memory checked against XLA's own analysis.

The peak of a planned encode (decode) is the clip going in and coming out, plus the working set
of one chunk call: its stage's params, the carried causal-conv frames, the chunk in and out, and
the activations. Activations are modelled as
    max over resolution levels of (frames_level + 2) · H_level · W_level · K_stage · width_level
(the +2 are the frames a causal conv pads in front; width_level is the widest tensor living at
that level; level 0 adds P_stage tensors of 3p² channels, the clip as p×p pixel patches) times
the bytes of the compute dtype, plus frame attention's logits. K_stage is a calibrated count
of level-sized tensors alive at once; tests/test_vae_memory_plan.py checks the chunk-call part
against `jax.jit(...).lower(...).compile().memory_analysis()`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from soraj.models.vae import VAEConfig, VideoVAE, check_video_shape, latent_shape
from soraj.models.vae_chunked import apply_chunk
from soraj.models.vae_tiling import decode_tiled, encode_tiled

# Level-sized tensors alive at the peak of a chunk call, as XLA:CPU's memory analysis implies (its
# convs are a 2D conv per temporal tap): 6.7-9.0 for encoders, 3.0-4.0 for decoders (their widest
# tensor, the repeated input of an upsampling conv, lives only briefly), for the float32 presets
# on frames of 64 px and more. Rounded up, so the estimate errs on the safe side; over all presets
# and shapes it is 0.79-1.31 × XLA's (experiments/bench/vae_memory_estimate.py).
ACTIVATION_TENSORS = {"encode": 10.0, "decode": 4.5}
# Besides those, the full-resolution level holds the clip as p×p pixel patches (3p² channels):
# the encoder's patched input and its causally padded copy, the decoder's last conv output
# before depth-to-space. Counting the level as max(width, 3p²) wide instead, times the tensors
# above, gave 1.3-2.1 × XLA's for 4×4 patches on a base width of 8; leaving them out, 0.63 ×.
PATCH_TENSORS = {"encode": 2.0, "decode": 1.0}
MIN_TILE_UNITS = 2  # the smallest tile, in latent pixels per side
STAGES = ("encode", "decode")


# ---- Plan --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StagePlan:
    stage: str  # "encode" or "decode"
    chunk: int  # encode: pixel frames per chunk (multiple of ft); decode: latent frames
    tile: tuple[int, int] | None  # (height, width) in frame pixels; None: whole frames
    overlap: int  # frame pixels shared by neighbouring tiles; 0 when untiled
    estimated_peak_bytes: int


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    encode: StagePlan
    decode: StagePlan


# ---- Analytic model ----------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _stage_bytes_per_unit(config: VAEConfig) -> dict:
    """Params bytes of each stage, and carried-cache bytes per latent pixel of one sample."""
    model, ft, fs = VideoVAE(config), config.temporal_factor, config.spatial_factor
    video = jax.ShapeDtypeStruct((1, 1, fs, fs, 3), jnp.float32)
    latents = jax.ShapeDtypeStruct((1, 1, 1, 1, config.latent_channels), jnp.float32)
    init_video = jnp.zeros((1, 1 + ft, fs, fs, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), init_video)["params"])
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    out = {}
    for stage, x, name in (("encode", video, "encoder"), ("decode", latents, "decoder")):
        _, cache = jax.eval_shape(
            lambda p, x, stage=stage: apply_chunk(model, f"{stage}_chunk", p, None, x), params, x
        )
        out[stage] = (nbytes(params[name]), nbytes(cache))  # cache: one latent pixel, B = 1
    return out


def _activation_bytes(config: VAEConfig, stage: str, batch: int, frames: int, h: int, w: int):
    """Activations of one chunk call; frames in pixel frames, (h, w) in frame pixels."""
    widths = [config.base_channels * m for m in config.channel_multipliers]
    bytes_per_value = jnp.dtype(config.dtype).itemsize
    largest, top = 0, len(widths) - 1
    for level in range(top + 1):
        time_div = 2 ** sum(config.temporal_downsample[:level])
        space_div = config.pixel_patch * 2 ** sum(config.spatial_downsample[:level])
        if stage == "encode":  # a downsampling conv hands width w[l-1] to level l
            width = max(widths[max(level - 1, 0)], widths[level])
        else:  # an upsampling conv repeats width w[l+1] up to level l
            width = max(widths[level], widths[min(level + 1, top)])
        tensors = ACTIVATION_TENSORS[stage] * width
        if level == 0:  # the clip as p×p pixel patches, 3p² channels, going in or coming out
            tensors += PATCH_TENSORS[stage] * 3 * config.pixel_patch**2
        level_frames = -(-frames // time_div) + 2
        pixels = (h // space_div) * (w // space_div)
        largest = max(largest, level_frames * pixels * tensors)
    total = batch * largest * bytes_per_value
    if config.mid_attention:  # f32 logits and their softmax per latent frame
        fs, ft = config.spatial_factor, config.temporal_factor
        tokens = (h // fs) * (w // fs)
        total += 2 * batch * (-(-frames // ft)) * tokens**2 * 4
    return total


def chunk_call_bytes(config: VAEConfig, stage: str, batch: int, frames: int, h: int, w: int):
    """Estimated argument + output + temp bytes of one chunk call (what XLA's memory analysis
    reports). frames: pixel frames in the chunk; (h, w): frame pixels of the tile."""
    fs, ft, c = config.spatial_factor, config.temporal_factor, config.latent_channels
    params, cache_per_unit = _stage_bytes_per_unit(config)[stage]
    units = batch * (h // fs) * (w // fs)
    pixel_bytes = batch * frames * h * w * 3 * 4
    latent_bytes = units * (-(-frames // ft)) * c * 4
    chunk_io = pixel_bytes + latent_bytes * (2 if stage == "encode" else 1)  # mean and logvar
    # With a bf16 compute dtype, XLA:CPU's analysis holds a temp as large as the f32 params.
    cast_params = params if config.dtype != "float32" else 0
    return (
        params
        + cast_params
        + 2 * cache_per_unit * units  # carried in and carried out
        + chunk_io
        + _activation_bytes(config, stage, batch, frames, h, w)
    )


def estimate_peak_bytes(
    config: VAEConfig,
    stage: str,
    clip_shape: tuple[int, int, int, int],
    chunk: int,
    tile: tuple[int, int] | None = None,
) -> int:
    """Peak bytes of a planned encode or decode of a pixel clip (B, T, H, W).

    chunk: encode pixel frames or decode latent frames per call; tile: (height, width) pixels.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    b, t, h, w = clip_shape
    ft = config.temporal_factor
    lt, lh, lw, c = latent_shape(config, t, h, w)
    clip_in_out = b * (t * h * w * 3 + lt * lh * lw * c * (2 if stage == "encode" else 1)) * 4
    tile_h, tile_w = (min(tile[0], h), min(tile[1], w)) if tile else (h, w)
    pixel_frames = chunk if stage == "encode" else chunk * ft
    if t == 1:
        pixel_frames = 1  # only the first frame's call runs
    return int(clip_in_out + chunk_call_bytes(config, stage, b, pixel_frames, tile_h, tile_w))


# ---- Planner -----------------------------------------------------------------------------


def _tile_candidates(config: VAEConfig, h: int, w: int):
    """(tile, overlap) pairs from the whole frame down to MIN_TILE_UNITS latent pixels a side."""
    fs = config.spatial_factor
    for side in range(max(h, w) // fs, MIN_TILE_UNITS - 1, -1):
        tile = (min(side, h // fs) * fs, min(side, w // fs) * fs)
        if tile == (h, w):
            yield None, 0
        else:  # a quarter of the tile overlaps its neighbour, at least one latent pixel
            yield tile, max(1, min(tile) // fs // 4) * fs


def _plan(config: VAEConfig, stage: str, clip_shape, memory_budget: int) -> StagePlan:
    b, t, h, w = clip_shape
    ft = config.temporal_factor
    steps = (t - 1) // ft  # latent frames after the first
    unit = ft if stage == "encode" else 1
    chunks = [unit * j for j in range(max(steps, 1), 0, -1)]  # largest first
    # Whole frames, largest chunk that fits: chunking in time is exact, tiling is not.
    for chunk in chunks:
        peak = estimate_peak_bytes(config, stage, clip_shape, chunk)
        if peak <= memory_budget:
            return StagePlan(stage, chunk, None, 0, peak)
    # Tiles, with the smallest chunk: a bigger budget buys bigger tiles, never smaller chunks.
    smallest = None
    for tile, overlap in _tile_candidates(config, h, w):
        peak = estimate_peak_bytes(config, stage, clip_shape, unit, tile)
        smallest = peak
        if tile is not None and peak <= memory_budget:
            return StagePlan(stage, unit, tile, overlap, peak)
    raise ValueError(
        f"memory_budget {memory_budget} bytes is below the minimum {smallest} bytes to {stage} "
        f"a (B, T, H, W) = {tuple(clip_shape)} clip with this VAE: the clip itself plus one "
        f"chunk of {unit} {'pixel' if stage == 'encode' else 'latent'} frame(s) on "
        f"{MIN_TILE_UNITS * config.spatial_factor}-pixel tiles."
    )


def _check_budget(memory_budget) -> None:
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | np.integer):
        raise ValueError(f"memory_budget must be an int number of bytes, got {memory_budget!r}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")


def plan_encode(config: VAEConfig, clip_shape, memory_budget: int) -> StagePlan:
    """Chunk and tile for encoding a pixel clip of shape (B, T, H, W) within memory_budget."""
    _check_budget(memory_budget)
    check_video_shape(config, *clip_shape[1:4])
    return _plan(config, "encode", tuple(clip_shape), memory_budget)


def plan_decode(config: VAEConfig, latents_shape, memory_budget: int) -> StagePlan:
    """Chunk and tile for decoding latents of shape (B, T', H', W') within memory_budget."""
    _check_budget(memory_budget)
    b, lt, lh, lw = latents_shape
    if min(latents_shape) < 1:
        raise ValueError(f"latents shape (B, T', H', W') must be positive, got {latents_shape}")
    fs, ft = config.spatial_factor, config.temporal_factor
    return _plan(config, "decode", (b, 1 + ft * (lt - 1), lh * fs, lw * fs), memory_budget)


def plan_memory(config: VAEConfig, clip_shape, memory_budget: int) -> MemoryPlan:
    """Both plans for a pixel clip (B, T, H, W) going through encode, then decode."""
    b, t, h, w = clip_shape
    lt, lh, lw, _ = latent_shape(config, t, h, w)
    return MemoryPlan(
        plan_encode(config, clip_shape, memory_budget),
        plan_decode(config, (b, lt, lh, lw), memory_budget),
    )


# ---- Within a budget ---------------------------------------------------------------------


def encode_within_budget(model: VideoVAE, params, video, memory_budget: int):
    """float32 video in [-1, 1] (B, T, H, W, 3) → (mean, logvar), NumPy float32, cut into the
    chunks and tiles planned for memory_budget bytes (exact unless it has to tile)."""
    video = np.asarray(video, np.float32)
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"video must have shape (B, T, H, W, 3), got {video.shape}.")
    if not np.isfinite(video).all():
        raise ValueError("video has non-finite values (NaN or inf); expected floats in [-1, 1].")
    plan = plan_encode(model.config, video.shape[:4], memory_budget)
    tile = plan.tile or video.shape[2:4]
    return encode_tiled(model, params, video, plan.chunk, tile, plan.overlap)


def decode_within_budget(model: VideoVAE, params, latents, memory_budget: int):
    """latents (B, T', H', W', C) → float32 video (B, 1 + ft·(T'-1), H, W, 3) as NumPy, cut
    into the chunks and tiles planned for memory_budget bytes."""
    latents = np.asarray(latents, np.float32)
    c, fs = model.config.latent_channels, model.config.spatial_factor
    if latents.ndim != 5 or latents.shape[-1] != c:
        raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")
    if not np.isfinite(latents).all():
        raise ValueError("latents have non-finite values (NaN or inf).")
    plan = plan_decode(model.config, latents.shape[:4], memory_budget)
    tile = plan.tile or (latents.shape[2] * fs, latents.shape[3] * fs)
    return decode_tiled(model, params, latents, plan.chunk, tile, plan.overlap)
