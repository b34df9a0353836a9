"""Memory planner: its estimate against XLA's compiled memory analysis, monotone plans, the
minimum budget, and encode/decode within a budget equal to the whole-clip pass."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_vae_params import tiny_vae_and_clip

from soraj.models.vae import VAE_PRESETS, VAEConfig, VideoVAE
from soraj.models.vae_memory_plan import (
    chunk_call_bytes,
    decode_within_budget,
    encode_within_budget,
    estimate_peak_bytes,
    plan_decode,
    plan_encode,
    plan_memory,
)

TINY = VAE_PRESETS["tiny"]  # ft = fs = 4
ESTIMATE_FACTOR = 1.3  # estimate / XLA stays within [1 / 1.3, 1.3]
# 4×4 pixel patches: the full-resolution level holds 3·4² = 48 channels of patches, six times
# its width of 8, so an estimate that leaves them out falls below 1 / 1.3 of XLA's.
WIDE_PATCHES = VAEConfig(
    base_channels=8,
    channel_multipliers=(1, 2),
    latent_channels=4,
    temporal_downsample=(True,),
    spatial_downsample=(False,),
    pixel_patch=4,
)


# ---- The estimate against XLA ------------------------------------------------------------


def _xla_chunk_call_bytes(config, stage, batch, frames, h, w):
    """temp + argument + output bytes XLA assigns to one streaming chunk call (a later chunk,
    which takes and returns the carried frames)."""
    model, ft, fs = VideoVAE(config), config.temporal_factor, config.spatial_factor
    method = getattr(VideoVAE, f"{stage}_chunk")
    init_video = jnp.zeros((1, 1 + ft, fs, fs, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), init_video)["params"])
    if stage == "encode":
        shape = lambda n: (batch, n, h, w, 3)
        n = frames
    else:
        shape = lambda n: (batch, n, h // fs, w // fs, config.latent_channels)
        n = frames // ft

    def call(params, cache, x):
        variables = {"params": params, **({"cache": cache} if cache is not None else {})}
        out, updated = model.apply(variables, x, method=method, mutable=["cache"])
        return out, updated["cache"]

    first = jax.ShapeDtypeStruct(shape(1), jnp.float32)
    _, cache = jax.eval_shape(functools.partial(call, cache=None), params, x=first)
    x = jax.ShapeDtypeStruct(shape(n), jnp.float32)
    stats = jax.jit(call).lower(params, cache, x).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


@pytest.mark.parametrize(
    "preset, stage, batch, frames, height, width",
    [
        ("tiny", "encode", 2, 8, 64, 32),
        ("tiny64", "encode", 2, 8, 64, 64),
        ("tiny64", "decode", 2, 8, 64, 64),
        ("cpu-4x8x8-c16", "encode", 1, 4, 32, 32),
        ("cpu-4x8x8-c16", "decode", 1, 8, 64, 64),
        ("wide-patches", "encode", 1, 8, 64, 64),
        ("wide-patches", "decode", 1, 8, 64, 64),
    ],
)
def test_estimate_within_factor_of_xla_memory_analysis(preset, stage, batch, frames, height, width):
    config = WIDE_PATCHES if preset == "wide-patches" else VAE_PRESETS[preset]
    measured = _xla_chunk_call_bytes(config, stage, batch, frames, height, width)
    estimate = chunk_call_bytes(config, stage, batch, frames, height, width)
    assert 1 / ESTIMATE_FACTOR <= estimate / measured <= ESTIMATE_FACTOR, (estimate, measured)


# ---- Plans -------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["encode", "decode"])
def test_bigger_budgets_never_give_smaller_chunks_or_tiles(stage):
    clip = (1, 33, 64, 96)  # 9 latent frames of 16 × 24
    plan = plan_encode if stage == "encode" else plan_decode
    shape = clip if stage == "encode" else (1, 9, 16, 24)
    whole = estimate_peak_bytes(TINY, stage, clip, 32 if stage == "encode" else 8)
    plans = [plan(TINY, shape, int(b)) for b in np.geomspace(whole / 20, whole * 1.2, 60)]
    for small, big in zip(plans, plans[1:], strict=False):
        assert big.chunk >= small.chunk
        area = lambda p: np.inf if p.tile is None else p.tile[0] * p.tile[1]
        assert area(big) >= area(small)
    budgets = np.geomspace(whole / 20, whole * 1.2, 60)
    assert all(p.estimated_peak_bytes <= b for p, b in zip(plans, budgets, strict=True))
    # Both regimes were crossed: tiles at the low end, the whole clip at once at the top.
    assert plans[0].tile is not None and plans[-1].tile is None
    assert plans[-1].chunk == (32 if stage == "encode" else 8)


def test_budget_below_minimum_names_it():
    clip = (1, 17, 64, 64)
    with pytest.raises(ValueError, match=r"below the minimum \d+ bytes to encode") as error:
        plan_encode(TINY, clip, 1000)
    minimum = int(re.search(r"minimum (\d+) bytes", str(error.value)).group(1))
    assert minimum == estimate_peak_bytes(TINY, "encode", clip, 4, (8, 8))  # 2×2 latent px
    plan = plan_encode(TINY, clip, minimum)
    assert (plan.chunk, plan.tile, plan.overlap) == (4, (8, 8), 4)
    with pytest.raises(ValueError, match=f"minimum {minimum} bytes"):
        plan_encode(TINY, clip, minimum - 1)


@pytest.mark.parametrize("budget", [0, -5, 1.5e9, True])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match="memory_budget must be"):
        plan_memory(TINY, (1, 17, 32, 32), budget)


def test_bad_clip_shape():
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ 4·k"):
        plan_encode(TINY, (1, 16, 32, 32), 10**9)


# ---- Within a budget ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae():
    return tiny_vae_and_clip()


@functools.partial(jax.jit, static_argnums=(0, 3))
def _whole(model, params, x, method):
    return model.apply({"params": params}, x, method=getattr(VideoVAE, method))


def test_encode_that_would_exceed_budget_is_chunked_and_exact(vae):
    model, params, video = vae
    clip = video.shape[:4]
    budget = estimate_peak_bytes(TINY, "encode", clip, 8) - 1  # the whole clip does not fit
    assert plan_encode(TINY, clip, budget) == plan_encode(TINY, clip, budget)
    assert (
        plan_encode(TINY, clip, budget).chunk == 4 and plan_encode(TINY, clip, budget).tile is None
    )
    mean, logvar = encode_within_budget(model, params, video, budget)
    whole_mean, whole_logvar = _whole(model, params, video, "encode")
    np.testing.assert_allclose(mean, whole_mean, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logvar, whole_logvar, atol=1e-5, rtol=1e-5)


def test_decode_that_would_exceed_budget_is_chunked_and_exact(vae):
    model, params, video = vae
    latents = np.asarray(_whole(model, params, video, "encode")[0])  # (1, 3, 4, 8, 8)
    budget = estimate_peak_bytes(TINY, "decode", video.shape[:4], 2) - 1
    plan = plan_decode(TINY, latents.shape[:4], budget)
    assert (plan.chunk, plan.tile) == (1, None)
    decoded = decode_within_budget(model, params, latents, budget)
    np.testing.assert_allclose(decoded, _whole(model, params, latents, "decode"), atol=1e-5)


def test_non_finite_input_is_refused(vae):
    model, params, video = vae
    with pytest.raises(ValueError, match="non-finite"):
        encode_within_budget(model, params, np.where(video > 0.9, np.nan, video), 10**9)
    with pytest.raises(ValueError, match="non-finite"):
        decode_within_budget(model, params, np.full((1, 3, 4, 8, 8), np.inf), 10**9)
