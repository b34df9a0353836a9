"""Spatial tiling: layout, blend weights, tiled map vs untiled, and the tiled VAE (the "tiny"
preset, and "tiny64-t2" with 2×2 pixel patches) against the whole frame and against a
hand-blended reference built from whole-clip passes on the crops."""

import functools

import chex
import jax
import numpy as np
import pytest
from random_vae_params import random_vae_params, tiny_vae_and_clip

from soraj.models.vae import VAE_PRESETS, VideoVAE
from soraj.models.vae_chunked import decode_chunked, encode_chunked
from soraj.models.vae_tiling import (
    blend_weights_1d,
    decode_tiled,
    encode_tiled,
    tile_starts,
    tiled_map,
)

TINY = VAE_PRESETS["tiny"]  # ft = fs = 4

# (size, tile, overlap): pairs of tiles, three tiles over one position (overlap > tile / 2),
# no overlap, and a tile as large as the whole.
LAYOUTS = [(10, 4, 1), (10, 4, 2), (9, 4, 3), (20, 6, 2), (7, 6, 5), (13, 5, 0), (8, 8, 2)]


# ---- Layout and weights ------------------------------------------------------------------


def test_tile_starts_hand_examples():
    assert tile_starts(10, 4, 2) == [0, 2, 4, 6]
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    assert tile_starts(8, 6, 4) == [0, 2]
    assert tile_starts(8, 8, 2) == [0]
    assert tile_starts(5, 8, 2) == [0]
    with pytest.raises(ValueError, match="smaller than the tile 4"):
        tile_starts(10, 4, 4)
    with pytest.raises(ValueError, match="tile must be ≥ 1"):
        tile_starts(10, 0, 0)


@pytest.mark.parametrize("size, tile, overlap", LAYOUTS)
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(min(tile, size) - gaps >= overlap)


@pytest.mark.parametrize("scale", [1, 8])
@pytest.mark.parametrize("size, tile, overlap", LAYOUTS)
def test_blend_weights_sum_to_exactly_one(size, tile, overlap, scale):
    starts = [s * scale for s in tile_starts(size, tile, overlap)]
    weights = blend_weights_1d(starts, tile * scale, size * scale)
    total = np.zeros(size * scale, np.float32)
    for start, weight in zip(starts, weights, strict=True):
        assert weight.dtype == np.float32 and weight.min() >= 0 and weight.max() <= 1
        total[start : start + len(weight)] += weight
    np.testing.assert_array_equal(total, 1.0)  # bitwise: r and 1 - r share every position


def test_blend_weights_hand_example():
    # Tiles at 0, 2, 4, 6 of length 4 on 10: each takes over across its 2-wide overlap with
    # ramps at the midpoints (0.5 / 2, 1.5 / 2).
    weights = blend_weights_1d([0, 2, 4, 6], 4, 10)
    expected = [
        [1, 1, 0.75, 0.25],
        [0.25, 0.75, 0.75, 0.25],
        [0.25, 0.75, 0.75, 0.25],
        [0.25, 0.75, 1, 1],
    ]
    np.testing.assert_array_equal(np.stack(weights), np.array(expected, np.float32))


# ---- Tiled map with stand-ins for the VAE ------------------------------------------------


def _in_time_pieces(y, size=2):
    return [(y[:, t : t + size],) for t in range(0, y.shape[1], size)]


def _pool_then_tanh(x, fs):  # stands in for an encoder: block-local, fs-aligned
    b, t, h, w, f = x.shape
    return np.tanh(x.reshape(b, t, h // fs, fs, w // fs, fs, f).mean(axis=(3, 5)) * 3)


def _repeat_then_sin(x, fs):  # stands in for a decoder
    return np.sin(3 * np.repeat(np.repeat(x, fs, axis=2), fs, axis=3))


@pytest.mark.parametrize("tile, overlap", [((3, 2), 1), ((4, 5), 2), ((2, 2), 1), ((9, 9), 0)])
def test_tiled_map_equals_untiled_for_block_local_functions(tile, overlap):
    # Every tile computes exactly the untiled values on its pixels (the functions see only
    # fs-aligned blocks, and tiles are fs-aligned), so the blend returns them with weights that
    # sum to one: equal up to float32 rounding of the weighted sum.
    fs, x = 4, np.random.default_rng(0).normal(size=(2, 5, 7 * 4, 6 * 4, 3)).astype(np.float32)
    (encoded,) = tiled_map(
        lambda crop: _in_time_pieces(_pool_then_tanh(crop, fs)), x, tile, overlap, fs, 1, 5
    )
    np.testing.assert_allclose(encoded, _pool_then_tanh(x, fs), rtol=1e-6, atol=1e-6)
    z = x[:, :, :7, :6]
    (decoded,) = tiled_map(
        lambda crop: _in_time_pieces(_repeat_then_sin(crop, fs)), z, tile, overlap, 1, fs, 5
    )
    np.testing.assert_allclose(decoded, _repeat_then_sin(z, fs), rtol=1e-6, atol=1e-6)


# ---- The tiled VAE -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    model, params, video = tiny_vae_and_clip()
    latents = np.asarray(_whole(model, params, video, "encode")[0])
    return model, params, video, latents  # latents (1, 3, 4, 8, 8)


@pytest.fixture(scope="module")
def patched_vae():
    """The "tiny64-t2" preset (2×2 pixel patches, ft = 2, fs = 4) with random params, on the
    same clip."""
    model = VideoVAE(VAE_PRESETS["tiny64-t2"])
    _, _, video = tiny_vae_and_clip()
    params = random_vae_params(model, video[:, :3], np.random.default_rng(1))
    latents = np.asarray(_whole(model, params, video, "encode")[0])
    return model, params, video, latents  # latents (1, 5, 4, 8, 8)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _whole(model, params, x, method):
    return model.apply({"params": params}, x, method=getattr(VideoVAE, method))


# Each preset's fixture: both have fs = 4, so the same tiles fit; chunks of 4 pixel frames
# suit ft = 4 and ft = 2.
PRESETS = {"tiny": "vae", "tiny64-t2": "patched_vae"}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("tile", [(16, 32), (64, 64)])
def test_one_tile_over_the_whole_frame_equals_untiled(request, preset, tile):
    model, params, video, latents = request.getfixturevalue(PRESETS[preset])
    mean, logvar = encode_tiled(model, params, video, 4, tile, overlap=8)
    chex.assert_trees_all_close(
        (mean, logvar), _whole(model, params, video, "encode"), atol=1e-5, rtol=1e-5
    )
    decoded = decode_tiled(model, params, latents, 1, tile, overlap=8)
    chex.assert_trees_all_close(
        decoded, _whole(model, params, latents, "decode"), atol=1e-5, rtol=1e-5
    )


# The crops run chunked with the tiles' chunk length (chunked equals whole-clip passes, see
# test_vae_chunked.py), so the reference reuses the tiles' compiled chunk calls.
@pytest.mark.parametrize("preset", PRESETS)
def test_encode_tiled_equals_hand_blend_of_crop_encodes(request, preset):
    # Width 32 px = 8 latent px; tiles of 6 latent px overlapping by 4 start at 0 and 2. Over
    # the shared latent columns 2..5, tile 1 ramps in at (j + 0.5) / 4.
    model, params, video, _ = request.getfixturevalue(PRESETS[preset])
    left, _ = encode_chunked(model, params, video[:, :, :, 0:24], 4)  # (1, 3, 4, 6, 8)
    right, _ = encode_chunked(model, params, video[:, :, :, 8:32], 4)
    ramp = np.array([0.125, 0.375, 0.625, 0.875], np.float32)[:, None]  # (4, 1) over (W, C)
    expected = np.concatenate(
        [
            left[..., :2, :],
            (1 - ramp) * left[..., 2:, :] + ramp * right[..., :4, :],
            right[..., 4:, :],
        ],
        axis=3,
    )
    mean, _ = encode_tiled(model, params, video, 4, (16, 24), overlap=16)
    np.testing.assert_allclose(mean, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_tiled_equals_hand_blend_of_crop_decodes(request, preset):
    # Latent width 8 → 32 px; tiles of 24 px overlapping by 16 start at 0 and 8 px. Over the
    # shared pixel columns 8..23, tile 1 ramps in at (j + 0.5) / 16.
    model, params, _, latents = request.getfixturevalue(PRESETS[preset])
    left = decode_chunked(model, params, latents[:, :, :, 0:6], 1)  # (1, 9, 16, 24, 3)
    right = decode_chunked(model, params, latents[:, :, :, 2:8], 1)
    ramp = ((np.arange(16) + 0.5) / 16).astype(np.float32)[:, None]
    expected = np.concatenate(
        [
            left[..., :8, :],
            (1 - ramp) * left[..., 8:, :] + ramp * right[..., :16, :],
            right[..., 16:, :],
        ],
        axis=3,
    )
    decoded = decode_tiled(model, params, latents, 1, (16, 24), overlap=16)
    np.testing.assert_allclose(decoded, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "tile, overlap, message",
    [
        ((16, 18), 4, "multiple of the spatial factor 4"),
        ((0, 16), 0, "multiple of the spatial factor 4"),
        ((16,), 4, r"\(height, width\)"),
        ((8, 16), 8, r"smaller than the tile"),
        ((16, 8), 8, r"smaller than the tile"),
        ((16, 24), 24, r"smaller than the tile"),
        ((16, 16), 6, "overlap must be a multiple of the spatial factor 4"),
        ((16, 16), -4, "overlap must be"),
    ],
)
def test_bad_tiles_raise(vae, tile, overlap, message):
    model, params, video, latents = vae
    with pytest.raises(ValueError, match=message):
        encode_tiled(model, params, video, 4, tile, overlap)
    with pytest.raises(ValueError, match=message):
        decode_tiled(model, params, latents, 1, tile, overlap)


def test_bad_chunk_raises_before_work(vae):
    model, params, video, latents = vae
    with pytest.raises(ValueError, match="multiple of the temporal factor 4"):
        encode_tiled(model, params, video, 6, (16, 16), 4)
    with pytest.raises(ValueError, match="positive number of latent frames"):
        decode_tiled(model, params, latents, 0, (16, 16), 4)
