"""adaLN modulation of the DiT's blocks and final layer, in the three layouts of
DiTConfig.modulation (single, per_segment, per_token)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
      per_segment  ((B, S·K, D), slot index (B, L)): this block's Dense on the c of each
                   (sample, timestep) slot (timestep_slots), then every token takes its slot's
                   row; an index past the table (a t with no slot) gives NaN, never a
                   neighbour's values.
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
        slot_c, slot_index = c
        D = slot_c.shape[-1]
        dense = _dense(parts * D, dtype, name="adaLN")
        per_slot = dense(nn.silu(slot_c)).astype(jnp.float32)  # (B, S·K, parts·D)
        values = jnp.take_along_axis(
            per_slot, slot_index[..., None], axis=1, mode="fill", fill_value=jnp.nan
        )  # (B, L, parts·D)
    else:
        D = c.shape[-1]
        dense = _dense(parts * D, dtype, name="adaLN")
        values = dense(nn.silu(c))  # (B, L, parts·D)
    return jnp.split(values, parts, axis=-1)  # each (B, L, D)


#################### Timestep slots (per_segment) ####################


def timestep_slots(t, segment_ids, num_segments: int, slots_per_segment: int):
    """The distinct timesteps of each sample and each token's slot among them.

    A sample's tokens carry at most a few distinct t: its noise level, and 0 on clean
    conditioning tokens (cond_mask). Its K = slots_per_segment slots hold its K largest
    distinct t, so each block's adaLN Dense runs on S·K rows instead of L tokens.

    t (B, L), segment_ids i32 (B, L) -> slot_t (B, S·K) (0 where a slot is unused) and
    slot_index i32 (B, L): token i reads slot_t[b, slot_index[b, i]] == t[b, i]. A real token
    whose t is not among its sample's K largest gets index S·K, past the table (NaN, loudly);
    padding reads its row's first slot.
    """
    S, K = num_segments, slots_per_segment
    in_segment = segment_ids[..., None] == jnp.arange(1, S + 1)  # (B, L, S)
    remaining = in_segment
    largest = []
    for _ in range(K):  # peel off each sample's largest remaining t
        value = jnp.max(jnp.where(remaining, t[..., None], -jnp.inf), axis=1)  # (B, S)
        largest.append(value)
        remaining = remaining & (t[..., None] < value[:, None, :])
    slot_t = jnp.stack(largest, axis=-1)  # (B, S, K), -inf where unused
    segment_index = jnp.clip(segment_ids - 1, 0, S - 1)  # (B, L)
    token_slots = jnp.take_along_axis(slot_t, segment_index[..., None], axis=1)  # (B, L, K)
    match = token_slots == t[..., None]  # (B, L, K)
    found = match.any(-1) | (segment_ids <= 0)
    slot_index = jnp.where(found, segment_index * K + jnp.argmax(match, axis=-1), S * K)
    slot_t = jnp.where(jnp.isfinite(slot_t), slot_t, 0.0).reshape(t.shape[0], S * K)
    return slot_t, slot_index.astype(jnp.int32)


def check_timestep_slots(t, segment_ids, slots_per_segment: int):
    """Refuses concrete inputs with more distinct t in a sample than it has slots (under jit,
    timestep_slots gives those tokens NaN instead)."""
    if isinstance(t, jax.core.Tracer) or isinstance(segment_ids, jax.core.Tracer):
        return
    t, segment_ids = np.asarray(t), np.asarray(segment_ids)
    for b in range(segment_ids.shape[0]):
        for segment in np.unique(segment_ids[b][segment_ids[b] > 0]):
            values = np.unique(t[b][segment_ids[b] == segment])
            if values.size > slots_per_segment:
                raise ValueError(
                    f"modulation='per_segment' takes at most timesteps_per_sample="
                    f"{slots_per_segment} distinct t per sample, but segment {segment} of row "
                    f"{b} has {values.size} (from {values.min():.4g} to {values.max():.4g}); "
                    "raise timesteps_per_sample, or use modulation='single' or 'per_token'"
                )
