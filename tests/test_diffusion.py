"""Tests for soraj.diffusion: timesteps, flow-matching loss, Euler sampler, guidance."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.diffusion.objective import flow_matching_loss, noisy_input
from soraj.diffusion.sampling import (
    cfg_velocity_batched,
    classifier_free_guidance,
    dual_guidance_batched,
    euler_sample,
)
from soraj.diffusion.timesteps import (
    logit_normal,
    per_segment_timesteps,
    resolution_shift,
    sampling_schedule,
    shift_timesteps,
)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- Timesteps ----


def test_logit_normal_matches_closed_form_median_and_quadrature_mean():
    mean, std, n = 0.5, 1.0, 200_000
    t = np.asarray(logit_normal(jax.random.PRNGKey(0), (n,), mean, std))
    assert t.min() > 0 and t.max() < 1
    # Median of sigmoid(mean + std·z) is sigmoid(mean); its standard error here is ~7e-4.
    np.testing.assert_allclose(np.median(t), _sigmoid(mean), atol=4e-3)
    # The mean has no closed form: Gauss-Hermite quadrature of E[sigmoid(mean + std·z)].
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    expected_mean = np.sum(weights * _sigmoid(mean + std * nodes)) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(t.mean(), expected_mean, atol=3e-3)  # standard error ~5e-4


def test_shift_timesteps_closed_form_identity_and_monotone():
    t = jnp.linspace(0.0, 1.0, 101)
    chex.assert_trees_all_close(shift_timesteps(t, 1.0), t, atol=1e-7)
    np.testing.assert_allclose(
        shift_timesteps(jnp.array([0.0, 0.25, 0.5, 1.0]), 3.0), [0.0, 0.5, 0.75, 1.0], atol=1e-6
    )
    np.testing.assert_allclose(shift_timesteps(jnp.array([0.5]), 0.5), [0.25 / 0.75], atol=1e-6)
    for shift in (0.5, 3.0):
        assert np.all(np.diff(np.asarray(shift_timesteps(t, shift))) > 0)
    assert np.all(np.asarray(shift_timesteps(t[1:-1], 3.0)) > np.asarray(t[1:-1]))
    with pytest.raises(ValueError, match="shift"):
        shift_timesteps(t, 0.0)


def test_resolution_shift_is_linear_between_anchors():
    shifts = resolution_shift(jnp.array([256, 2176, 4096, 8192]))
    np.testing.assert_allclose(shifts, [1.0, 2.0, 3.0, 1.0 + 2.0 * 7936 / 3840], rtol=1e-6)
    with pytest.raises(ValueError, match="max_tokens must be greater"):
        resolution_shift(10, base_tokens=64, max_tokens=64)
    with pytest.raises(ValueError, match="max_shift must be >= base_shift"):
        resolution_shift(10, base_shift=3.0, max_shift=1.0)
    with pytest.raises(ValueError, match="1-token"):  # 1 - 2·(64 - 1)/(96 - 64) < 0
        resolution_shift(10, base_tokens=64, max_tokens=96, base_shift=1.0, max_shift=3.0)


def test_resolution_shift_and_segment_t_are_monotone_in_token_count():
    counts = jnp.arange(1, 10_001)
    assert np.all(np.diff(np.asarray(resolution_shift(counts))) > 0)
    # Segments of 1, 2, 4, 8 and 16 tokens with the same pre-shift draw (std = 0 gives
    # u = sigmoid(0.3) to all): a bigger segment must get a strictly larger t.
    sizes = (1, 2, 4, 8, 16)
    segment_ids = jnp.asarray([sum(([s] * n for s, n in enumerate(sizes, 1)), [])])
    anchors = dict(base_tokens=4, base_shift=1.0, max_tokens=12, max_shift=3.0)
    t = per_segment_timesteps(
        jax.random.PRNGKey(0), segment_ids, 5, mean=0.3, std=0.0, shift_by_tokens=True, **anchors
    )
    t_by_size = [float(np.unique(np.asarray(t)[segment_ids == s])[0]) for s in range(1, 6)]
    assert np.all(np.diff(t_by_size) > 0)
    # Hand-computed closed form for the 8-token segment: shift 1 + (8 - 4)·2/8 = 2, so
    # t = 2u / (1 + u) with u = sigmoid(0.3).
    u = _sigmoid(0.3)
    np.testing.assert_allclose(t_by_size[3], 2 * u / (1 + u), rtol=1e-6)


def test_sampling_schedule_endpoints_and_shift():
    np.testing.assert_allclose(sampling_schedule(4), [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(sampling_schedule(2, shift=3.0), [1.0, 0.75, 0.0], atol=1e-7)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_steps"):
            sampling_schedule(bad)


def _naive_per_segment_t(z, segment_ids, cond_mask, mean, std, anchors):
    base_tokens, base_shift, max_tokens, max_shift = anchors
    t = np.zeros(segment_ids.shape)
    for b in range(segment_ids.shape[0]):
        for i, sid in enumerate(segment_ids[b]):
            if sid == 0 or cond_mask[b, i]:
                continue
            count = np.sum(segment_ids[b] == sid)
            slope = (max_shift - base_shift) / (max_tokens - base_tokens)
            shift = base_shift + slope * (count - base_tokens)
            u = _sigmoid(mean + std * z[b, sid - 1])
            t[b, i] = shift * u / (1 + (shift - 1) * u)
    return t


def test_per_segment_timesteps_against_naive_loop():
    segment_ids = np.array(
        [[1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0, 0], [1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3]], np.int32
    )
    cond_mask = np.zeros_like(segment_ids, bool)
    cond_mask[0, 3] = cond_mask[1, 5] = cond_mask[1, 6] = True
    rng = jax.random.PRNGKey(3)
    anchors = (2, 1.0, 7, 3.0)  # small anchors so these few tokens span a real shift range
    t = per_segment_timesteps(
        rng, jnp.asarray(segment_ids), 3, jnp.asarray(cond_mask), mean=0.3, std=1.2,
        shift_by_tokens=True, base_tokens=anchors[0], base_shift=anchors[1],
        max_tokens=anchors[2], max_shift=anchors[3],
    )  # fmt: skip
    chex.assert_shape(t, segment_ids.shape)
    z = np.asarray(jax.random.normal(rng, (2, 3), jnp.float32))  # the draw logit_normal makes
    expected = _naive_per_segment_t(z, segment_ids, cond_mask, 0.3, 1.2, anchors)
    np.testing.assert_allclose(t, expected, rtol=1e-5, atol=1e-6)

    t = np.asarray(t)
    assert np.all(t[segment_ids == 0] == 0) and np.all(t[cond_mask] == 0)
    live = (segment_ids > 0) & ~cond_mask
    for b in range(2):
        per_segment = [np.unique(t[b][live[b] & (segment_ids[b] == s)]) for s in (1, 2, 3)]
        present = [values for values in per_segment if values.size]
        assert all(values.size == 1 for values in present)  # one t per segment
        assert len({float(values[0]) for values in present}) == len(present)  # they differ


def test_per_segment_timesteps_bigger_segment_gets_larger_t():
    # std = 0 gives every segment the same draw sigmoid(0) = 0.5 before the shift; the
    # 4-token segment has shift 1 (t = 0.5), the 12-token one shift 3 (t = 0.75).
    segment_ids = jnp.asarray([[1] * 4 + [2] * 12])
    common = dict(mean=0.0, std=0.0, base_tokens=4, max_tokens=12, max_shift=3.0)
    t = per_segment_timesteps(jax.random.PRNGKey(0), segment_ids, 2, shift_by_tokens=True, **common)
    np.testing.assert_allclose(t[0], [0.5] * 4 + [0.75] * 12, atol=1e-6)
    t = per_segment_timesteps(jax.random.PRNGKey(0), segment_ids, 2, **common)
    np.testing.assert_allclose(t[0], [0.5] * 16, atol=1e-6)
    with pytest.raises(ValueError, match="max_segments"):
        per_segment_timesteps(jax.random.PRNGKey(0), segment_ids, 0)


# ---- Flow-matching loss ----

TOKEN_WEIGHTS = np.linspace(-0.5, 0.7, 4).astype(np.float32)


def _tokenwise_denoiser(x_t, t):
    # Acts on each token alone, so padding and conditioning cannot reach real tokens.
    return jnp.tanh(x_t) * TOKEN_WEIGHTS + t[..., None]


def _naive_loss(x0, noise, t, segment_ids, cond_mask, max_segments):
    x0, noise, t = (np.asarray(a, np.float64) for a in (x0, noise, t))
    batch = x0.shape[0]
    loss_per_segment = np.zeros((batch, max_segments))
    valid = np.zeros((batch, max_segments), bool)
    all_token_errors = []
    for b in range(batch):
        for s in range(1, max_segments + 1):
            errors = []
            for i in range(x0.shape[1]):
                if segment_ids[b, i] != s or cond_mask[b, i]:
                    continue
                x_t = (1 - t[b, i]) * x0[b, i] + t[b, i] * noise[b, i]
                v_pred = np.tanh(x_t) * TOKEN_WEIGHTS + t[b, i]
                errors.append(np.mean((v_pred - (noise[b, i] - x0[b, i])) ** 2))
            if errors:
                loss_per_segment[b, s - 1], valid[b, s - 1] = np.mean(errors), True
                all_token_errors += errors
    per_sample = loss_per_segment[valid].mean()
    return per_sample, np.mean(all_token_errors), loss_per_segment, valid


def _packed_example(seed=0):
    rng = np.random.default_rng(seed)
    segment_ids = np.array(
        [[1, 1, 1, 1, 2, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 3, 3, 0]], np.int32
    )  # row 1 has no segment 2: absent segments must not count
    cond_mask = np.zeros_like(segment_ids, bool)
    cond_mask[0, 0] = cond_mask[1, 7] = cond_mask[1, 8] = True  # row 1 segment 3 is all cond
    x0 = rng.normal(size=(2, 10, 4)).astype(np.float32)
    noise = rng.normal(size=(2, 10, 4)).astype(np.float32)
    t = rng.uniform(size=(2, 10)).astype(np.float32)
    return x0, noise, t, segment_ids, cond_mask


class FlowMatchingLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_naive_loop(self):
        x0, noise, t, segment_ids, cond_mask = _packed_example()
        per_sample, per_token, per_segment, valid = _naive_loss(
            x0, noise, t, segment_ids, cond_mask, 3
        )
        for weighting, expected in (("per_sample", per_sample), ("per_token", per_token)):
            loss_fn = self.variant(
                flow_matching_loss, static_argnames=("denoise_fn", "max_segments", "weighting")
            )
            loss, aux = loss_fn(
                _tokenwise_denoiser, x0, noise, t, segment_ids, cond_mask,
                max_segments=3, weighting=weighting,
            )  # fmt: skip
            np.testing.assert_allclose(loss, expected, rtol=1e-5)
            np.testing.assert_allclose(aux["loss_per_segment"], per_segment, rtol=1e-5)
            np.testing.assert_array_equal(aux["segment_valid"], valid)
        assert not np.isclose(per_sample, per_token)  # the example tells them apart


def test_per_sample_weighting_counts_short_and_long_clips_equally():
    # Zero prediction and x0 = 0: a token's error is mean(noise²). 10 tokens with error 1
    # and 40 with error 3 give per_sample (1 + 3) / 2 = 2 and per_token 130 / 50 = 2.6.
    segment_ids = np.array([[1] * 10 + [2] * 40 + [0] * 6], np.int32)
    noise = np.ones((1, 56, 2), np.float32)
    noise[0, 10:50] = np.sqrt(3.0)
    noise[0, 50:] = 100.0  # padding: would dominate if it leaked in
    x0, t = np.zeros_like(noise), np.full((1, 56), 0.3, np.float32)
    zero_model = lambda x_t, t: jnp.zeros_like(x_t)
    args = (zero_model, x0, noise, t, segment_ids, None, 2)
    np.testing.assert_allclose(flow_matching_loss(*args, weighting="per_sample")[0], 2.0, rtol=1e-6)
    np.testing.assert_allclose(flow_matching_loss(*args, weighting="per_token")[0], 2.6, rtol=1e-6)
    with pytest.raises(ValueError, match="per_sample"):
        flow_matching_loss(*args, weighting="mean")


def test_padding_and_conditioning_tokens_do_not_change_the_loss():
    x0, noise, t, segment_ids, cond_mask = _packed_example(seed=1)
    ignored = (segment_ids == 0) | cond_mask
    rng = np.random.default_rng(7)
    x0_b, noise_b, t_b = x0.copy(), noise.copy(), t.copy()
    x0_b[ignored] = rng.normal(size=x0_b[ignored].shape) * 1e3
    noise_b[ignored] = rng.normal(size=noise_b[ignored].shape) * 1e3
    t_b[ignored] = rng.uniform(size=t_b[ignored].shape)
    for weighting in ("per_sample", "per_token"):
        loss_a, _ = flow_matching_loss(
            _tokenwise_denoiser, x0, noise, t, segment_ids, cond_mask, 3, weighting
        )
        loss_b, _ = flow_matching_loss(
            _tokenwise_denoiser, x0_b, noise_b, t_b, segment_ids, cond_mask, 3, weighting
        )
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)


def test_given_tokens_are_shown_at_their_own_t():
    x0, noise, t, segment_ids, cond_mask = _packed_example()
    seen = {}

    def spy(x_t, t_in):
        seen["x_t"], seen["t"] = x_t, t_in
        return jnp.zeros_like(x_t)

    # Given tokens at t = 0 are shown clean; the curriculum's noised ones (t = 0.05) noised.
    t = np.where(cond_mask, 0.0, t).astype(np.float32)
    t[1, 7] = 0.05
    flow_matching_loss(spy, x0, noise, t, segment_ids, cond_mask, 3)
    np.testing.assert_array_equal(np.asarray(seen["t"])[cond_mask], t[cond_mask])
    clean = cond_mask & (t == 0)
    np.testing.assert_array_equal(np.asarray(seen["x_t"])[clean], x0[clean])
    np.testing.assert_allclose(
        np.asarray(seen["x_t"])[1, 7], 0.95 * x0[1, 7] + 0.05 * noise[1, 7], rtol=1e-6
    )
    expected_x_t = (1 - t[..., None]) * x0 + t[..., None] * noise
    np.testing.assert_allclose(noisy_input(x0, noise, t), expected_x_t, rtol=1e-6)


# ---- Euler sampler ----


def _single_point_velocity(x0):
    # Exact velocity of the straight path through one known x0: x_t - x0 = t·(ε - x0).
    return lambda x_t, t: (x_t - x0) / t[..., None]


@pytest.mark.parametrize("num_steps, shift", [(1, 1.0), (2, 1.0), (3, 3.0), (4, 0.5)])
def test_euler_with_oracle_velocity_lands_on_x0(num_steps, shift):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    x0 = jax.random.normal(keys[0], (2, 5, 3))
    noise = jax.random.normal(keys[1], (2, 5, 3))
    sample = euler_sample(_single_point_velocity(x0), noise, num_steps, shift=shift)
    chex.assert_shape(sample, (2, 5, 3))
    chex.assert_trees_all_close(sample, x0, atol=1e-5)


def _gaussian_marginal_velocity(mu, sigma):
    # x0 ~ N(mu, sigma²), ε ~ N(0, 1), x_t = (1-t)·x0 + t·ε. x_t is Gaussian with mean
    # (1-t)·mu and variance s² = (1-t)²σ² + t²; Cov(x0, x_t) = (1-t)σ², Cov(ε, x_t) = t, so
    # E[ε - x0 | x_t = x] = -mu + (t - (1-t)σ²) / s² · (x - (1-t)·mu).
    def velocity_fn(x_t, t):
        t = t[..., None]
        variance = (1 - t) ** 2 * sigma**2 + t**2
        return -mu + (t - (1 - t) * sigma**2) / variance * (x_t - (1 - t) * mu)

    return velocity_fn


def test_euler_maps_standard_normal_to_gaussian_data():
    mu, sigma = 1.5, 0.4
    noise = np.random.default_rng(0).normal(size=(1, 4096, 1))
    noise = jnp.asarray((noise - noise.mean()) / noise.std(), jnp.float32)  # exactly N(0, 1)
    sample = euler_sample(_gaussian_marginal_velocity(mu, sigma), noise, 200)
    # The flow is affine in x, so the sample's moments are mu, sigma up to Euler's O(1/200).
    np.testing.assert_allclose(float(sample.mean()), mu, atol=1e-2)
    np.testing.assert_allclose(float(sample.std()), sigma, atol=1e-2)
    # A crude 4-step solve is measurably worse, so the tolerance above has teeth.
    coarse = euler_sample(_gaussian_marginal_velocity(mu, sigma), noise, 4)
    assert float(jnp.abs(coarse.std() - sigma)) > 1e-2
    # The exact flow is x_t = (1-t)·mu + s_t·ε, so each sample should land on mu + sigma·ε,
    # with Euler's first-order error: halving the step halves the worst per-sample error.
    exact = mu + sigma * noise
    half_steps = euler_sample(_gaussian_marginal_velocity(mu, sigma), noise, 100)
    error_ratio = jnp.abs(half_steps - exact).max() / jnp.abs(sample - exact).max()
    assert 1.8 < float(error_ratio) < 2.2


def test_given_tokens_come_out_bit_exact_and_are_shown_at_t_zero():
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    x0 = jax.random.normal(keys[0], (1, 6, 2))
    noise = jax.random.normal(keys[1], (1, 6, 2))
    given_values = jax.random.normal(keys[2], (1, 6, 2))  # not x0: held whatever x0 is
    given = jnp.array([[True, True, False, False, False, True]])
    oracle = _single_point_velocity(x0)

    def velocity_fn(x_t, t):
        # Off by the t shown on given tokens, which the sampler must keep at 0; on them it
        # talks nonsense (even NaN), which the sampler must ignore.
        given_t = jnp.sum(jnp.where(given, t, 0.0))
        v = oracle(x_t, jnp.where(given, 1.0, t)) + given_t
        return jnp.where(given[..., None], jnp.nan, v)

    reference = jnp.where(given[..., None], given_values, 0.0)
    level = jnp.where(given, 0.0, 1.0)
    sample = euler_sample(velocity_fn, noise, 3, reference=reference, level=level)
    np.testing.assert_array_equal(np.asarray(sample)[given], np.asarray(given_values)[given])
    chex.assert_trees_all_close(sample[~given], x0[~given], atol=1e-5)
    with pytest.raises(ValueError, match="together"):
        euler_sample(velocity_fn, noise, 3, level=level)


def _naive_level_sampler(velocity_fn, noise, num_steps, shift, reference, level):
    """The issue's rule, token by token in numpy: x = c·ε + (1 − c)·x_ref, then per step
    τ = min(t_k, c) and x += (min(t_k+1, c) − τ)·v."""
    noise, reference, level = (np.asarray(a, np.float64) for a in (noise, reference, level))
    grid = np.linspace(1.0, 0.0, num_steps + 1)
    grid = shift * grid / (1 + (shift - 1) * grid)
    x = level[..., None] * noise + (1 - level[..., None]) * reference
    for k in range(num_steps):
        tau = np.minimum(grid[k], level)
        tau_next = np.minimum(grid[k + 1], level)
        v = np.asarray(velocity_fn(jnp.asarray(x, jnp.float32), jnp.asarray(tau, jnp.float32)))
        x = x + (tau_next - tau)[..., None] * v
    return x


def test_generation_levels_follow_the_rule_of_a_naive_loop():
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(2, 7, 3)).astype(np.float32)
    reference = rng.normal(size=(2, 7, 3)).astype(np.float32)
    level = rng.choice([0.0, 0.3, 0.55, 1.0], size=(2, 7)).astype(np.float32)
    matrix = jnp.asarray(rng.normal(size=(3, 3)) * 0.3, jnp.float32)

    def velocity_fn(x_t, t):  # depends on x and on each token's t
        return x_t @ matrix + t[..., None] ** 2

    for shift in (1.0, 3.0):
        got = euler_sample(velocity_fn, jnp.asarray(noise), 6, shift, reference, level)
        expected = _naive_level_sampler(velocity_fn, noise, 6, shift, reference, level)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.array_equal(np.asarray(got)[level == 0], reference[level == 0])


def test_sdedit_strength_s_starts_on_the_path_at_t_s():
    # Level s everywhere from x_ref = x0: x starts at s·ε + (1 − s)·x0, on x0's straight path
    # at t = s, so the exact velocity lands on x0 whatever the strength and the steps.
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    x0 = jax.random.normal(keys[0], (1, 5, 2))
    noise = jax.random.normal(keys[1], (1, 5, 2))
    for strength in (0.2, 0.6, 1.0):
        level = jnp.full((1, 5), strength)
        sample = euler_sample(_single_point_velocity(x0), noise, 4, 2.0, x0, level)
        chex.assert_trees_all_close(sample, x0, atol=1e-5)


def test_dual_guidance_matches_three_separate_calls():
    rng = np.random.default_rng(4)
    B, L, P = 2, 5, 3
    x = jnp.asarray(rng.normal(size=(B, L, P)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(B, L)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=(B, L, P)), jnp.float32)
    visual = jnp.asarray(rng.random((B, L)) < 0.4)

    def model(x_t, t_in, text_on):  # a toy velocity that depends on x, t and the text
        return 1.5 * x_t + t_in[..., None] + (0.7 if text_on else -0.2)

    def three(x_all, t_all):  # rows [0, B) with text, the rest with the null text
        return jnp.concatenate(
            [model(x_all[:B], t_all[:B], True), model(x_all[B:], t_all[B:], False)]
        )

    v = dual_guidance_batched(three, 4.0, 2.0, visual, noise)(x, t)
    v_full = model(x, t, True)
    v_visual = model(x, t, False)
    v_none = model(jnp.where(visual[..., None], noise, x), jnp.where(visual, 1.0, t), False)
    expected = v_none + 2.0 * (v_visual - v_none) + 4.0 * (v_full - v_visual)
    np.testing.assert_allclose(v, expected, rtol=1e-6, atol=1e-6)


def test_euler_compiles_once_for_all_steps_and_noises():
    traces = []

    def velocity_fn(x_t, t):
        traces.append(1)  # Python side effect: runs only while tracing
        return -x_t

    sampler = jax.jit(lambda noise: euler_sample(velocity_fn, noise, num_steps=8))
    first = sampler(jnp.ones((1, 3, 2)))
    second = sampler(2 * jnp.ones((1, 3, 2)))
    assert len(traces) == 1  # one trace of the loop body, not one per step or per call
    # dx/dt = -x integrated from 1 to 0 in 8 Euler steps of -1/8: x·(1 + 1/8)^8.
    np.testing.assert_allclose(first, np.full((1, 3, 2), 1.125**8), rtol=1e-6)
    np.testing.assert_allclose(second, np.full((1, 3, 2), 2 * 1.125**8), rtol=1e-6)


def test_euler_rejects_bad_num_steps():
    for bad in (0, 1.5, None):
        with pytest.raises(ValueError, match="num_steps"):
            euler_sample(lambda x, t: x, jnp.zeros((1, 2, 3)), bad)


# ---- Classifier-free guidance ----


def _cond_model(x_t, t):
    return 2.0 * x_t + t[..., None]


def _uncond_model(x_t, t):
    return jnp.sin(x_t) - t[..., None]


def test_guidance_scales_select_and_extrapolate():
    x_t = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 2))
    t = jax.random.uniform(jax.random.PRNGKey(1), (3, 4))
    v_c, v_u = np.asarray(_cond_model(x_t, t)), np.asarray(_uncond_model(x_t, t))
    for scale, expected in ((1.0, v_c), (0.0, v_u), (4.0, v_u + 4.0 * (v_c - v_u))):
        guided = classifier_free_guidance(_cond_model, _uncond_model, scale)(x_t, t)
        np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)


def test_batched_guidance_equals_unbatched():
    x_t = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 2))
    t = jax.random.uniform(jax.random.PRNGKey(3), (3, 4))
    batch_sizes = []

    def fn_both(x, t_both):
        batch_sizes.append(x.shape[0])
        return jnp.concatenate([_cond_model(x[:3], t_both[:3]), _uncond_model(x[3:], t_both[3:])])

    for scale in (0.0, 1.0, 4.5):
        batched = cfg_velocity_batched(fn_both, scale)(x_t, t)
        unbatched = classifier_free_guidance(_cond_model, _uncond_model, scale)(x_t, t)
        chex.assert_trees_all_close(batched, unbatched, atol=1e-6)
    assert batch_sizes == [6, 6, 6]  # one doubled call per evaluation
