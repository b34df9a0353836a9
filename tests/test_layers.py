"""Attention backends, 3D RoPE, MLP and timestep embedding against naive numpy references."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models.layers import (
    Mlp,
    TimestepEmbedder,
    apply_rope,
    attention,
    default_rope_axes_dims,
    layer_norm,
    modulate,
    rope_3d,
)

# ---- Naive references ----


def naive_attention(q, k, v, q_seg, kv_seg, kv_mask):
    """Per query: softmax over keys of its own (non-padding) segment, else zeros."""
    B, L, N, K = q.shape
    out = np.zeros_like(q, dtype=np.float64)
    for b in range(B):
        for seg in set(q_seg[b].tolist()) - {0}:
            keys = np.flatnonzero((kv_seg[b] == seg) & kv_mask[b])
            if len(keys) == 0:
                continue
            for l in np.flatnonzero(q_seg[b] == seg):
                for n in range(N):
                    logits = k[b, keys, n] @ q[b, l, n] / math.sqrt(K)
                    p = np.exp(logits - logits.max())
                    out[b, l, n] = (p / p.sum()) @ v[b, keys, n]
    return out


def naive_rope(x, coords, axes_dims, theta=10000.0):
    """Rotate pair (x[2i], x[2i+1]) by coord[axis(i)] * theta^(-2j/dim(axis))."""
    out = np.array(x, dtype=np.float64)
    B, L, N, K = x.shape
    pair_axis, pair_freq = [], []
    for axis, dim in enumerate(axes_dims):
        for j in range(dim // 2):
            pair_axis.append(axis)
            pair_freq.append(theta ** (-2.0 * j / dim))
    for b in range(B):
        for l in range(L):
            for i in range(K // 2):
                a = coords[b, l, pair_axis[i]] * pair_freq[i]
                rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
                out[b, l, :, 2 * i : 2 * i + 2] = x[b, l, :, 2 * i : 2 * i + 2] @ rot.T
    return out


# ---- Attention ----


def _attention_inputs(seed=0, B=2, L=11, M=13, N=2, K=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, L, N, K)).astype(np.float32)
    k = rng.normal(size=(B, M, N, K)).astype(np.float32)
    v = rng.normal(size=(B, M, N, K)).astype(np.float32)
    q_seg = np.array(
        [[1, 1, 1, 2, 2, 2, 2, 3, 0, 0, 0], [2, 2, 1, 1, 1, 1, 4, 4, 4, 0, 0]], np.int32
    )
    kv_seg = np.array(
        [[1, 1, 2, 2, 2, 1, 3, 3, 0, 0, 0, 2, 1], [1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 0, 0, 0]], np.int32
    )  # segment 4 of row 1 has no keys at all: its queries must output 0
    kv_mask = rng.random((B, M)) > 0.25
    kv_mask[0, 6:8] = False  # segment 3 of row 0 has keys, all masked out
    return q, k, v, q_seg, kv_seg, kv_mask


class AttentionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_backends_match_naive_reference(self):
        q, k, v, q_seg, kv_seg, kv_mask = _attention_inputs()
        want = naive_attention(q, k, v, q_seg, kv_seg, kv_mask)
        for backend in ("xla", "cudnn"):
            fn = self.variant(
                lambda q, k, v, a, b, m, backend=backend: attention(
                    q, k, v, q_segment_ids=a, kv_segment_ids=b, kv_mask=m, backend=backend
                )
            )
            got = fn(q, k, v, q_seg, kv_seg, kv_mask)
            chex.assert_shape(got, q.shape)
            chex.assert_tree_all_finite(got)
            chex.assert_trees_all_close(got, want.astype(np.float32), atol=1e-5, rtol=1e-5)
            empty_rows = (q_seg == 0) | (
                (q_seg[:, :, None] == kv_seg[:, None]) & kv_mask[:, None]
            ).sum(-1) == 0
            assert np.all(np.asarray(got)[empty_rows] == 0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_self_attention_without_kv_mask(self):
        q, _, _, q_seg, _, _ = _attention_inputs(seed=1)
        k, v = np.roll(q, 1, axis=-1), np.flip(q, axis=-1).copy()
        want = naive_attention(q, k, v, q_seg, q_seg, np.ones(q_seg.shape, bool))
        got = self.variant(
            lambda q, k, v, s: attention(q, k, v, q_segment_ids=s, kv_segment_ids=s)
        )(q, k, v, q_seg)
        chex.assert_trees_all_close(got, want.astype(np.float32), atol=1e-5, rtol=1e-5)


def _packed_rows(rng, rows, length, window):
    """Segment ids of packed rows: contiguous runs of 1..window tokens, then padding."""
    ids = np.zeros((rows, length), np.int32)
    for r in range(rows):
        start, segment = 0, 1
        while start < length - 2:
            n = int(rng.integers(1, window + 1))
            ids[r, start : start + n] = segment
            start, segment = start + n, segment + 1
    return ids


@pytest.mark.parametrize("backend", ["xla", "cudnn"])
def test_windowed_self_attention_equals_the_whole_row(backend):
    # Rows of 61 tokens, segments of at most 7: blocks of 7 see 21 keys instead of 61. The
    # row length is not a multiple of the window, so the last block is padded.
    rng = np.random.default_rng(3)
    ids = _packed_rows(rng, 3, 61, 7)
    q, k, v = (rng.normal(size=(3, 61, 2, 8)).astype(np.float32) for _ in range(3))
    kv_mask = rng.random(ids.shape) > 0.2
    want = naive_attention(q, k, v, ids, ids, kv_mask)

    def windowed(q, k, v):
        return attention(
            q,
            k,
            v,
            q_segment_ids=ids,
            kv_segment_ids=ids,
            kv_mask=kv_mask,
            backend=backend,
            max_segment_length=7,
        )

    def whole(q, k, v):
        return attention(q, k, v, q_segment_ids=ids, kv_segment_ids=ids, kv_mask=kv_mask)

    chex.assert_trees_all_close(jax.jit(windowed)(q, k, v), want.astype(np.float32), atol=1e-5)
    loss = lambda fn: lambda *x: jnp.sum(fn(*x) ** 2)  # noqa: E731
    chex.assert_trees_all_close(
        jax.grad(loss(windowed), argnums=(0, 1, 2))(q, k, v),
        jax.grad(loss(whole), argnums=(0, 1, 2))(q, k, v),
        atol=1e-5,
    )
    # A segment longer than the promised window would be cut: the promise is the caller's.
    long_ids = np.where(ids > 0, 1, 0).astype(np.int32)
    cut = attention(q, k, v, q_segment_ids=long_ids, kv_segment_ids=long_ids, max_segment_length=7)
    full = attention(q, k, v, q_segment_ids=long_ids, kv_segment_ids=long_ids)
    assert not np.allclose(cut, full, atol=1e-3)


def test_window_must_be_a_positive_int_for_self_attention():
    q = np.zeros((1, 8, 1, 4), np.float32)
    seg = np.ones((1, 8), np.int32)
    with pytest.raises(ValueError, match="≥ 1"):
        attention(q, q, q, q_segment_ids=seg, kv_segment_ids=seg, max_segment_length=0)
    with pytest.raises(ValueError, match="self-attention"):
        attention(
            q,
            q[:, :4],
            q[:, :4],
            q_segment_ids=seg,
            kv_segment_ids=seg[:, :4],
            max_segment_length=2,
        )


def test_unknown_backend_lists_allowed_values():
    q = np.zeros((1, 2, 1, 4), np.float32)
    seg = np.ones((1, 2), np.int32)
    with pytest.raises(ValueError, match="allowed: xla, cudnn"):
        attention(q, q, q, q_segment_ids=seg, kv_segment_ids=seg, backend="flash")


# ---- RoPE ----


def test_default_axes_split():
    assert default_rope_axes_dims(64) == (16, 24, 24)
    assert default_rope_axes_dims(72) == (20, 26, 26)
    for K in (6, 16, 96, 128):
        dims = default_rope_axes_dims(K)
        assert sum(dims) == K and all(d % 2 == 0 and d > 0 for d in dims)
    for bad in (7, 4):
        with pytest.raises(ValueError, match="even head_dim"):
            default_rope_axes_dims(bad)
    with pytest.raises(ValueError, match="even"):
        rope_3d(np.zeros((1, 1, 3), np.int32), 16, axes_dims=(3, 7, 6))
    with pytest.raises(ValueError, match="sum to head_dim"):
        rope_3d(np.zeros((1, 1, 3), np.int32), 16, axes_dims=(4, 4, 4))


def test_apply_rope_matches_naive_rotation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3, 16)).astype(np.float32)
    coords = rng.integers(0, 20, size=(2, 5, 3)).astype(np.int32)
    cos, sin = rope_3d(coords, 16, axes_dims=(4, 6, 6))
    chex.assert_shape([cos, sin], (2, 5, 8))
    got = jax.jit(apply_rope)(x, cos, sin)
    chex.assert_trees_all_close(got, naive_rope(x, coords, (4, 6, 6)).astype(np.float32), atol=1e-5)


def test_rope_scores_depend_only_on_coordinate_differences():
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, 1, 7, 2, 64)).astype(np.float32)
    coords = rng.integers(0, 12, size=(1, 7, 3)).astype(np.int32)

    def scores(c):
        cos, sin = rope_3d(c, 64)
        return np.einsum("blnk,bmnk->bnlm", apply_rope(q, cos, sin), apply_rope(k, cos, sin))

    base = scores(coords)
    shifted = scores(coords + np.array([5, -3, 17], np.int32))
    chex.assert_trees_all_close(shifted, base, atol=1e-4, rtol=1e-4)
    # ...and they do depend on positions, so the check above is not vacuous.
    assert np.abs(scores(coords * 2) - base).max() > 1e-2


# ---- MLP, norms, modulate, timestep embedding ----


def test_mlp_matches_numpy():
    x = np.random.default_rng(4).normal(size=(2, 3, 8)).astype(np.float32)
    mlp = Mlp(hidden_dim=16, out_dim=8)
    params = jax.tree.map(np.asarray, nn.unbox(mlp.init(jax.random.key(0), x))["params"])
    h = x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    want = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    chex.assert_trees_all_close(mlp.apply({"params": params}, x), want, atol=1e-5)


def test_layer_norm_and_modulate_closed_form():
    x = np.random.default_rng(5).normal(3.0, 2.0, size=(2, 4, 32)).astype(np.float32)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    chex.assert_trees_all_close(layer_norm(jnp.asarray(x)), want, atol=1e-5)
    out = layer_norm(jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    shift, scale = np.full_like(x, 0.5), np.full_like(x, 2.0)
    chex.assert_trees_all_close(modulate(x, shift, scale), x * 3.0 + 0.5)


def test_timestep_sinusoid_is_f32_under_bf16_compute():
    t = jnp.full((1, 2), 0.937, jnp.float32)
    half = 128
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    args = 0.937 * 1000.0 * freqs
    want = np.concatenate([np.cos(args), np.sin(args)])  # f64 closed form

    embeddings = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        module = TimestepEmbedder(width=32, dtype=dtype)
        params = module.init(jax.random.key(0), t)["params"]
        out, state = module.apply({"params": params}, t, mutable=["intermediates"])
        chex.assert_shape(out, (1, 2, 32))
        assert out.dtype == dtype
        freq = state["intermediates"]["frequency_embedding"][0]
        assert freq.dtype == jnp.float32
        # f32 phase error at |arg| ~ 937 is ~ulp(937) = 6e-5; bf16 phases would be off by O(1).
        chex.assert_trees_all_close(freq[0, 0], want.astype(np.float32), atol=2e-4)
        embeddings[dtype] = freq
    chex.assert_trees_all_close(embeddings[jnp.bfloat16], embeddings[jnp.float32], atol=1e-6)
