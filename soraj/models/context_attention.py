"""Context-parallel self-attention over packed rows.

When the logical "tokens" axis is split over c devices (the rules in force map it to a mesh
axis of size c > 1), every device holds L/c consecutive tokens of each row. Attention needs
every key of a query's segment, so the devices must exchange something; the strategy says what:

  all_gather  each device gathers all keys and values (and their segment ids) and attends its
              own queries to them: O(L) memory per device, the simple choice at c·L small.
  ulysses     an all-to-all turns token shards into head shards (N/c heads, all L tokens), the
              attention runs locally, and a second all-to-all turns them back: heads must
              divide by c.
  ring        keys and values move one device along the axis per hop; each hop's partial
              result merges by log-sum-exp. A jax.custom_vjp: the backward pass rotates dK/dV
              with their blocks, so memory per device stays O(L/c) whatever the hop count.
              Hops whose query and key blocks share no segment are skipped.
  usp         Ulysses inside groups of u consecutive devices and the ring across the c/u
              groups, for meshes where the heads do not divide by c.

Each runs inside `jax.shard_map` over the tokens' mesh axis (and batch and heads over theirs,
which need no exchange). The axis is found from the logical rules, so this file names no mesh
axis. Segment ids travel as gathered int32 rows (4 bytes a token): each ring hop slices the
ids of the block it holds.

The ring's per-hop kernels (soraj/models/attention_blocks.py) return (output, log-sum-exp):
the dense reference off TPU, Pallas splash (forward with residuals and its matching backward,
interpreted off TPU) with the splash backend.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from soraj.models.attention_blocks import BLOCK_KERNELS, EMPTY_LSE, merge_blocks
from soraj.models.splash_kernel import LANES

CONTEXT_STRATEGIES = ("all_gather", "ulysses", "ring", "usp")
RING_KERNELS = ("reference", "splash")

_HAS_KEY_THRESHOLD = EMPTY_LSE / 2


# ---- The tokens' mesh axis ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ContextAxis:
    name: str
    size: int


def context_axis() -> ContextAxis | None:
    """The mesh axis the logical "tokens" axis is split over, under the rules and the abstract
    mesh in force; None when there is none or it has one device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axes = nn.logical_to_mesh_axes(("tokens",))[0]
    if axes is None:
        return None
    if not isinstance(axes, str):
        raise ValueError(f"context parallelism needs the tokens on one mesh axis, got {axes!r}")
    size = mesh.shape.get(axes, 1)
    return ContextAxis(axes, size) if size > 1 else None


# ---- Ring -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ring:
    """A ring over the groups of `group` consecutive devices of a mesh axis: the device at
    index j sends to j + group, so ring position j // group holds the tokens of block
    (position - hop) mod (size // group) at each hop."""

    axis: ContextAxis
    group: int
    kernel: str
    skip_disjoint: bool

    @property
    def hops(self) -> int:
        return self.axis.size // self.group

    def position(self):
        return lax.axis_index(self.axis.name) // self.group

    def rotate(self, tree):
        size = self.axis.size
        pairs = [(j, (j + self.group) % size) for j in range(size)]
        return jax.tree.map(lambda x: lax.ppermute(x, self.axis.name, pairs), tree)


def _block_ids(all_kv_ids, block, length):  # (B, hops·M) -> (B, M) of ring block `block`
    return lax.dynamic_slice_in_dim(all_kv_ids, block * length, length, axis=1)


def _segments_overlap(q_ids, kv_ids):
    """Whether any row's real query and key ids share a value range: when none does, no query
    of the block sees any key of it (exact for any order of ids; padding, id 0, is left out)."""
    big = jnp.iinfo(jnp.int32).max

    def id_range(ids):
        real = ids != 0
        return jnp.where(real, ids, big).min(axis=1), jnp.where(real, ids, 0).max(axis=1)

    (q_low, q_high), (kv_low, kv_high) = id_range(q_ids), id_range(kv_ids)
    return jnp.any(jnp.maximum(q_low, kv_low) <= jnp.minimum(q_high, kv_high))


def _ring_block_forward(ring: Ring, q, k, v, q_ids, kv_ids):
    forward, _ = BLOCK_KERNELS[ring.kernel]
    if not ring.skip_disjoint:
        return forward(q, k, v, q_ids, kv_ids)

    def empty():
        shape = q.shape[:3]
        return jnp.zeros_like(q, jnp.float32), jnp.full(shape, EMPTY_LSE, jnp.float32)

    return lax.cond(
        _segments_overlap(q_ids, kv_ids), lambda: forward(q, k, v, q_ids, kv_ids), empty
    )


def _ring_block_backward(ring: Ring, q, k, v, q_ids, kv_ids, out, lse, d_out):
    _, backward = BLOCK_KERNELS[ring.kernel]
    if not ring.skip_disjoint:
        return backward(q, k, v, q_ids, kv_ids, out, lse, d_out)

    def nothing():
        return (
            jnp.zeros_like(q, jnp.float32),
            jnp.zeros_like(k, jnp.float32),
            jnp.zeros_like(v, jnp.float32),
        )

    return lax.cond(
        _segments_overlap(q_ids, kv_ids),
        lambda: backward(q, k, v, q_ids, kv_ids, out, lse, d_out),
        nothing,
    )


def _hop_loop(start: int, stop: int, body, carry):
    """lax.fori_loop(start, stop, body, carry) as a while loop. A fori_loop with static bounds
    is a scan, and when the custom-vjp ring sits inside a rematerialised block, JAX's partial
    evaluation of that scan stacks every hop's splash residuals (hops × L/c × N × K): memory
    growing with the hop count. The ring's own backward pass differentiates nothing, so a
    while loop, which keeps nothing per hop, is all it needs."""

    def step(state):
        i, carry = state
        return i + 1, body(i, carry)

    return lax.while_loop(lambda state: state[0] < stop, step, (start, carry))[1]


def _ring_forward_pass(ring: Ring, q, k, v, q_ids, all_kv_ids):
    """(out f32, lse) over every block: the own block first, then one rotation per hop."""
    position, length = ring.position(), k.shape[1]
    kv_ids = _block_ids(all_kv_ids, position, length)
    out, lse = _ring_block_forward(ring, q, k, v, q_ids, kv_ids)

    def hop(i, carry):
        k, v, out, lse = carry
        k, v = ring.rotate((k, v))
        kv_ids = _block_ids(all_kv_ids, (position - i) % ring.hops, length)
        block_out, block_lse = _ring_block_forward(ring, q, k, v, q_ids, kv_ids)
        return (k, v, *merge_blocks(out, lse, block_out, block_lse))

    _, _, out, lse = _hop_loop(1, ring.hops, hop, (k, v, out, lse))
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def ring_attention(ring: Ring, q, k, v, q_ids, all_kv_ids):
    """One device's part of ring attention (inside shard_map): its queries q (B, L, N, K) with
    ids (B, L) against every block of keys, starting with its own k, v (B, M, N, K).
    all_kv_ids (B, hops·M) are the key ids of every block, in ring order. → (B, L, N, K)."""
    out, lse = _ring_forward_pass(ring, q, k, v, q_ids, all_kv_ids)
    return jnp.where((lse > _HAS_KEY_THRESHOLD)[..., None], out, 0.0).astype(q.dtype)


def _ring_attention_fwd(ring: Ring, q, k, v, q_ids, all_kv_ids):
    out, lse = _ring_forward_pass(ring, q, k, v, q_ids, all_kv_ids)
    out = jnp.where((lse > _HAS_KEY_THRESHOLD)[..., None], out, 0.0)
    return out.astype(q.dtype), (q, k, v, q_ids, all_kv_ids, out, lse)


def _ring_attention_bwd(ring: Ring, residuals, d_out):
    q, k, v, q_ids, all_kv_ids, out, lse = residuals
    position, length = ring.position(), k.shape[1]
    # Queries with no key output a constant 0: nothing flows back through them.
    d_out = jnp.where((lse > _HAS_KEY_THRESHOLD)[..., None], d_out.astype(jnp.float32), 0.0)

    def block_grads(k, v, hop):
        kv_ids = _block_ids(all_kv_ids, (position - hop) % ring.hops, length)
        return _ring_block_backward(ring, q, k, v, q_ids, kv_ids, out, lse, d_out)

    def hop(i, carry):  # dK/dV travel with their block, one device per hop
        k, v, d_q, d_k, d_v = carry
        block_dq, block_dk, block_dv = block_grads(k, v, i)
        d_k, d_v = ring.rotate((d_k + block_dk, d_v + block_dv))
        k, v = ring.rotate((k, v))
        return k, v, d_q + block_dq, d_k, d_v

    zeros = (jnp.zeros_like(q, jnp.float32), jnp.zeros_like(k, jnp.float32))
    carry = (k, v, zeros[0], zeros[1], jnp.zeros_like(v, jnp.float32))
    k, v, d_q, d_k, d_v = _hop_loop(0, ring.hops - 1, hop, carry)
    # The last block: its keys need not move on, but dK/dV take their last step home.
    block_dq, block_dk, block_dv = block_grads(k, v, ring.hops - 1)
    d_k, d_v = ring.rotate((d_k + block_dk, d_v + block_dv))
    d_q = d_q + block_dq
    return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None, None


ring_attention.defvjp(_ring_attention_fwd, _ring_attention_bwd)


# ---- The strategies, per device -----------------------------------------------------------
# Each takes one device's q, k, v (B, L/c, N', K) and segment ids (B, L/c) and returns its
# (B, L/c, N', K). `local_attention(q, k, v, q_ids, kv_ids)` is the backend's plain attention.


def _all_gather(axis: ContextAxis, local_attention: Callable, q, k, v, ids):
    gather = functools.partial(lax.all_gather, axis_name=axis.name, axis=1, tiled=True)
    return local_attention(q, gather(k), gather(v), ids, gather(ids))  # keys (B, L, N', K)


def _groups(axis: ContextAxis, group: int) -> list[list[int]] | None:
    """Consecutive devices in groups of `group` (None: the whole axis)."""
    if group == axis.size:
        return None
    return [list(range(start, start + group)) for start in range(0, axis.size, group)]


def _tokens_to_heads(axis: ContextAxis, group: int, x):  # (B, L/c, N', K) -> (B, g·L/c, N'/g, K)
    return lax.all_to_all(x, axis.name, 2, 1, tiled=True, axis_index_groups=_groups(axis, group))


def _heads_to_tokens(axis: ContextAxis, group: int, x):  # (B, g·L/c, N'/g, K) -> (B, L/c, N', K)
    return lax.all_to_all(x, axis.name, 1, 2, tiled=True, axis_index_groups=_groups(axis, group))


def _ulysses(axis: ContextAxis, local_attention: Callable, q, k, v, ids):
    q, k, v = (_tokens_to_heads(axis, axis.size, x) for x in (q, k, v))  # (B, L, N'/c, K)
    all_ids = lax.all_gather(ids, axis.name, axis=1, tiled=True)  # (B, L)
    out = local_attention(q, k, v, all_ids, all_ids)
    return _heads_to_tokens(axis, axis.size, out)


def _usp(axis: ContextAxis, group: int, kernel: str, skip_disjoint: bool, q, k, v, ids):
    """Ulysses inside each group of `group` devices, the ring across groups (group 1: the plain
    ring)."""
    ring = Ring(axis, group, kernel, skip_disjoint)
    if group > 1:
        q, k, v = (_tokens_to_heads(axis, group, x) for x in (q, k, v))  # (B, g·L/c, N'/g, K)
    all_ids = lax.all_gather(ids, axis.name, axis=1, tiled=True)  # (B, L)
    q_ids = _block_ids(all_ids, ring.position(), q.shape[1])  # the group's tokens
    out = ring_attention(ring, q, k, v, q_ids, all_ids)
    return _heads_to_tokens(axis, group, out) if group > 1 else out


def ulysses_group(axis_size: int, local_heads: int) -> int:
    """usp's Ulysses group: the largest divisor of the axis size that divides the heads."""
    return max(g for g in range(1, axis_size + 1) if axis_size % g == 0 and local_heads % g == 0)


# ---- Entry points -------------------------------------------------------------------------


def _specs(batch: int, heads: int) -> tuple[PartitionSpec, PartitionSpec]:
    """(q/k/v spec, ids spec) under the rules in force; batch and heads split only where their
    mesh axes divide them (a sampler's batch of 1 on a data-parallel mesh stays whole)."""
    mesh = jax.sharding.get_abstract_mesh()

    def fits(axes, length):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        return axes if length % math.prod(mesh.shape[n] for n in names) == 0 else None

    batch_axes, tokens_axis, heads_axes = nn.logical_to_mesh_axes(("batch", "tokens", "heads"))
    batch_axes, heads_axes = fits(batch_axes, batch), fits(heads_axes, heads)
    return (
        PartitionSpec(batch_axes, tokens_axis, heads_axes, None),
        PartitionSpec(batch_axes, tokens_axis),
    )


def local_heads(heads: int, spec: PartitionSpec) -> int:
    mesh = jax.sharding.get_abstract_mesh()
    names = (spec[2],) if isinstance(spec[2], str) else tuple(spec[2] or ())
    return heads // math.prod(mesh.shape[n] for n in names)


def context_parallel_attention(
    q,
    k,
    v,
    segment_ids,
    *,
    strategy: str,
    axis: ContextAxis,
    ring_kernel: str,
    local_attention: Callable,
    skip_disjoint_hops: bool = True,
):
    """Self-attention q, k, v (B, L, N, K) with segment ids (B, L) (0: padding), the tokens split
    over `axis` by `strategy`; L is padded to a multiple of the axis (and lanes, for splash).
    skip_disjoint_hops=False runs every ring hop (the same result; for tests and timing)."""
    if strategy not in CONTEXT_STRATEGIES:
        raise ValueError(
            f"unknown context-parallel strategy {strategy!r}; "
            f"allowed: {', '.join(CONTEXT_STRATEGIES)}"
        )
    if ring_kernel not in RING_KERNELS:
        raise ValueError(f"unknown ring kernel {ring_kernel!r}; allowed: {', '.join(RING_KERNELS)}")
    batch, length, heads, _ = q.shape
    qkv_spec, ids_spec = _specs(batch, heads)
    shard_heads = local_heads(heads, qkv_spec)
    if strategy == "ulysses" and shard_heads % axis.size:
        raise ValueError(
            f"ulysses needs the heads on each device ({shard_heads}) to divide by the context "
            f"axis ({axis.size}); use context_parallel='usp' or 'ring', or another mesh"
        )
    multiple = axis.size * (LANES if ring_kernel == "splash" else 1)
    pad = -length % multiple
    if pad:
        q, k, v = (jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) for x in (q, k, v))
        segment_ids = jnp.pad(segment_ids, [(0, 0), (0, pad)])  # id 0: padding

    if strategy == "all_gather":
        per_device = functools.partial(_all_gather, axis, local_attention)
    elif strategy == "ulysses":
        per_device = functools.partial(_ulysses, axis, local_attention)
    else:
        group = 1 if strategy == "ring" else ulysses_group(axis.size, shard_heads)
        per_device = functools.partial(_usp, axis, group, ring_kernel, skip_disjoint_hops)
    out = jax.shard_map(
        per_device,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec),
        out_specs=qkv_spec,
        check_vma=False,  # splash's pallas_call carries no varying-axis types
    )(q, k, v, segment_ids)
    return out[:, :length]  # (B, L, N, K)


def queries_parallel_attention(
    q, k, v, q_segment_ids, kv_segment_ids, kv_mask, *, axis: ContextAxis, local_attention
):
    """Attention of queries split over `axis` to keys every device holds whole (the text of
    cross-attention): no exchange at all. In shard_map, so a kernel GSPMD cannot partition
    (splash's pallas_call) runs on each device's own queries instead of on the whole row."""
    batch, length, heads, _ = q.shape
    qkv_spec, ids_spec = _specs(batch, heads)
    kv_spec = PartitionSpec(qkv_spec[0], None, qkv_spec[2], None)
    kv_ids_spec = PartitionSpec(ids_spec[0], None)
    pad = -length % axis.size
    if pad:
        q = jnp.pad(q, [(0, 0), (0, pad), (0, 0), (0, 0)])
        q_segment_ids = jnp.pad(q_segment_ids, [(0, 0), (0, pad)])  # id 0: padding
    if kv_mask is None:
        kv_mask = jnp.ones(kv_segment_ids.shape, bool)
    out = jax.shard_map(
        local_attention,
        in_specs=(qkv_spec, kv_spec, kv_spec, ids_spec, kv_ids_spec, kv_ids_spec),
        out_specs=qkv_spec,
        check_vma=False,
    )(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
    return out[:, :length]  # (B, L, N, K)
