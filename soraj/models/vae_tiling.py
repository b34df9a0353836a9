"""Spatial tiling for the VAE: frames too large for the memory budget are cut into overlapping
tiles, each tile runs chunked in time (vae_chunked.py), and the overlaps are blended with
linear ramps whose weights sum to one at every output pixel.

Tiles are laid out on the latent grid (one unit = one latent pixel = fs × fs frame pixels), so
an encoder tile's latents land exactly on the whole frame's latent grid, and a decoder tile's
frames exactly on its pixels. Tiling is an approximation of the whole-frame pass: the convs near
a tile's inner edges see zero padding instead of their neighbours, and each frame's group-norm
statistics come from the tile alone. The blend hides the seams; a tile that covers the whole
frame gives the whole-frame result.
"""

from collections.abc import Callable, Iterable

import numpy as np

from soraj.models.vae import VideoVAE, check_video_shape
from soraj.models.vae_chunked import iter_decode_chunks, iter_encode_chunks

# ---- Layout ------------------------------------------------------------------------------


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of length `tile` covering [0, size), neighbours sharing ≥ `overlap`.

    The tiles are spread evenly with the last one ending at `size`, so every tile is whole and
    no neighbours share more than needed; a tile at least as long as `size` is the only one.
    """
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile must be ≥ 1 and overlap ≥ 0, got tile {tile}, overlap {overlap}")
    if tile >= size:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap must be smaller than the tile {tile}, got {overlap}")
    gaps = -(-(size - tile) // (tile - overlap))  # ceil: the fewest steps of ≤ tile - overlap
    return [(i * (size - tile) + gaps // 2) // gaps for i in range(gaps + 1)]


def blend_weights_1d(starts: list[int], tile: int, size: int) -> list[np.ndarray]:
    """One float32 weight vector (len min(tile, size)) per tile; at every position they sum to 1.

    Tile i takes over from tile i-1 across the zone [start_i, min(end_{i-1}, start_{i+1})): a
    ramp r rising from 0 to 1 for tile i and 1 - r for tile i-1, both from the same float32 r
    (r + (1 - r) rounds to exactly 1). Zones never overlap, so at most two tiles share a
    position even where three tiles cover it.
    """
    tile = min(tile, size)
    ends = [s + tile for s in starts]
    weights = [np.zeros(tile, np.float32) for _ in starts]
    for i, s in enumerate(starts):
        zone_end = min(ends[i - 1], starts[i + 1] if i + 1 < len(starts) else size) if i else s
        ramp = ((np.arange(s, zone_end) - s + 0.5) / max(zone_end - s, 1)).astype(np.float32)
        own_end = starts[i + 1] if i + 1 < len(starts) else size
        weights[i][zone_end - s : own_end - s] = 1.0
        weights[i][: zone_end - s] = ramp
        if i:
            weights[i - 1][s - starts[i - 1] : zone_end - starts[i - 1]] = np.float32(1) - ramp
    return weights


# ---- Tiled map ---------------------------------------------------------------------------


def tiled_map(
    fn: Callable[[np.ndarray], Iterable[tuple]],
    x: np.ndarray,  # (B, T, H·in_scale, W·in_scale, F)
    tile: tuple[int, int],
    overlap: int,
    in_scale: int,
    out_scale: int,
    out_frames: int,
) -> tuple[np.ndarray, ...]:
    """Runs fn on overlapping spatial tiles of x and blends what it yields into whole frames.

    tile (height, width) and overlap are in grid units; a unit is in_scale pixels of x and
    out_scale pixels of the output. fn gets one tile (a NumPy view of x) and yields tuples of
    arrays (B, T_piece, h·out_scale, w·out_scale, F_out), consecutive in time, out_frames in all.
    """
    height, width = x.shape[2] // in_scale, x.shape[3] // in_scale
    rows, cols = tile_starts(height, tile[0], overlap), tile_starts(width, tile[1], overlap)
    row_weights = blend_weights_1d(
        [r * out_scale for r in rows], tile[0] * out_scale, height * out_scale
    )
    col_weights = blend_weights_1d(
        [c * out_scale for c in cols], tile[1] * out_scale, width * out_scale
    )
    outputs = None
    for row, row_weight in zip(rows, row_weights, strict=True):
        for col, col_weight in zip(cols, col_weights, strict=True):
            ys = slice(row * in_scale, (row + min(tile[0], height)) * in_scale)
            xs = slice(col * in_scale, (col + min(tile[1], width)) * in_scale)
            oy = slice(row * out_scale, row * out_scale + len(row_weight))
            ox = slice(col * out_scale, col * out_scale + len(col_weight))
            weight = (row_weight[:, None] * col_weight[None, :])[..., None]  # (h, w, 1)
            single = len(rows) == len(cols) == 1
            t = 0
            for pieces in fn(x[:, :, ys, xs]):
                pieces = [np.asarray(p, np.float32) for p in pieces]  # (B, T_piece, h, w, F)
                if outputs is None:
                    b, ho, wo = x.shape[0], height * out_scale, width * out_scale
                    outputs = [
                        np.zeros((b, out_frames, ho, wo, p.shape[-1]), np.float32) for p in pieces
                    ]
                span = slice(t, t + pieces[0].shape[1])
                for out, piece in zip(outputs, pieces, strict=True):
                    if single:  # one tile: its weights are all 1, so copy instead
                        out[:, span] = piece
                    else:
                        out[:, span, oy, ox] += weight * piece
                t = span.stop
            if t != out_frames:
                raise ValueError(f"fn yielded {t} frames for a tile, expected {out_frames}")
    return tuple(outputs)


# ---- Tiled VAE ---------------------------------------------------------------------------


def check_tiling(fs: int, tile: tuple[int, int], overlap: int, frame: tuple[int, int]) -> None:
    """Raises ValueError unless tile (height, width) and overlap, in pixels, suit spatial factor
    fs on frames of size `frame`: overlap must be smaller than the tile along each cut axis."""
    if len(tile) != 2 or min(tile) < fs or any(t % fs for t in tile):
        raise ValueError(
            f"tile must be (height, width) in pixels, each a positive multiple of the spatial "
            f"factor {fs} ({fs}, {2 * fs}, ...), got {tile!r}"
        )
    cut = [t for t, size in zip(tile, frame, strict=True) if t < size]
    limit = min(cut, default=None)
    if overlap < 0 or overlap % fs or (limit is not None and overlap >= limit):
        bound = f"[0, {limit}) (smaller than the tile)" if limit is not None else "≥ 0"
        raise ValueError(
            f"overlap must be a multiple of the spatial factor {fs} in {bound}, got {overlap}"
        )


def encode_tiled(model: VideoVAE, params, video, chunk: int, tile: tuple[int, int], overlap: int):
    """(B, 1 + ft·k, H, W, 3) → (mean, logvar) as NumPy float32, tile by tile, chunk by chunk.

    tile and overlap are in pixels, multiples of the spatial factor fs; chunk as for
    encode_chunked. Each frame's latents are blended from the tiles that cover it.
    """
    fs, ft = model.config.spatial_factor, model.config.temporal_factor
    video = np.asarray(video)
    if video.ndim != 5 or video.shape[-1] != 3:
        raise ValueError(f"video must have shape (B, T, H, W, 3), got {video.shape}.")
    check_video_shape(model.config, *video.shape[1:4])
    check_tiling(fs, tile, overlap, video.shape[2:4])
    if chunk < ft or chunk % ft:
        raise ValueError(
            f"chunk must be a positive multiple of the temporal factor {ft}, got {chunk}"
        )
    latent_frames = 1 + (video.shape[1] - 1) // ft
    return tiled_map(
        lambda crop: iter_encode_chunks(model, params, crop, chunk),
        video,
        (tile[0] // fs, tile[1] // fs),
        overlap // fs,
        in_scale=fs,
        out_scale=1,
        out_frames=latent_frames,
    )


def decode_tiled(model: VideoVAE, params, latents, chunk: int, tile: tuple[int, int], overlap: int):
    """(B, 1 + k, H', W', C) → (B, 1 + ft·k, H, W, 3) NumPy float32, tile by tile, chunk by chunk.

    tile and overlap are in output pixels, multiples of the spatial factor fs.
    """
    fs, ft, c = (
        model.config.spatial_factor,
        model.config.temporal_factor,
        model.config.latent_channels,
    )
    latents = np.asarray(latents)
    if latents.ndim != 5 or latents.shape[-1] != c:
        raise ValueError(f"latents must have shape (B, T, H, W, {c}), got {latents.shape}.")
    check_tiling(fs, tile, overlap, (latents.shape[2] * fs, latents.shape[3] * fs))
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of latent frames, got {chunk}")
    (video,) = tiled_map(
        lambda crop: ((frames,) for frames in iter_decode_chunks(model, params, crop, chunk)),
        latents,
        (tile[0] // fs, tile[1] // fs),
        overlap // fs,
        in_scale=1,
        out_scale=fs,
        out_frames=1 + ft * (latents.shape[1] - 1),
    )
    return video
