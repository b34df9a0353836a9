"""Context-parallel attention (soraj/models/context_attention.py): its per-block kernels against
autodiff of dense attention, the log-sum-exp merge, the hop-skipping test, and the errors, in
this process; the four strategies and the sharded train step on 8 fake CPU devices in a
subprocess (tests/context_parallel_check.py)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_devices import run_check

from soraj.models import context_attention
from soraj.models.attention_blocks import (
    EMPTY_LSE,
    merge_blocks,
    reference_block_backward,
    reference_block_forward,
    splash_block_backward,
    splash_block_forward,
)
from soraj.models.context_attention import ulysses_group
from soraj.models.dit_config import DiTConfig
from soraj.models.layers import attention

CHECK_SCRIPT = Path(__file__).with_name("context_parallel_check.py")


def _case(seed=0, batch=2, q_length=24, kv_length=20, heads=2, head_dim=8):
    rng = np.random.default_rng(seed)
    q, d_out = (
        rng.normal(size=(batch, q_length, heads, head_dim)).astype(np.float32) for _ in "ab"
    )
    k, v = (rng.normal(size=(batch, kv_length, heads, head_dim)).astype(np.float32) for _ in "ab")
    # Query ids 1..3 and 0 (padding); key ids 2..4: segment 1's queries have no key here.
    q_ids = rng.integers(0, 4, size=(batch, q_length)).astype(np.int32)
    kv_ids = rng.integers(2, 5, size=(batch, kv_length)).astype(np.int32)
    return q, k, v, q_ids, kv_ids, d_out


def _dense(q, k, v, q_ids, kv_ids):
    return attention(q, k, v, q_segment_ids=q_ids, kv_segment_ids=kv_ids, backend="xla")


def test_block_forward_is_dense_attention_with_its_log_sum_exp():
    q, k, v, q_ids, kv_ids, _ = _case()
    out, lse = reference_block_forward(q, k, v, q_ids, kv_ids)
    np.testing.assert_allclose(out, _dense(q, k, v, q_ids, kv_ids), atol=1e-6)
    # The log-sum-exp by hand, per query and head, over its own segment's keys.
    scale = 1 / np.sqrt(q.shape[-1])
    for b, i, n in [(0, 0, 0), (1, 5, 1), (0, 17, 1)]:
        keys = kv_ids[b] == q_ids[b, i]
        if q_ids[b, i] == 0 or not keys.any():
            assert lse[b, i, n] == EMPTY_LSE and np.all(out[b, i, n] == 0)
            continue
        logits = (k[b, keys, n] @ q[b, i, n]) * scale
        want = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
        np.testing.assert_allclose(lse[b, i, n], want, rtol=1e-5)


def test_merging_two_blocks_is_attention_over_both():
    q, k, v, q_ids, kv_ids, _ = _case(seed=1)
    halves = [slice(0, 8), slice(8, None)]
    parts = [reference_block_forward(q, k[:, s], v[:, s], q_ids, kv_ids[:, s]) for s in halves]
    out, lse = merge_blocks(*parts[0], *parts[1])
    whole_out, whole_lse = reference_block_forward(q, k, v, q_ids, kv_ids)
    np.testing.assert_allclose(out, whole_out, atol=1e-6)
    real = whole_lse > EMPTY_LSE / 2
    np.testing.assert_allclose(lse[real], whole_lse[real], rtol=1e-6)


def test_block_backward_is_the_gradient_of_dense_attention():
    q, k, v, q_ids, kv_ids, d_out = _case(seed=2)
    want = jax.grad(lambda *x: jnp.sum(_dense(*x, q_ids, kv_ids) * d_out), argnums=(0, 1, 2))(
        q, k, v
    )
    out, lse = reference_block_forward(q, k, v, q_ids, kv_ids)
    got = reference_block_backward(q, k, v, q_ids, kv_ids, out, lse, d_out)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"d{name}")


def test_splash_blocks_match_the_reference_blocks():
    # Interpreted on CPU; lengths that are not multiples of the 128 lanes get padded.
    q, k, v, q_ids, kv_ids, d_out = _case(seed=3, q_length=40, kv_length=30)
    want_out, want_lse = reference_block_forward(q, k, v, q_ids, kv_ids)
    out, lse = splash_block_forward(q, k, v, q_ids, kv_ids)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    np.testing.assert_allclose(lse, want_lse, rtol=1e-5)
    want = reference_block_backward(q, k, v, q_ids, kv_ids, want_out, want_lse, d_out)
    got = splash_block_backward(q, k, v, q_ids, kv_ids, want_out, want_lse, d_out)
    for name, g, w in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"d{name}")


def test_disjoint_blocks_are_found_exactly():
    rng = np.random.default_rng(4)
    for _ in range(200):
        q_ids = rng.integers(0, 6, size=(2, 5)).astype(np.int32)
        kv_ids = rng.integers(0, 6, size=(2, 5)).astype(np.int32)
        shared = any(
            set(q_ids[b][q_ids[b] != 0]) & set(kv_ids[b][kv_ids[b] != 0]) for b in range(2)
        )
        overlap = bool(context_attention._segments_overlap(q_ids, kv_ids))
        assert overlap or not shared, (q_ids, kv_ids)  # never skips a block with a shared id
        if not overlap:
            continue
        # Ranges that overlap: some row's ranges intersect (the test is by value range).
        ranges = [
            (q_ids[b][q_ids[b] != 0], kv_ids[b][kv_ids[b] != 0])
            for b in range(2)
            if (q_ids[b] != 0).any() and (kv_ids[b] != 0).any()
        ]
        assert any(max(a.min(), c.min()) <= min(a.max(), c.max()) for a, c in ranges)


def test_ulysses_group_is_the_largest_divisor_of_both():
    assert ulysses_group(8, 8) == 8
    assert ulysses_group(8, 4) == 4
    assert ulysses_group(8, 6) == 2
    assert ulysses_group(8, 3) == 1
    assert ulysses_group(6, 4) == 2


def test_one_device_ignores_the_strategy():
    q, k, v, ids, _, _ = _case(seed=5, kv_length=24)
    plain = _dense(q, k, v, ids, ids)
    for strategy in context_attention.CONTEXT_STRATEGIES:
        out = attention(q, k, v, q_segment_ids=ids, kv_segment_ids=ids, context_parallel=strategy)
        np.testing.assert_array_equal(out, plain)


def test_bad_strategies_are_refused_with_the_allowed_values():
    q, k, v, ids, kv_ids, _ = _case(seed=6)
    with pytest.raises(
        ValueError, match="'rings'; allowed: all_gather, ulysses, ring, usp, queries"
    ):
        attention(q, q, q, q_segment_ids=ids, kv_segment_ids=ids, context_parallel="rings")
    with pytest.raises(ValueError, match="for self-attention"):
        attention(q, k, v, q_segment_ids=ids, kv_segment_ids=kv_ids, context_parallel="ring")
    with pytest.raises(ValueError, match="context_parallel='ulysess'; allowed: all_gather"):
        DiTConfig(width=32, depth=1, num_heads=2, context_parallel="ulysess")


def test_strategies_and_train_step_on_eight_fake_devices():
    result = run_check(CHECK_SCRIPT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "ALL OK" in result.stdout
