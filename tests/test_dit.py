"""DiT: adaLN-Zero start, packing invariance, padding isolation, config errors."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.models.dit import DIT_PRESETS, MODULATIONS, DiT, DiTConfig
from soraj.models.patching import patch_coords

CONFIG = DiTConfig(width=32, depth=2, num_heads=2, latent_channels=2, text_width=12)
P, E, S, M, L = CONFIG.patch_features, CONFIG.text_width, 2, 4, 24


def _sample(seed, grid, text_len):
    """One sample's tokens, per-token t, coords and caption states."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(grid))
    text_mask = np.arange(M) < text_len
    return dict(
        x=rng.normal(size=(n, P)).astype(np.float32),
        t=rng.uniform(size=n).astype(np.float32),
        coords=np.asarray(patch_coords(grid)),
        text=rng.normal(size=(M, E)).astype(np.float32),
        text_mask=text_mask,
    )


def _pack(samples, rng):
    """One row: samples in order (segment ids 1, 2, ...), then padding filled with garbage."""
    x = rng.normal(size=(L, P)).astype(np.float32) * 100
    t = rng.uniform(size=L).astype(np.float32)
    coords = rng.integers(0, 50, size=(L, 3)).astype(np.int32)
    seg = np.zeros(L, np.int32)
    text = rng.normal(size=(S, M, E)).astype(np.float32) * 100  # unused slots: garbage
    text_mask = rng.random((S, M)) > 0.5  # garbage too: a segment with no tokens ignores it
    starts, pos = [], 0
    for i, s in enumerate(samples):
        n = len(s["x"])
        x[pos : pos + n], t[pos : pos + n], coords[pos : pos + n] = s["x"], s["t"], s["coords"]
        seg[pos : pos + n] = i + 1
        text[i], text_mask[i] = s["text"], s["text_mask"]
        starts.append(pos)
        pos += n
    return (x, t, coords, seg, text, text_mask), starts


def _batch(rows):
    return tuple(np.stack(parts) for parts in zip(*rows, strict=True))


@functools.cache
def _jitted(config):
    model = DiT(config)
    return model, jax.jit(model.init), jax.jit(model.apply)


def _perturbed_params(model, batch, seed=0):
    """Init, then give every all-zero leaf (adaLN-Zero, zero-init projections) random values."""
    params = nn.unbox(_jitted(model.config)[1](jax.random.key(seed), *batch))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [
        0.2 * jax.random.normal(k, p.shape) if not np.any(np.asarray(p)) else p
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


A = _sample(1, (2, 2, 3), text_len=3)  # 12 tokens
B = _sample(2, (1, 3, 2), text_len=4)  # 6 tokens


def _three_rows(seed):
    """A alone, B then A, A then B: every test uses this (3, L) shape, so one compile each."""
    rng = np.random.default_rng(seed)
    (alone, (a0,)), (b_first, (b1, a1)), (a_first, (a2, b2)) = (
        _pack(samples, rng) for samples in ([A], [B, A], [A, B])
    )
    return [alone, b_first, a_first], dict(a=(a0, a1, a2), b=(None, b1, b2))


N_A, N_B = len(A["x"]), len(B["x"])


def test_output_is_exactly_zero_at_init_and_nonzero_after_perturbing():
    rows, _ = _three_rows(0)
    batch = _batch(rows)
    model, init, apply = _jitted(CONFIG)
    out = apply(nn.unbox(init(jax.random.key(0), *batch)), *batch)
    chex.assert_shape(out, (3, L, P))
    assert out.dtype == jnp.float32
    assert np.all(np.asarray(out) == 0)
    out = apply(_perturbed_params(model, batch), *batch)
    assert np.all(np.abs(np.asarray(out)[batch[3] > 0]).max(-1) > 1e-3)


def _two_t_per_sample(batch):
    """The batch with each sample's real tokens at its first t, except its first third at 0
    (clean conditioning tokens, as cond_mask makes them): two distinct t per sample."""
    x, t, coords, seg, *rest = (np.array(part) for part in batch)
    for b in range(seg.shape[0]):
        for segment in np.unique(seg[b][seg[b] > 0]):
            (tokens,) = np.nonzero(seg[b] == segment)
            t[b][tokens] = t[b][tokens[0]]
            t[b][tokens[: len(tokens) // 3]] = 0.0
    return (x, t, coords, seg, *rest)


@pytest.mark.parametrize("modulation", MODULATIONS)
def test_packing_invariance_and_padding_isolation(modulation):
    rows, starts = _three_rows(3)
    batch = _batch(rows)
    config = dataclasses.replace(CONFIG, modulation=modulation)
    if modulation == "per_segment":
        batch = _two_t_per_sample(batch)
    model, _, apply = _jitted(config)
    params = _perturbed_params(model, batch)
    out = np.asarray(apply(params, *batch))

    (a0, a1, a2), (_, b1, b2) = starts["a"], starts["b"]
    ref = out[0, a0 : a0 + N_A]
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(out[1, a1 : a1 + N_A], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[2, a2 : a2 + N_A], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[2, b2 : b2 + N_B], out[1, b1 : b1 + N_B], atol=1e-5, rtol=1e-5)

    # New garbage in every padding slot (x_t, t, coords, spare text) changes no real token.
    garbage = [np.array(part) for part in _batch(_three_rows(3 + 100)[0])]
    real = batch[3] > 0
    garbage[1][real] = batch[1][real]  # the real tokens' t as in `batch`
    garbage[0][0, N_A:] = np.inf  # even non-finite padding must stay out
    out_garbage = np.asarray(apply(params, *garbage))
    np.testing.assert_allclose(out_garbage[real], out[real], atol=1e-6, rtol=1e-6)


def test_per_segment_modulation_equals_per_token_with_the_same_params():
    # per_token runs each block's Dense on every token's c: the naive form of the same
    # function, with the same parameters. Two t per sample (noise level and conditioning 0).
    batch = _two_t_per_sample(_batch(_three_rows(3)[0]))
    per_token, _, per_token_apply = _jitted(dataclasses.replace(CONFIG, modulation="per_token"))
    _, _, per_segment_apply = _jitted(dataclasses.replace(CONFIG, modulation="per_segment"))
    params = _perturbed_params(per_token, batch)
    real = batch[3] > 0
    expected = np.asarray(per_token_apply(params, *batch))[real]
    assert np.abs(expected).max() > 1e-2
    got = np.asarray(per_segment_apply(params, *batch))[real]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_per_segment_modulation_refuses_more_timesteps_than_slots():
    batch = _batch(_three_rows(3)[0])  # random t on every token
    config = dataclasses.replace(CONFIG, modulation="per_segment")
    with pytest.raises(ValueError, match="at most timesteps_per_sample=2 distinct t per sample"):
        DiT(config).init(jax.random.key(0), *batch)
    DiT(config).init(jax.random.key(0), *_two_t_per_sample(batch))

    # Under jit no check can run: a token whose t has no slot gets NaN (and, by attention, its
    # whole sample); other samples do not.
    batch = [np.array(part) for part in _two_t_per_sample(batch)]
    start = _three_rows(3)[1]["a"][0]
    batch[1][0, start + N_A - 1] = 0.5  # a third t in sample A of row 0
    model, _, apply = _jitted(config)
    out = np.asarray(apply(_perturbed_params(model, batch), *batch))
    assert np.isnan(out[0, start + N_A - 1]).all()
    assert np.isfinite(out[1:][batch[3][1:] > 0]).all()


def test_text_conditions_its_own_segment_only():
    rows, starts = _three_rows(4)
    batch = [np.array(part) for part in _batch(rows)]
    model, _, apply = _jitted(CONFIG)
    params = _perturbed_params(model, batch)
    before = np.asarray(apply(params, *batch))
    batch[4][2, 1] = np.random.default_rng(5).normal(size=(M, E))  # B's caption in row 2
    after = np.asarray(apply(params, *batch))
    a2, b2 = starts["a"][2], starts["b"][2]
    np.testing.assert_allclose(after[2, a2 : a2 + N_A], before[2, a2 : a2 + N_A], atol=1e-5)
    assert np.abs(after[2, b2 : b2 + N_B] - before[2, b2 : b2 + N_B]).max() > 1e-3
    np.testing.assert_array_equal(after[:2], before[:2])


def test_boxed_params_carry_logical_axes():
    batch = _batch(_three_rows(0)[0])
    variables = jax.eval_shape(DiT(CONFIG).init, jax.random.key(0), *batch)
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["block_0"]["self_attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(specs["block_0"]["mlp"]["Dense_0"]["kernel"]) == ("embed", "mlp")


def test_bf16_compute_keeps_f32_params_and_tracks_f32_output():
    batch = _batch(_three_rows(6)[0])
    f32_model, _, f32_apply = _jitted(CONFIG)
    bf16_model, _, bf16_apply = _jitted(dataclasses.replace(CONFIG, dtype="bfloat16"))
    shapes = jax.eval_shape(bf16_model.init, jax.random.key(0), *batch)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(shapes)))
    params = _perturbed_params(f32_model, batch)
    want = np.asarray(f32_apply(params, *batch))
    got = np.asarray(bf16_apply(params, *batch))
    real = batch[3] > 0
    # bf16 has an 8-bit mantissa: a few percent of the output scale, not f32 agreement.
    assert np.abs(got[real] - want[real]).max() < 0.05 * np.abs(want[real]).max()


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="allowed: xla, cudnn"):
        DiTConfig(width=32, depth=1, num_heads=2, attention_backend="flash")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiTConfig(width=30, depth=1, num_heads=4)
    with pytest.raises(ValueError, match="allowed: float32, bfloat16"):
        DiTConfig(width=32, depth=1, num_heads=2, dtype="int8")
    assert DIT_PRESETS["XL/2"].head_dim == 72 and DIT_PRESETS["tiny"].patch_size == (1, 2, 2)
    x, t, coords, seg, text, text_mask = _batch([_pack([A], np.random.default_rng(0))[0]])
    with pytest.raises(ValueError, match="x_t has shape"):
        DiT(CONFIG).init(jax.random.key(0), x[..., :5], t, coords, seg, text, text_mask)
