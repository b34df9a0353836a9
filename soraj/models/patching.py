"""Cut latent videos (T, H, W, C) into spacetime patch tokens with grid coordinates, and back."""

import jax.numpy as jnp
import numpy as np

PatchSize = tuple[int, int, int]


# ---- Validation ----


def _check_patch_size(patch_size: PatchSize) -> None:
    if len(patch_size) != 3 or any(int(p) < 1 for p in patch_size):
        raise ValueError(
            f"patch_size must be three positive ints (pt, ph, pw), got {tuple(patch_size)}"
        )


def grid_shape(latent_shape: tuple[int, int, int], patch_size: PatchSize) -> tuple[int, int, int]:
    """The patch grid (gt, gh, gw) of a latent of shape (T, H, W); dims must divide evenly."""
    _check_patch_size(patch_size)
    if len(latent_shape) != 3:
        raise ValueError(f"latent_shape must be (T, H, W), got {tuple(latent_shape)}")
    for name, size, patch in zip("THW", latent_shape, patch_size, strict=True):
        if size % patch:
            raise ValueError(
                f"latent {name}={size} is not a multiple of the patch size {patch} "
                f"(patch_size={tuple(patch_size)}, latent (T, H, W)={tuple(latent_shape)})"
            )
    return tuple(int(s) // int(p) for s, p in zip(latent_shape, patch_size, strict=True))


# ---- Patchify / unpatchify ----


def patch_coords(grid: tuple[int, int, int]) -> jnp.ndarray:
    """(t, h, w) index of every patch in row-major (t, h, w) order."""
    gt, gh, gw = grid
    # Shapes are static, so numpy builds the constant and jit sees no extra work.
    mesh = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
    return jnp.asarray(np.stack(mesh, axis=-1).reshape(-1, 3), dtype=jnp.int32)  # (N, 3)


def patchify(latents: jnp.ndarray, patch_size: PatchSize) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(T, H, W, C) -> tokens (N, P) with P ordered (pt, ph, pw, C), coords int32 (N, 3).

    Works under jit and vmap (vmap over a leading batch axis gives (B, N, P), (B, N, 3)).
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (T, H, W, C), got shape {latents.shape}")
    T, H, W, C = latents.shape
    gt, gh, gw = grid_shape((T, H, W), patch_size)
    pt, ph, pw = patch_size
    x = latents.reshape(gt, pt, gh, ph, gw, pw, C)
    x = x.transpose(0, 2, 4, 1, 3, 5, 6)  # (gt, gh, gw, pt, ph, pw, C)
    tokens = x.reshape(gt * gh * gw, pt * ph * pw * C)  # (N, P)
    return tokens, patch_coords((gt, gh, gw))


def unpatchify(
    tokens: jnp.ndarray, grid: tuple[int, int, int], patch_size: PatchSize, channels: int
) -> jnp.ndarray:
    """tokens (N, P) on a (gt, gh, gw) grid -> latents (T, H, W, C); inverse of patchify."""
    _check_patch_size(patch_size)
    gt, gh, gw = (int(g) for g in grid)
    pt, ph, pw = patch_size
    expected = (gt * gh * gw, pt * ph * pw * channels)
    if tokens.shape != expected:
        raise ValueError(
            f"tokens shape {tokens.shape} does not match grid {tuple(grid)}, "
            f"patch_size {tuple(patch_size)} and channels {channels}: expected {expected}"
        )
    x = tokens.reshape(gt, gh, gw, pt, ph, pw, channels)
    x = x.transpose(0, 3, 1, 4, 2, 5, 6)  # (gt, pt, gh, ph, gw, pw, C)
    return x.reshape(gt * pt, gh * ph, gw * pw, channels)  # (T, H, W, C)
