"""VAE params of the right shapes drawn in NumPy, for tests that need a VAE with signal on
every path but not a trained one (compiling init costs seconds on this CPU)."""

import jax
import jax.numpy as jnp
import numpy as np


def random_vae_params(model, video, noise: np.random.Generator):
    """Kernels scaled by fan-in, non-zero biases and norm offsets."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)["params"]

    def draw(path, leaf):
        if leaf.ndim > 1:  # conv and dense kernels, (..., F_in, F_out)
            return noise.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        offset = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return offset + 0.1 * noise.normal(size=leaf.shape)

    drawn = jax.tree_util.tree_map_with_path(draw, shapes)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), drawn)


def tiny_vae_and_clip():
    """The tiny preset with random params, and a 9×16×32 clip in [-1, 1]: the shared set-up of
    the tiling and memory-planner tests."""
    from soraj.models.vae import VAE_PRESETS, VideoVAE

    model = VideoVAE(VAE_PRESETS["tiny"])
    noise = np.random.default_rng(0)
    video = noise.uniform(-1, 1, (1, 9, 16, 32, 3)).astype(np.float32)
    return model, random_vae_params(model, video[:, :5], noise), video
