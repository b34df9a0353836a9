"""The Pallas splash attention kernel as soraj builds it: lane padding, block sizes, and one
cached kernel per (heads, query length, key length), masked by segment ids alone.

Splash runs on TPUs; everywhere else it is interpreted (slow, exact), which is how the CPU
tests check it. Inside shard_map the kernel needs check_vma=False.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel,
    splash_attention_mask_info,
)

# Splash tiles must be multiples of the TPU lane width (128), also in interpret mode.
LANES = 128
_BLOCK_CHOICES = (512, 256, 128)  # largest that divides the padded length wins

SegmentIds = splash.SegmentIds


def _block(padded_length: int) -> int:
    return next(b for b in _BLOCK_CHOICES if padded_length % b == 0)


def interpreted() -> bool:
    return jax.default_backend() != "tpu"


def _smallest_int(array: np.ndarray) -> np.ndarray:
    """Splash keeps its mask info in scalar memory, in the smallest int type that holds it."""
    for dtype in (np.int8, np.int16):
        if array.max() <= np.iinfo(dtype).max:
            return array.astype(dtype)
    return array.astype(np.int32)


def full_mask_info(
    q_length: int, kv_length: int, block_q: int, block_kv: int, for_dkv: bool
) -> splash_attention_mask_info.MaskInfo:
    """The MaskInfo splash's mask processing makes for a full mask, in closed form.

    Every block is dense (block_mask 2), there are no partial blocks, and each grid step
    fetches its own block: the key block index for the forward and dQ kernels, the query
    block index for the dKV kernel (which walks keys outermost). Splash's processing finds the
    same by slicing the mask block by block in Python, a cost that grows with the square of
    the length (6.4 million 512-token blocks at 1.3 M tokens), on a TPU host as here.
    """
    q_blocks, kv_blocks = q_length // block_q, kv_length // block_kv
    block_mask = np.full((1, q_blocks, kv_blocks), 2, np.int32)
    if for_dkv:
        data_next = np.broadcast_to(np.arange(q_blocks, dtype=np.int32)[:, None], block_mask.shape)
    else:
        data_next = np.broadcast_to(np.arange(kv_blocks, dtype=np.int32), block_mask.shape)
    return splash_attention_mask_info.MaskInfo(
        data_next=jnp.asarray(_smallest_int(data_next)),
        mask_next=None,
        block_mask=jnp.asarray(_smallest_int(block_mask)),
        partial_mask_blocks=None,
        q_sequence=None,
    )


@functools.cache
def splash_kernel(q_length: int, kv_length: int, interpret: bool, save_residuals: bool = False):
    """Splash MHA kernel for lane-padded lengths and any number of heads; segment ids do all
    the masking (the static mask is full, its mask info built by `full_mask_info`). With
    save_residuals it returns (out, (logsumexp,)) and is not differentiable: the ring
    attention pairs it with `splash_backward`. The same kernel `splash.make_splash_mha` builds
    for a FullMask (tests/test_splash_mask_info.py), without its per-block mask processing.

    Built under ensure_compile_time_eval so its mask-info arrays are concrete constants even
    when first called inside jit (otherwise they would be tracers leaked into the cache).
    """
    block_q, block_kv = _block(q_length), _block(kv_length)
    block_sizes = splash.BlockSizes(
        block_q=block_q,
        block_kv=block_kv,
        block_kv_compute=block_kv,
        block_q_dkv=block_q,
        block_kv_dkv=block_kv,
        block_kv_dkv_compute=block_kv,
        block_q_dq=block_q,
        block_kv_dq=block_kv,
    )
    with jax.ensure_compile_time_eval():
        # The dQ kernel walks the grid as the forward one does (same block sizes here).
        forward = full_mask_info(q_length, kv_length, block_q, block_kv, for_dkv=False)
        dkv = full_mask_info(q_length, kv_length, block_q, block_kv, for_dkv=True)
    return splash_attention_kernel.SplashAttentionKernel(
        forward,
        forward,
        dkv,
        block_sizes=block_sizes,
        is_mqa=False,
        save_residuals=save_residuals,
        mask_value=splash_attention_kernel.DEFAULT_MASK_VALUE,
        attn_logits_soft_cap=None,
        residual_checkpoint_name=None,
        mask_function=None,
        interpret=interpret,
    )


def splash_backward(kernel, q, k, v, segment_ids, out, logsumexp, d_out):
    """(dq, dk, dv) of one example's splash attention (heads first: q (N, L, K)) against a given
    output and log-sum-exp, which may be a larger attention's: the ring attention passes the
    global ones, so every key block's gradient is its share of the whole softmax.

    Upstream splash cannot differentiate a kernel that saves residuals, so this calls its
    backward kernels directly (a private function: jax is pinned, and the CPU tests run it
    interpreted on every change).
    """
    options = kernel.kwargs
    residuals = (
        q,
        k,
        v,
        segment_ids,
        None,  # attention sinks: none
        out,
        logsumexp,
        kernel.dq_mask_info,
        kernel.dkv_mask_info,
    )
    grads = splash_attention_kernel._splash_attention_bwd(
        False,  # save_residuals
        options["mask_value"],
        options["is_mqa"],
        options["block_sizes"],
        options["residual_checkpoint_name"],
        options["mask_function"],
        options["attn_logits_soft_cap"],
        options["interpret"],
        residuals,
        d_out,
    )
    return grads[3:6]  # dq, dk, dv


def pad_to_lanes(x: jnp.ndarray, axis: int, fill) -> jnp.ndarray:
    pad = -x.shape[axis] % LANES
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=fill)


def queries_with_a_key(q_ids: jnp.ndarray, kv_ids: jnp.ndarray) -> jnp.ndarray:
    """bool (B, L): some key shares the query's id, found by binary search, never a (L, M) mask."""
    kv_sorted = jnp.sort(kv_ids, axis=-1)  # (B, M)
    index = jax.vmap(jnp.searchsorted)(kv_sorted, q_ids)  # (B, L)
    index = jnp.minimum(index, kv_ids.shape[-1] - 1)
    return jnp.take_along_axis(kv_sorted, index, axis=-1) == q_ids  # (B, L)


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, kv_mask):
    """Pallas splash attention; interpreted (slow, exact) when not running on a TPU.

    Inside shard_map the kernel needs check_vma=False.
    """
    _, q_length, _, head_dim = q.shape  # (B, L, N, K)
    # One id below every real segment marks padding queries, padding keys, masked keys and the
    # lane padding added here: they see only each other, never a real token.
    pad_id = jnp.minimum(q_segment_ids.min(), kv_segment_ids.min()) - 1
    q_ids = jnp.where(q_segment_ids != 0, q_segment_ids, pad_id)  # (B, L)
    kv_valid = kv_segment_ids != 0
    if kv_mask is not None:
        kv_valid &= kv_mask.astype(bool)
    kv_ids = jnp.where(kv_valid, kv_segment_ids, pad_id)  # (B, M)
    has_key = (q_segment_ids != 0) & queries_with_a_key(q_ids, kv_ids)  # (B, L)

    # Splash does not scale q, and wants heads first: (B, N, L, K).
    q = jnp.swapaxes(q * (1.0 / math.sqrt(head_dim)), 1, 2).astype(q.dtype)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, N, M, K)
    q, k, v = pad_to_lanes(q, 2, 0), pad_to_lanes(k, 2, 0), pad_to_lanes(v, 2, 0)
    q_ids = pad_to_lanes(q_ids.astype(jnp.int32), 1, pad_id)  # (B, L')
    kv_ids = pad_to_lanes(kv_ids.astype(jnp.int32), 1, pad_id)  # (B, M')

    kernel = splash_kernel(q.shape[2], k.shape[2], interpret=interpreted())
    out = jax.vmap(kernel)(q, k, v, segment_ids=SegmentIds(q=q_ids, kv=kv_ids))
    out = jnp.swapaxes(out[:, :, :q_length], 1, 2)  # (B, L, N, K)
    return jnp.where(has_key[:, :, None, None], out, 0).astype(out.dtype)
