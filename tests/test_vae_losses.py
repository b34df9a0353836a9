"""The VAE's edge term against a naive loop over pixel pairs."""

import numpy as np

from soraj.vae_losses import edge_loss


def naive_edge_loss(reconstruction, target):
    """Mean squared difference of vertical neighbour differences, plus the same horizontally."""
    *lead, height, width, channels = target.shape
    flat_r = reconstruction.reshape(-1, height, width, channels)
    flat_t = target.reshape(-1, height, width, channels)
    vertical, horizontal = [], []
    for r, t in zip(flat_r, flat_t, strict=True):
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    if y + 1 < height:
                        d = (r[y + 1, x, c] - r[y, x, c]) - (t[y + 1, x, c] - t[y, x, c])
                        vertical.append(d * d)
                    if x + 1 < width:
                        d = (r[y, x + 1, c] - r[y, x, c]) - (t[y, x + 1, c] - t[y, x, c])
                        horizontal.append(d * d)
    return np.mean(vertical) + np.mean(horizontal)


def test_edge_loss_matches_naive_loop():
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (2, 3, 5, 6, 3)).astype(np.float32)
    reconstruction = rng.uniform(-1, 1, target.shape).astype(np.float32)
    np.testing.assert_allclose(
        float(edge_loss(reconstruction, target)),
        naive_edge_loss(reconstruction.astype(np.float64), target.astype(np.float64)),
        rtol=1e-5,
    )


def test_edge_loss_ignores_a_uniform_shift_and_sees_a_blur():
    rng = np.random.default_rng(1)
    target = np.zeros((1, 1, 8, 8, 3), np.float32)
    target[..., 2:6, 2:6, :] = 1.0  # a square: edges only on its border
    assert float(edge_loss(target + 0.25, target)) == 0.0  # a colour shift has no edges
    blurred = target.copy()
    blurred[..., 1:7, 1:7, :] = 0.5 * blurred[..., 1:7, 1:7, :] + 0.25
    assert float(edge_loss(blurred, target)) > 0.0
    noise = rng.normal(0, 0.1, target.shape).astype(np.float32)
    assert float(edge_loss(target + noise, target)) > 0.0
