"""Class-conditional sampling (DiTConfig.conditioning = "class"): noise → latent tokens for one
class label per row, with classifier-free guidance against the null label."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from soraj.diffusion.sampling import cfg_velocity_batched, euler_sample
from soraj.models import patching
from soraj.models.dit import DiT


def class_labels(class_names, prompts) -> np.ndarray:
    """Class names (or their indices as text) → i32 labels (B, 1), refusing unknown ones."""
    labels = []
    for prompt in prompts:
        if prompt in class_names:
            labels.append(class_names.index(prompt))
        elif str(prompt).isdigit() and int(prompt) < len(class_names):
            labels.append(int(prompt))
        else:
            shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
            raise ValueError(
                f"{prompt!r} is not a class of this model; give a class name or index "
                f"0..{len(class_names) - 1}: {shown}"
            )
    return np.asarray(labels, np.int32)[:, None]


@functools.partial(jax.jit, static_argnames=("dit", "grid", "num_steps"))
def sample_class_tokens(params, labels, rng, guidance, *, dit: DiT, grid, num_steps: int):
    """labels i32 (B, 1) → clean latent tokens (B, N, P), one sample per row; rows [B, 2B) of
    the doubled CFG batch take the null label, num_classes."""
    batch = labels.shape[0]
    num_tokens = grid[0] * grid[1] * grid[2]
    coords = jnp.broadcast_to(patching.patch_coords(grid), (2 * batch, num_tokens, 3))
    segment_ids = jnp.ones((2 * batch, num_tokens), jnp.int32)
    null = jnp.full_like(labels, dit.config.num_classes)
    labels_both = jnp.concatenate([labels, null])  # (2B, 1)

    def both(x_t, t):  # rows [0, B) conditioned, [B, 2B) on the null label
        return dit.apply({"params": params["dit"]}, x_t, t, coords, segment_ids, labels=labels_both)

    noise = jax.random.normal(rng, (batch, num_tokens, dit.config.patch_features))
    return euler_sample(cfg_velocity_batched(both, guidance), noise, num_steps)
