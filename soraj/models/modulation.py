"""adaLN modulation of the DiT's blocks and final layer, in the three layouts of
DiTConfig.modulation (single, per_segment, per_token)."""

import flax.linen as nn
import jax.numpy as jnp

from soraj.models.layers import dense_init


def _dense(features: int, dtype, name: str):
    """A zero-initialised (adaLN-Zero) Dense from the embedding to `features` outputs."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=dense_init(("embed", "modulation"), nn.initializers.zeros_init()),
        name=name,
    )


def block_modulation(module: nn.Module, mode: str, c, parts: int, dtype, table_init=None):
    """The `parts` adaLN vectors (shift, scale, gate, ...) of one block, each (B, L, D).

    `c` is what DiT.__call__ prepared for this mode:
      single       (B, L, parts·D): the shared per-token modulation; this block adds its table.
      per_segment  ((B, S, D), segment index (B, L)): this block's Dense on each sample's c,
                   then every token takes its sample's row.
      per_token    (B, L, D): this block's Dense on every token's c.
    A block's modulation starts at zero (adaLN-Zero): each gate is 0, so each block starts as
    the identity. `table_init` overrides the zero start of an adaLN-single table.
    """
    if mode == "single":
        D = c.shape[-1] // parts
        table = module.param(
            "modulation_table",
            dense_init(("modulation_part", "embed"), table_init or nn.initializers.zeros_init()),
            (parts, D),
            jnp.float32,
        )
        values = c.reshape(*c.shape[:-1], parts, D) + table  # (B, L, parts, D)
        return [values[..., i, :] for i in range(parts)]
    if mode == "per_segment":
        segment_c, segment_index = c
        D = segment_c.shape[-1]
        dense = _dense(parts * D, dtype, name="adaLN")
        per_segment = dense(nn.silu(segment_c)).astype(jnp.float32)  # (B, S, parts·D)
        values = jnp.take_along_axis(per_segment, segment_index[..., None], axis=1)
    else:
        D = c.shape[-1]
        dense = _dense(parts * D, dtype, name="adaLN")
        values = dense(nn.silu(c))  # (B, L, parts·D)
    return jnp.split(values, parts, axis=-1)  # each (B, L, D)
