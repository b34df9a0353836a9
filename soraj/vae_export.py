"""What the VAE trainer writes besides checkpoints: the jitted encode/reconstruct pair, latent
statistics, the export (EMA params + config + latent shift and scale) and reconstruction GIFs."""

import collections
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from soraj import checkpoint, distributed, exports
from soraj.data.video_folder import loop_to_length
from soraj.data.video_io import IMAGE_SUFFIXES, write_gif
from soraj.models.latent_codec import model_range_to_video, video_to_model_range
from soraj.models.vae import VideoVAE

# ---- Latent statistics, export and reconstructions ---------------------------------------------


def jitted_codec(model: VideoVAE):
    """(encode, reconstruct) of uint8 videos, jitted once per run rather than once per save:
    encode → latent means (B, T, H, W, C); reconstruct → uint8 (B, T_px, H·fs, W·fs, 3)."""

    def encode(params, video):
        x = video_to_model_range(video)
        return model.apply({"params": params}, x, method=VideoVAE.encode)[0]

    def reconstruct(params, video):
        reconstruction = model.apply({"params": params}, video_to_model_range(video))[0]
        return model_range_to_video(reconstruction)

    return jax.jit(encode), jax.jit(reconstruct)


def sample_rate(records) -> float:
    """The frame rate of a batch's reconstruction GIF (it plays at one rate): the rate most of
    the batch's video clips have, from their records' "fps" (video-folder records carry their
    file's) and "path". A still has no rate of its own: only a batch of stills plays at theirs.
    records: one batched record per clip shape."""
    rates = [float(rate) for record in records for rate in np.ravel(record["fps"])]
    paths = [str(path) for record in records for path in np.ravel(record["path"])]
    videos = [
        rate
        for rate, path in zip(rates, paths, strict=True)
        if not path.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not rates:
        raise ValueError("no clip records given: a reconstruction GIF plays at their frame rate")
    return collections.Counter(videos or rates).most_common(1)[0][0]


def latent_statistics(encode, params, batches) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of latent means over some batches (all clip shapes)."""
    means = [np.asarray(encode(params, video)) for batch in batches for video in batch.values()]
    stacked = np.concatenate([m.reshape(-1, m.shape[-1]) for m in means])  # (N, C)
    return stacked.mean(0), np.maximum(stacked.std(0), 1e-6)


def export(workdir: Path, model: VideoVAE, state, config, stats_batches, encode) -> Path:
    """WORKDIR/export: EMA params, config and latent statistics. Every process calls it (the
    params are gathered across hosts); process 0 measures the statistics and writes."""
    ema_params, step = state.ema_params, state.step
    if jax.process_count() > 1:
        ema_params, step = multihost_utils.process_allgather((ema_params, step), tiled=True)
    if not distributed.is_primary():
        return workdir / "export"
    shift, scale = latent_statistics(encode, ema_params, stats_batches)
    stored = {
        "kind": "vae",
        "preset": config.preset,
        "vae_config": dataclasses.asdict(model.config),
        "latent_shift": shift.tolist(),
        "latent_scale": scale.tolist(),
        "latent_frame_fold": config.latent_frame_fold,
        "trained_on": json.loads(config.data.to_json_best_effort()),
        "step": int(step),
        "code_version": checkpoint.code_version(),
    }
    return exports.write_export(workdir / "export", ema_params, stored)


def write_reconstructions(
    path: Path, reconstruct, params, batch: dict, fps: float, count: int = 4
) -> Path:
    """One GIF at fps (the clips' frame rate, which the caller knows from its source): a row per
    clip shape of up to `count` (original | reconstruction) pairs; shorter clips and images
    loop to the longest clip's length."""
    rows = []
    for video in batch.values():
        video = video[:count]
        pairs = np.concatenate([video, np.asarray(reconstruct(params, video))], axis=3)
        rows.append(np.concatenate(list(pairs), axis=2))  # (T, H, count·2W, 3)
    frames = max(row.shape[0] for row in rows)
    width = max(row.shape[2] for row in rows)
    rows = [
        np.pad(loop_to_length(row, frames), ((0, 0), (0, 0), (0, width - row.shape[2]), (0, 0)))
        for row in rows
    ]
    upscale = max(1, 128 // max(row.shape[1] for row in rows))
    return Path(write_gif(path, np.concatenate(rows, axis=1), fps, upscale=upscale))
