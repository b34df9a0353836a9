"""Chunked causal encode and decode: time is cut into chunks, and every causal conv carries its
boundary frames from one chunk to the next in the "cache" collection, so peak memory follows
the chunk length, not the clip length, and the result equals the whole-clip pass.

Chunks: the first frame alone (it is encoded alone anyway), then `chunk` pixel frames (a
multiple of the temporal factor ft) for the encoder, or `chunk` latent frames for the decoder.

The iter_* functions yield one chunk's output at a time, so a caller can write each into a
preallocated clip (vae_tiling.py) instead of holding the pieces and their concatenation.
"""

import functools
from collections.abc import Iterator

import jax

from soraj.models.vae import VideoVAE, check_video_shape

# ---- One chunk ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "method"))
def apply_chunk(model: VideoVAE, method: str, params, cache, x):
    """One streaming call: method "encode_chunk" or "decode_chunk"; cache None for the first
    chunk, else the one the previous call returned. Returns (output, cache for the next)."""
    variables = {"params": params, **({"cache": cache} if cache is not None else {})}
    out, updated = model.apply(variables, x, method=getattr(VideoVAE, method), mutable=["cache"])
    # A VAE with no conv across frames (temporal_kernel 1, no temporal factor) keeps no cache.
    return out, updated.get("cache", {})


def _iter_chunks(model: VideoVAE, method: str, params, x, chunk: int) -> Iterator:
    # x may be a NumPy view (a spatial tile of a host clip): each slice is copied in per chunk.
    out, cache = apply_chunk(model, method, params, None, x[:, :1])
    yield out
    for start in range(1, x.shape[1], chunk):
        out, cache = apply_chunk(model, method, params, cache, x[:, start : start + chunk])
        yield out


# ---- Streaming ---------------------------------------------------------------------------


def iter_encode_chunks(model: VideoVAE, params, video, chunk: int) -> Iterator:
    """Yields (mean, logvar), each (B, T_chunk', H', W', C), in time order; checks eagerly."""
    ft = model.config.temporal_factor
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"video must have shape (B, T, H, W, 3), got {video.shape}.")
    check_video_shape(model.config, *video.shape[1:4])
    if chunk < ft or chunk % ft:
        raise ValueError(
            f"chunk must be a positive multiple of the temporal factor {ft}, got {chunk}"
        )
    return _iter_chunks(model, "encode_chunk", params, video, chunk)


def iter_decode_chunks(model: VideoVAE, params, latents, chunk: int) -> Iterator:
    """Yields pixel frames (B, T_chunk, H, W, 3) in time order; checks eagerly."""
    c = model.config.latent_channels
    if latents.ndim != 5 or latents.shape[-1] != c:
        raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of latent frames, got {chunk}")
    return _iter_chunks(model, "decode_chunk", params, latents, chunk)


# ---- Whole clip ---------------------------------------------------------------------------


def encode_chunked(model: VideoVAE, params, video, chunk: int):
    """(B, 1 + ft·k, H, W, 3) → (mean, logvar) (B, 1 + k, H', W', C), `chunk` frames at a time."""
    means, logvars = zip(*iter_encode_chunks(model, params, video, chunk), strict=True)
    return jax.numpy.concatenate(means, axis=1), jax.numpy.concatenate(logvars, axis=1)


def decode_chunked(model: VideoVAE, params, latents, chunk: int):
    """(B, 1 + k, H', W', C) → (B, 1 + ft·k, H, W, 3), `chunk` latent frames at a time."""
    return jax.numpy.concatenate(list(iter_decode_chunks(model, params, latents, chunk)), axis=1)
