"""Chunked causal encode and decode: time is cut into chunks, and every causal conv carries its
boundary frames from one chunk to the next in the "cache" collection, so peak memory follows
the chunk length, not the clip length, and the result equals the whole-clip pass.

Chunks: the first frame alone (it is encoded alone anyway), then `chunk` pixel frames (a
multiple of the temporal factor ft) for the encoder, or `chunk` latent frames for the decoder.
"""

import functools

import jax

from soraj.models.vae import VideoVAE, check_video_shape


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply_chunk(model: VideoVAE, method: str, params, cache, x):
    variables = {"params": params, **({"cache": cache} if cache is not None else {})}
    out, updated = model.apply(variables, x, method=getattr(VideoVAE, method), mutable=["cache"])
    return out, updated["cache"]


def encode_chunked(model: VideoVAE, params, video, chunk: int):
    """(B, 1 + ft·k, H, W, 3) → (mean, logvar) (B, 1 + k, H', W', C), `chunk` frames at a time."""
    ft = model.config.temporal_factor
    check_video_shape(model.config, *video.shape[1:4])
    if chunk < ft or chunk % ft:
        raise ValueError(
            f"chunk must be a positive multiple of the temporal factor {ft}, got {chunk}"
        )
    (mean, logvar), cache = _apply_chunk(model, "encode_chunk", params, None, video[:, :1])
    means, logvars = [mean], [logvar]
    for start in range(1, video.shape[1], chunk):
        (mean, logvar), cache = _apply_chunk(
            model, "encode_chunk", params, cache, video[:, start : start + chunk]
        )
        means.append(mean)
        logvars.append(logvar)
    return jax.numpy.concatenate(means, axis=1), jax.numpy.concatenate(logvars, axis=1)


def decode_chunked(model: VideoVAE, params, latents, chunk: int):
    """(B, 1 + k, H', W', C) → (B, 1 + ft·k, H, W, 3), `chunk` latent frames at a time."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of latent frames, got {chunk}")
    frames, cache = _apply_chunk(model, "decode_chunk", params, None, latents[:, :1])
    pieces = [frames]
    for start in range(1, latents.shape[1], chunk):
        frames, cache = _apply_chunk(
            model, "decode_chunk", params, cache, latents[:, start : start + chunk]
        )
        pieces.append(frames)
    return jax.numpy.concatenate(pieces, axis=1)
