"""One block of attention with its log-sum-exp, the unit a ring hop computes: queries against
one block of keys, a forward that returns (normalised output, log-sum-exp) and a backward
against the whole attention's output and log-sum-exp, as the dense reference and as Pallas
splash; and the merge of two blocks' results."""

import math

import jax
import jax.numpy as jnp

from soraj.models.splash_kernel import (
    SegmentIds,
    interpreted,
    pad_to_lanes,
    queries_with_a_key,
    splash_backward,
    splash_kernel,
)

# The log-sum-exp of a query that has no key in a block: finite, so a merge weighs the block
# exactly 0 and two empty blocks merge without NaN (as do splash's empty rows, at -0.7·max).
EMPTY_LSE = -1e30


def _same_segment(q_ids, kv_ids):  # (B, L), (B, M) -> (B, 1, L, M)
    return ((q_ids[:, :, None] == kv_ids[:, None, :]) & (q_ids != 0)[:, :, None])[:, None]


def reference_block_forward(q, k, v, q_ids, kv_ids):
    """Normalised output (B, L, N, K) f32 and log-sum-exp (B, L, N) f32 of q's attention to
    this block's keys; a query with no key here gets output 0 and EMPTY_LSE."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    mask = _same_segment(q_ids, kv_ids)  # (B, 1, L, M)
    logits = jnp.einsum("blnk,bmnk->bnlm", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, EMPTY_LSE)  # (B, N, L, M)
    lse = jax.nn.logsumexp(logits, axis=-1)  # (B, N, L)
    probs = jnp.where(mask, jnp.exp(logits - lse[..., None]), 0.0)
    out = jnp.einsum("bnlm,bmnk->blnk", probs, v.astype(jnp.float32))  # (B, L, N, K)
    lse = jnp.where(mask.any(axis=-1), lse, EMPTY_LSE)
    return out, jnp.swapaxes(lse, 1, 2)  # (B, L, N, K), (B, L, N)


def reference_block_backward(q, k, v, q_ids, kv_ids, out, lse, d_out):
    """(dq, dk, dv) f32 of this block's share of an attention whose output and log-sum-exp
    over all blocks are out (B, L, N, K) and lse (B, L, N)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    mask = _same_segment(q_ids, kv_ids)  # (B, 1, L, M)
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    logits = jnp.einsum("blnk,bmnk->bnlm", q, k) * scale  # (B, N, L, M)
    probs = jnp.where(mask, jnp.exp(logits - jnp.swapaxes(lse, 1, 2)[..., None]), 0.0)
    d_v = jnp.einsum("bnlm,blnk->bmnk", probs, d_out)  # (B, M, N, K)
    d_probs = jnp.einsum("blnk,bmnk->bnlm", d_out, v)
    row_dot = jnp.einsum("blnk,blnk->bnl", d_out, out)  # (B, N, L)
    d_logits = probs * (d_probs - row_dot[..., None]) * scale
    d_q = jnp.einsum("bnlm,bmnk->blnk", d_logits, k)  # (B, L, N, K)
    d_k = jnp.einsum("bnlm,blnk->bmnk", d_logits, q)  # (B, M, N, K)
    return d_q, d_k, d_v


# Splash's ids: real segments keep theirs; padding queries and keys get ids that match nothing.
_SPLASH_PAD_Q, _SPLASH_PAD_KV = -1, -2


def _splash_layout(q, k, v, q_ids, kv_ids):
    """Heads first, q pre-scaled (splash does not scale), lengths and ids lane-padded."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    q = pad_to_lanes(jnp.swapaxes(q * scale, 1, 2).astype(q.dtype), 2, 0)  # (B, N, L', K)
    k, v = (pad_to_lanes(jnp.swapaxes(x, 1, 2), 2, 0) for x in (k, v))  # (B, N, M', K)
    q_ids = pad_to_lanes(jnp.where(q_ids != 0, q_ids, _SPLASH_PAD_Q), 1, _SPLASH_PAD_Q)
    kv_ids = pad_to_lanes(jnp.where(kv_ids != 0, kv_ids, _SPLASH_PAD_KV), 1, _SPLASH_PAD_KV)
    return q, k, v, SegmentIds(q=q_ids.astype(jnp.int32), kv=kv_ids.astype(jnp.int32))


def splash_block_forward(q, k, v, q_ids, kv_ids):
    """reference_block_forward with the Pallas splash kernel (residuals saved)."""
    length = q.shape[1]
    has_key = (q_ids != 0) & queries_with_a_key(q_ids, kv_ids)  # (B, L)
    q, k, v, ids = _splash_layout(q, k, v, q_ids, kv_ids)
    kernel = splash_kernel(q.shape[2], k.shape[2], interpreted(), save_residuals=True)
    out, (lse,) = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids))(q, k, v, ids)
    out = jnp.swapaxes(out[:, :, :length], 1, 2).astype(jnp.float32)  # (B, L, N, K)
    lse = jnp.swapaxes(lse[:, :, :length], 1, 2)  # (B, L, N)
    out = jnp.where(has_key[:, :, None, None], out, 0.0)
    return out, jnp.where(has_key[:, :, None], lse, EMPTY_LSE)


def splash_block_backward(q, k, v, q_ids, kv_ids, out, lse, d_out):
    """reference_block_backward with splash's backward kernels."""
    length, kv_length = q.shape[1], k.shape[1]
    dtype = q.dtype
    q, k, v, ids = _splash_layout(q, k, v, q_ids, kv_ids)
    kernel = splash_kernel(q.shape[2], k.shape[2], interpreted(), save_residuals=True)

    def heads_first(x, fill=0.0):  # (B, L, N, ...) -> lane-padded (B, N, L', ...)
        return pad_to_lanes(jnp.swapaxes(x, 1, 2), 2, fill)

    def one_example(q, k, v, ids, out, lse, d_out):
        return splash_backward(kernel, q, k, v, ids, out, lse, d_out)

    d_q, d_k, d_v = jax.vmap(one_example)(
        q,
        k,
        v,
        ids,
        heads_first(out).astype(dtype),
        heads_first(lse, EMPTY_LSE),
        heads_first(d_out).astype(dtype),
    )
    scale = 1.0 / math.sqrt(q.shape[-1])
    d_q = jnp.swapaxes(d_q[:, :, :length], 1, 2).astype(jnp.float32) * scale  # q was scaled
    d_k, d_v = (jnp.swapaxes(x[:, :, :kv_length], 1, 2).astype(jnp.float32) for x in (d_k, d_v))
    return d_q, d_k, d_v


BLOCK_KERNELS = {
    "reference": (reference_block_forward, reference_block_backward),
    "splash": (splash_block_forward, splash_block_backward),
}


def merge_blocks(out_a, lse_a, out_b, lse_b):
    """Two blocks' normalised outputs (B, L, N, K) and log-sum-exps (B, L, N) → their union's."""
    lse = jnp.logaddexp(lse_a, lse_b)
    weight_a, weight_b = jnp.exp(lse_a - lse)[..., None], jnp.exp(lse_b - lse)[..., None]
    return out_a * weight_a + out_b * weight_b, lse
