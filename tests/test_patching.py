"""patchify / unpatchify against a naive patch loop, round trips, and bad-input errors."""

import chex
import jax
import numpy as np
import pytest

from soraj.models.patching import grid_shape, patchify, unpatchify

CASES = [
    ((1, 4, 6, 3), (1, 2, 2)),
    ((4, 6, 4, 2), (2, 3, 1)),
    ((3, 2, 2, 5), (1, 1, 1)),
    ((6, 8, 4, 4), (3, 4, 2)),
]


def naive_patchify(latents, patch_size):
    T, H, W, C = latents.shape
    pt, ph, pw = patch_size
    tokens, coords = [], []
    for t in range(T // pt):
        for h in range(H // ph):
            for w in range(W // pw):
                block = latents[t * pt : (t + 1) * pt, h * ph : (h + 1) * ph, w * pw : (w + 1) * pw]
                tokens.append(block.reshape(-1))  # (pt, ph, pw, C) flattened
                coords.append((t, h, w))
    return np.stack(tokens), np.array(coords, dtype=np.int32)


@pytest.mark.parametrize("shape,patch_size", CASES)
def test_patchify_matches_naive_loop_and_round_trips(shape, patch_size):
    latents = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tokens, coords = jax.jit(patchify, static_argnums=1)(latents, patch_size)
    want_tokens, want_coords = naive_patchify(latents, patch_size)
    np.testing.assert_array_equal(np.asarray(tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(coords), want_coords)
    assert coords.dtype == np.int32

    grid = grid_shape(shape[:3], patch_size)
    back = unpatchify(tokens, grid, patch_size, shape[-1])
    np.testing.assert_array_equal(np.asarray(back), latents)


def test_vmap_over_batch():
    latents = np.random.default_rng(1).normal(size=(3, 2, 4, 6, 2)).astype(np.float32)
    tokens, coords = jax.vmap(lambda x: patchify(x, (1, 2, 3)))(latents)
    chex.assert_shape(tokens, (3, 8, 12))
    chex.assert_shape(coords, (3, 8, 3))
    for b in range(3):
        np.testing.assert_array_equal(
            np.asarray(tokens[b]), naive_patchify(latents[b], (1, 2, 3))[0]
        )
    back = jax.vmap(lambda x: unpatchify(x, (2, 2, 2), (1, 2, 3), 2))(tokens)
    np.testing.assert_array_equal(np.asarray(back), latents)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="H=5 is not a multiple"):
        patchify(np.zeros((2, 5, 4, 3)), (1, 2, 2))
    with pytest.raises(ValueError, match="patch_size"):
        grid_shape((2, 4, 4), (1, 0, 2))
    with pytest.raises(ValueError, match="expected"):
        unpatchify(np.zeros((7, 12)), (1, 2, 4), (1, 2, 2), 3)
