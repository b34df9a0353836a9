"""bf16 compute keeps the precision-sensitive parts in float32: the timestep sinusoid, the
attention softmax (every backend that runs off TPU) and the norms. Each is checked against a
float64 numpy closed form, at a tolerance that the same computation in bf16 misses."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models.dit import DiT, DiTConfig
from soraj.models.layers import attention, layer_norm, timestep_sinusoid

BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding up to 2^-8


def sinusoid_closed_form(t: float, dim=256, max_period=10000.0, time_scale=1000.0):
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
    args = t * time_scale * freqs
    return np.concatenate([np.cos(args), np.sin(args)])


# ---- Timestep embedding ----


def test_timestep_features_of_a_bf16_dit_are_float32():
    t = 0.937  # t·1000 = 937, which bf16 rounds to 936: a spacing of 4 there
    config = DiTConfig(
        width=32, depth=1, num_heads=2, latent_channels=2, text_width=8, dtype="bfloat16"
    )
    inputs = (
        jnp.zeros((1, 2, config.patch_features)),
        jnp.full((1, 2), t),
        jnp.zeros((1, 2, 3), jnp.int32),
        jnp.ones((1, 2), jnp.int32),
        jnp.zeros((1, 1, 3, 8)),
        jnp.ones((1, 1, 3), bool),
    )
    model = DiT(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *inputs))
    _, state = jax.jit(lambda p: model.apply(p, *inputs, mutable=["intermediates"]))(params)
    (features,) = state["intermediates"]["t_embedder"]["frequency_embedding"]
    assert features.dtype == jnp.float32
    want = sinusoid_closed_form(t)
    # float32 phases of up to 937 rad are off by at most ~937·2^-24 ≈ 6e-5.
    np.testing.assert_allclose(features[0, 0], want, atol=2e-4)
    np.testing.assert_allclose(features[0, 1], want, atol=2e-4)
    # The same sinusoid from bf16 inputs is far off: the test can tell the difference.
    in_bf16 = timestep_sinusoid(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32))
    assert np.abs(np.asarray(in_bf16) - want).max() > 0.1


# ---- Attention softmax ----


def _close_logits():
    """bf16 q, k, v whose logits are 100, 100.125, 100.25 and 100.375: float32 holds them
    exactly, bf16 (spacing 0.5 at 100) would round them to two values."""
    head_dim = 4  # scale 1/2, exact
    q = np.zeros((1, 1, 1, head_dim), np.float32)
    q[..., :2] = [16.0, 1.0]
    k = np.zeros((1, 4, 1, head_dim), np.float32)
    k[0, :, 0, 0] = 12.5
    k[0, :, 0, 1] = [0.0, 0.25, 0.5, 0.75]  # logits (200 + d)/2
    v = np.zeros((1, 4, 1, head_dim), np.float32)
    v[0, :, 0, 0] = [1.0, 0.0, 0.0, 0.0]  # output[0] = weight of key 0, and so on
    v[0, :, 0, 1] = [0.0, 1.0, 0.0, 0.0]
    v[0, :, 0, 2] = [0.0, 0.0, 1.0, 0.0]
    v[0, :, 0, 3] = [0.0, 0.0, 0.0, 1.0]
    logits = np.array([100.0, 100.125, 100.25, 100.375])
    weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    as_bf16 = lambda a: jnp.asarray(a, jnp.bfloat16)  # noqa: E731  (all exact in bf16)
    return as_bf16(q), as_bf16(k), as_bf16(v), weights


@pytest.mark.parametrize("backend", ["xla", "cudnn"])
def test_attention_softmax_runs_in_float32_under_bf16(backend):
    q, k, v, weights = _close_logits()
    out = attention(
        q,
        k,
        v,
        q_segment_ids=jnp.ones((1, 1), jnp.int32),
        kv_segment_ids=jnp.ones((1, 4), jnp.int32),
        backend=backend,
    )  # (1, 1, 1, 4)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out[0, 0, 0], np.float64), weights, rtol=BF16_EPS)
    # bf16 logits would give keys 0/1 and 2/3 equal weights: 12 % apart from the truth.
    rounded = np.round(np.array([100.0, 100.125, 100.25, 100.375]) * 2) / 2
    bf16_weights = np.exp(rounded - rounded.max()) / np.exp(rounded - rounded.max()).sum()
    assert np.abs(bf16_weights / weights - 1).max() > 10 * BF16_EPS


# ---- Norms ----


def test_layer_norm_of_bf16_input_normalises_in_float32():
    """Values near 1000 spread by about ±8: the bf16 mean (spacing 8 there) would be off by up
    to 4, a large part of every centred value."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(1000.0 + rng.integers(-8, 9, size=(4, 64)), jnp.bfloat16)  # exact in bf16
    out = layer_norm(x)
    assert out.dtype == jnp.bfloat16
    x64 = np.asarray(x, np.float64)
    centred = x64 - x64.mean(axis=-1, keepdims=True)
    want = centred / np.sqrt(np.square(centred).mean(axis=-1, keepdims=True) + 1e-6)
    # The result is only rounded to bf16 at the end: within one bf16 rounding of the truth.
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=BF16_EPS, atol=1e-6)
    # Centring on a bf16-rounded mean instead misses by far more than that rounding.
    mean_in_bf16 = np.asarray(jnp.asarray(x64.mean(axis=-1, keepdims=True), jnp.bfloat16))
    off = np.abs((x64 - mean_in_bf16) - centred).max()
    assert off > 0.5
