"""Transformer blocks: segment-masked attention, 3D RoPE, MLP, norms, timestep embedding."""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from soraj.models.context_attention import (
    CONTEXT_STRATEGIES,
    context_axis,
    context_parallel_attention,
    queries_parallel_attention,
)
from soraj.models.splash_kernel import splash_attention

ATTENTION_BACKENDS = ("xla", "cudnn", "splash")

# Finite, so a query with no valid key gives a uniform (not NaN) softmax that we then zero.
_MASKED_LOGIT = -1e30


#################### Norms and modulation ####################


def layer_norm(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """LayerNorm without affine parameters, computed in f32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis with a learned scale; statistics in f32."""

    eps: float = 1e-6
    scale_axis_name: str = "kv"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.scale_axis_name,)),
            (x.shape[-1],),
            jnp.float32,
        )
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.square(x32).mean(axis=-1, keepdims=True) + self.eps)
        return (x32 * scale).astype(x.dtype)


def modulate(x: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """adaLN modulation with per-token shift/scale: all (B, L, D)."""
    return x * (1 + scale) + shift


#################### 3D rotary embedding ####################


def default_rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Split K into even (kt, kh, kw): time gets about a quarter, height and width share the rest.

    For K=64 this gives (16, 24, 24); for K=72, (20, 26, 26).
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(
            f"3D RoPE needs an even head_dim of at least 6 (one rotation pair per axis), "
            f"got {head_dim}"
        )
    pairs = head_dim // 2
    spatial_pairs = (pairs - pairs // 4) // 2
    temporal_pairs = pairs - 2 * spatial_pairs
    return (2 * temporal_pairs, 2 * spatial_pairs, 2 * spatial_pairs)


def rope_3d(
    coords: jnp.ndarray,
    head_dim: int,
    axes_dims: tuple[int, int, int] | None = None,
    theta: float = 10000.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """coords int (B, L, 3) -> (cos, sin), each f32 (B, L, K/2).

    Rotation pair i belongs to one coordinate axis: the first kt/2 pairs to t, then kh/2 to h,
    then kw/2 to w; within an axis the frequencies are theta^(-2j/k_axis).
    """
    axes_dims = default_rope_axes_dims(head_dim) if axes_dims is None else tuple(axes_dims)
    if len(axes_dims) != 3 or any(d <= 0 or d % 2 for d in axes_dims):
        raise ValueError(f"axes_dims must be three positive even ints, got {axes_dims}")
    if sum(axes_dims) != head_dim:
        raise ValueError(f"axes_dims {axes_dims} must sum to head_dim={head_dim}")
    angles = []
    for axis, dim in enumerate(axes_dims):
        freqs = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # (k_axis/2,)
        angles.append(coords[..., axis, None].astype(jnp.float32) * freqs)  # (B, L, k_axis/2)
    angles = jnp.concatenate(angles, axis=-1)  # (B, L, K/2)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, L, N, K) by the angles of pair i."""
    x32 = x.astype(jnp.float32)
    x_even, x_odd = x32[..., 0::2], x32[..., 1::2]  # (B, L, N, K/2)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # (B, L, 1, K/2)
    rotated = jnp.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)  # (B, L, N, K)


#################### Attention ####################


def segment_mask(
    q_segment_ids: jnp.ndarray, kv_segment_ids: jnp.ndarray, kv_mask: jnp.ndarray | None = None
) -> jnp.ndarray:
    """bool (B, L, M): same segment, query not padding, key allowed."""
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    mask &= (q_segment_ids != 0)[:, :, None]
    if kv_mask is not None:
        mask &= kv_mask[:, None, :].astype(bool)
    return mask  # (B, L, M)


def _xla_attention(q, k, v, mask):
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("blnk,bmnk->bnlm", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask[:, None], logits, _MASKED_LOGIT)  # (B, N, L, M)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnlm,bmnk->blnk", probs, v)  # (B, L, N, K)


def _neighbour_blocks(x: jnp.ndarray, window: int, fill) -> jnp.ndarray:
    """(B, n·W, ...) → (B·n, 3W, ...): each block of W positions with the blocks before and
    after it (fill beyond the ends)."""
    b, length = x.shape[:2]
    blocks = x.reshape(b, length // window, window, *x.shape[2:])  # (B, n, W, ...)
    edge = jnp.full_like(blocks[:, :1], fill)
    before = jnp.concatenate([edge, blocks[:, :-1]], axis=1)
    after = jnp.concatenate([blocks[:, 1:], edge], axis=1)
    both = jnp.concatenate([before, blocks, after], axis=2)  # (B, n, 3W, ...)
    return both.reshape(b * (length // window), 3 * window, *x.shape[2:])


def _local_attention(q, k, v, segment_ids, kv_mask, window: int, dense):
    """Self-attention of packed rows whose segments are contiguous runs of at most `window`
    tokens: a query's segment then lies inside its own block of `window` positions and the
    two around it, so each block attends to 3·window keys instead of the whole row. Exact;
    `dense(q, k, v, mask)` is the backend run on the blocks."""
    b, length, num_heads, head_dim = q.shape  # (B, L, N, K)
    pad = -length % window

    def padded(x, fill):
        return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)

    q, k, v = padded(q, 0), padded(k, 0), padded(v, 0)
    ids = padded(segment_ids, 0)  # (B, L')
    blocks = ids.shape[1] // window
    q_blocks = q.reshape(b * blocks, window, num_heads, head_dim)  # (B·n, W, N, K)
    k_blocks = _neighbour_blocks(k, window, 0)  # (B·n, 3W, N, K)
    v_blocks = _neighbour_blocks(v, window, 0)
    kv_mask_blocks = (
        None if kv_mask is None else _neighbour_blocks(padded(kv_mask, False), window, False)
    )
    mask = segment_mask(
        ids.reshape(b * blocks, window), _neighbour_blocks(ids, window, 0), kv_mask_blocks
    )  # (B·n, W, 3W)
    out = dense(q_blocks, k_blocks, v_blocks, mask)  # (B·n, W, N, K)
    out = jnp.where(mask.any(axis=-1)[:, :, None, None], out, 0)
    return out.reshape(b, blocks * window, num_heads, head_dim)[:, :length]  # (B, L, N, K)


def _cudnn_attention(q, k, v, mask):
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=None)


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    q_segment_ids: jnp.ndarray,
    kv_segment_ids: jnp.ndarray,
    kv_mask: jnp.ndarray | None = None,
    backend: str = "xla",
    max_segment_length: int | None = None,
    context_parallel: str | None = None,
) -> jnp.ndarray:
    """Segment-masked softmax attention: q (B, L, N, K), k/v (B, M, N, K) -> (B, L, N, K).

    A query attends only to keys of its own segment (and with kv_mask True); padding queries
    (segment 0) and queries with no valid key output exactly 0.
    Backends: "xla" (dense reference), "cudnn" (jax.nn.dot_product_attention, which picks
    cuDNN flash attention where it can and XLA otherwise) or "splash" (the Pallas TPU kernel,
    block-diagonal by segment ids without an (L, M) mask; interpreted off TPU).

    max_segment_length W (static): the caller guarantees that, in self-attention over packed
    rows, every segment is one contiguous run of at most W tokens (the packer's rows with a
    token budget of W). "xla" and "cudnn" then attend within 3W-key windows, not the whole
    row: the same result for far less work when L ≫ W. Splash skips masked blocks itself.

    context_parallel: when the logical "tokens" axis is split over more than one device, the
    strategy of soraj/models/context_attention.py by which self-attention exchanges keys
    ("all_gather", "ulysses", "ring" or "usp"), or "queries" for attention to keys every
    device holds whole (cross-attention to text): each device attends its own queries. On one
    device it changes nothing.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; allowed: {', '.join(ATTENTION_BACKENDS)}"
        )
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(
            f"q must be (B, L, N, K) and k, v (B, M, N, K); got {q.shape}, {k.shape}, {v.shape}"
        )
    if context_parallel is not None:
        if context_parallel not in (*CONTEXT_STRATEGIES, "queries"):
            raise ValueError(
                f"unknown context-parallel strategy {context_parallel!r}; "
                f"allowed: {', '.join(CONTEXT_STRATEGIES)}, queries"
            )
        self_attention = context_parallel != "queries"
        if self_attention and (kv_mask is not None or q.shape[1] != k.shape[1]):
            raise ValueError(
                f"context_parallel={context_parallel!r} is for self-attention (L = M, no "
                "kv_mask); 'queries' is for attention to keys every device holds whole"
            )
        axis = context_axis()

        def local_attention(q, k, v, q_ids, kv_ids, kv_mask=None):
            return attention(
                q,
                k,
                v,
                q_segment_ids=q_ids,
                kv_segment_ids=kv_ids,
                kv_mask=kv_mask,
                backend=backend,
            )

        if axis is not None and not self_attention:
            return queries_parallel_attention(
                q,
                k,
                v,
                q_segment_ids,
                kv_segment_ids,
                kv_mask,
                axis=axis,
                local_attention=local_attention,
            )
        if axis is not None:
            return context_parallel_attention(
                q,
                k,
                v,
                q_segment_ids,
                strategy=context_parallel,
                axis=axis,
                ring_kernel="splash" if backend == "splash" else "reference",
                local_attention=local_attention,
            )
    if backend == "splash":
        return splash_attention(q, k, v, q_segment_ids, kv_segment_ids, kv_mask).astype(q.dtype)
    dense = _xla_attention if backend == "xla" else _cudnn_attention
    if max_segment_length is not None:
        if isinstance(max_segment_length, bool) or not isinstance(max_segment_length, int):
            raise ValueError(f"max_segment_length must be a static int, got {max_segment_length!r}")
        if max_segment_length < 1:
            raise ValueError(f"max_segment_length must be ≥ 1, got {max_segment_length}")
        if q.shape[1] != k.shape[1]:
            raise ValueError("max_segment_length is for self-attention (L = M) over packed rows")
        if 3 * max_segment_length < q.shape[1]:
            return _local_attention(
                q, k, v, q_segment_ids, kv_mask, max_segment_length, dense
            ).astype(q.dtype)
    mask = segment_mask(q_segment_ids, kv_segment_ids, kv_mask)  # (B, L, M)
    out = dense(q, k, v, mask)
    has_key = mask.any(axis=-1)[:, :, None, None]  # (B, L, 1, 1)
    return jnp.where(has_key, out, 0).astype(q.dtype)  # (B, L, N, K)


#################### MLP and timestep embedding ####################


def dense_init(axes: tuple[str, ...], init=None):
    """A kernel initializer (xavier_uniform unless given) tagged with logical axis names."""
    init = nn.initializers.xavier_uniform() if init is None else init
    return nn.with_logical_partitioning(init, axes)


class DenseOverAxes(nn.Module):
    """x (..., *in) → (..., *features): nn.DenseGeneral's kernel (*in, *features) and bias, with
    its names and init values, but annotated after the reshape to the kernel's full rank.

    (DenseGeneral initialises a flat 2D kernel and reshapes it; under a mesh, flax applies the
    3D logical names to that flat kernel and fails in apply's shape check.)
    """

    features: tuple[int, ...]
    num_in_axes: int  # the trailing axes of x that are contracted
    axes: tuple[str, ...]  # logical names of the kernel's axes
    kernel_init: Callable = nn.initializers.xavier_uniform()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        in_shape = x.shape[x.ndim - self.num_in_axes :]
        flat = (math.prod(in_shape), math.prod(self.features))  # the fans xavier sees

        def init(rng, shape, dtype):
            return self.kernel_init(rng, flat, dtype).reshape(shape)

        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.axes),
            (*in_shape, *self.features),
            jnp.float32,
        )
        bias = self.param("bias", nn.initializers.zeros_init(), self.features, jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        contract = (tuple(range(x.ndim - self.num_in_axes, x.ndim)), tuple(range(len(in_shape))))
        return jax.lax.dot_general(x, kernel, (contract, ((), ()))) + bias


class Mlp(nn.Module):
    """Dense -> GELU(tanh) -> Dense."""

    hidden_dim: int
    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        x = nn.Dense(self.hidden_dim, kernel_init=dense_init(("embed", "mlp")), **dense)(x)
        x = nn.gelu(x, approximate=True)  # (B, L, hidden)
        return nn.Dense(self.out_dim, kernel_init=dense_init(("mlp", "embed")), **dense)(x)


def timestep_sinusoid(
    t: jnp.ndarray, dim: int = 256, max_period: float = 10000.0, time_scale: float = 1000.0
) -> jnp.ndarray:
    """t in [0, 1], any shape (...) -> f32 (..., dim) as [cos, sin] of t·time_scale·freqs.

    Always f32: in bf16, t·1000 ≈ 937 has a spacing of 4, which scrambles the phases.
    """
    if dim % 2:
        raise ValueError(f"frequency embedding size must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (t.astype(jnp.float32) * time_scale)[..., None] * freqs  # (..., dim/2)
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # (..., dim)


class TimestepEmbedder(nn.Module):
    """t (B, L) -> (B, L, D): f32 sinusoid, then Dense -> SiLU -> Dense in the compute dtype."""

    width: int
    frequency_embedding_size: int = 256
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        freq = timestep_sinusoid(t, self.frequency_embedding_size)  # (B, L, 256)
        self.sow("intermediates", "frequency_embedding", freq)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        init = dense_init(("freq", "mlp"), nn.initializers.normal(0.02))
        x = nn.Dense(self.width, kernel_init=init, **dense)(freq)
        x = nn.silu(x)
        init = dense_init(("mlp", "embed"), nn.initializers.normal(0.02))
        return nn.Dense(self.width, kernel_init=init, **dense)(x)  # (B, L, D)
