"""Splash (Pallas) attention backend against the dense masked XLA backend, interpreted on CPU.

Shapes are tiny (2 heads, head dim 8) but the lengths (200 queries, 260 keys) are not multiples
of the 128-token blocks, so the internal lane padding and cropping are exercised, and segment
boundaries fall inside blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models import splash_kernel
from soraj.models.layers import attention

B, L, M, N, K = 2, 200, 260, 2, 8


def _ids(*runs: tuple[int, int]) -> np.ndarray:
    """(segment id, length) runs -> int32 ids."""
    return np.concatenate([np.full(n, seg, np.int32) for seg, n in runs])


def _self_attention_case():
    """Packed rows with segment edges at 70, 170 and 150 (inside blocks) and tail padding."""
    seg = np.stack([_ids((1, 70), (2, 100), (0, 30)), _ids((3, 150), (5, 50))])  # (B, L)
    return seg, seg, None


def _cross_attention_case(rng):
    """Keys of a different length, padding keys, a random kv_mask, and segment 4 with no key."""
    q_seg = np.stack([_ids((1, 70), (2, 100), (0, 30)), _ids((3, 120), (4, 30), (5, 50))])
    kv_seg = np.stack([_ids((1, 90), (2, 150), (0, 20)), _ids((3, 140), (5, 80), (0, 40))])
    kv_mask = rng.random((B, M)) > 0.2
    return q_seg, kv_seg, kv_mask


def _qkv(rng, kv_length):
    shapes = [(B, L, N, K), (B, kv_length, N, K), (B, kv_length, N, K)]
    return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


def _loss(backend, q_seg, kv_seg, kv_mask, weights):
    def loss(q, k, v):
        out = attention(
            q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, kv_mask=kv_mask, backend=backend
        )
        return (out * weights).sum(), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


@pytest.mark.parametrize("case", ["self", "cross"])
def test_forward_and_gradients_match_xla(case):
    rng = np.random.default_rng(0)
    q_seg, kv_seg, kv_mask = (
        _self_attention_case() if case == "self" else _cross_attention_case(rng)
    )
    q, k, v = _qkv(rng, kv_seg.shape[1])
    weights = jnp.asarray(rng.normal(size=(B, L, N, K)), jnp.float32)

    (_, want), want_grads = _loss("xla", q_seg, kv_seg, kv_mask, weights)(q, k, v)
    (_, got), got_grads = _loss("splash", q_seg, kv_seg, kv_mask, weights)(q, k, v)

    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for name, g, w in zip("qkv", got_grads, want_grads, strict=True):
        assert np.abs(np.asarray(w)).max() > 1e-2, f"d{name} reference is trivially zero"
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")
    # Padding queries (and, in the cross case, segment 4 which has no key) output exactly 0.
    no_key = q_seg == 0 if case == "self" else (q_seg == 0) | (q_seg == 4)
    assert np.all(np.asarray(got)[no_key] == 0)
    assert np.all(np.abs(np.asarray(got)[~no_key]).max(-1) > 0)


def test_padding_and_masked_keys_never_reach_real_tokens():
    rng = np.random.default_rng(1)
    q_seg, kv_seg, kv_mask = _cross_attention_case(rng)
    q, k, v = _qkv(rng, M)
    run = jax.jit(
        lambda q, k, v: attention(
            q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, kv_mask=kv_mask, backend="splash"
        )
    )
    out = np.asarray(run(q, k, v))

    # Large values at every padding query and at every padding or masked key.
    hidden_q = (q_seg == 0)[:, :, None, None]
    hidden_kv = ((kv_seg == 0) | ~kv_mask)[:, :, None, None]
    noise_q = 1e3 * rng.normal(size=q.shape)
    q2 = jnp.where(hidden_q, noise_q, q)
    k2, v2 = (jnp.where(hidden_kv, 1e3 * rng.normal(size=x.shape), x) for x in (k, v))
    out2 = np.asarray(run(q2, k2, v2))

    real = q_seg != 0
    np.testing.assert_array_equal(out2[real], out[real])


def test_kernel_built_under_jit_is_reusable_outside_it():
    # A kernel first built inside jit must hold concrete mask data, not leaked tracers.
    splash_kernel.splash_kernel.cache_clear()
    rng = np.random.default_rng(2)
    seg, _, _ = _self_attention_case()
    q, k, v = _qkv(rng, L)

    def run(q, k, v):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, backend="splash")

    jitted = np.asarray(jax.jit(run)(q, k, v))
    eager = np.asarray(run(q, k, v))
    assert splash_kernel.splash_kernel.cache_info().hits >= 1
    np.testing.assert_allclose(eager, jitted, atol=1e-6, rtol=1e-6)


def test_unknown_backend_lists_all_allowed_values():
    q = np.zeros((1, 2, 1, 4), np.float32)
    seg = np.ones((1, 2), np.int32)
    with pytest.raises(ValueError, match=r"'pallas'; allowed: xla, cudnn, splash"):
        attention(q, q, q, q_segment_ids=seg, kv_segment_ids=seg, backend="pallas")
