"""Tests for the causal video VAE: shapes, causality, first-frame-alone, KL, shape errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from soraj.models.vae import (
    VAE_PRESETS,
    CausalConv3d,
    VAEConfig,
    VideoVAE,
    check_video_shape,
    kl_divergence,
    latent_shape,
)

TINY = VAE_PRESETS["tiny"]
# Same factors as tiny (ft = fs = 4) but narrower and with mid attention, so the causality
# tests also cover the attention block.
CAUSAL_CFG = VAEConfig(
    base_channels=8, channel_multipliers=(1, 2, 2), latent_channels=4, mid_attention=True
)


def _key(seed):
    # XLA:CPU compiles threefry slowly (≈15 s for a VAE init); RngBitGenerator keys take ≈3 s.
    return jax.random.key(seed, impl="rbg")


def _randomised(params, seed, scale=0.1):
    """Adds noise to every leaf so biases and norm offsets are non-zero too."""
    noise = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + scale * noise.normal(size=p.shape).astype(p.dtype), params)


def _video(seed, frames, size=32):
    return jax.random.uniform(_key(seed), (1, frames, size, size, 3), minval=-1, maxval=1)


# Jitted entry points: eager flax runs op by op and would dominate the test time.
@functools.partial(jax.jit, static_argnums=0)
def _init(config, rng, video):
    return VideoVAE(config).init(rng, video)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config, params, video):
    return VideoVAE(config).apply(params, video, method=VideoVAE.encode)


@functools.partial(jax.jit, static_argnums=0)
def _decode(config, params, latents):
    return VideoVAE(config).apply(params, latents, method=VideoVAE.decode)


@functools.partial(jax.jit, static_argnums=0)
def _call(config, params, video, sample_rng=None):
    return VideoVAE(config).apply(params, video, sample_rng=sample_rng)


@pytest.fixture(scope="module")
def tiny_params():
    return _init(TINY, _key(0), _video(0, 1))


@pytest.fixture(scope="module")
def causal_params():
    params = _init(CAUSAL_CFG, _key(1), _video(0, 1, size=16))
    return _randomised(params, seed=2)


# ---- Shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (9, 3)])
def test_encode_decode_shapes(tiny_params, frames, latent_frames):
    video = _video(3, frames)
    mean, logvar = _encode(TINY, tiny_params, video)
    chex.assert_shape([mean, logvar], (1, latent_frames, 8, 8, 8))
    assert latent_shape(TINY, frames, 32, 32) == (latent_frames, 8, 8, 8)
    recon = _decode(TINY, tiny_params, mean)
    chex.assert_shape(recon, video.shape)
    assert recon.dtype == jnp.float32


def test_params_are_float32_and_bfloat16_compute_runs():
    cfg = VAEConfig(
        base_channels=4,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=0,
        temporal_downsample=(True, False),
        spatial_downsample=(True, True),
        latent_channels=4,
        mid_attention=True,
        dtype="bfloat16",
    )
    video = _video(4, 5, size=8)
    params = _init(cfg, _key(0), video)
    assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    recon, mean, logvar = _call(cfg, params, video)
    chex.assert_shape(recon, video.shape)
    chex.assert_tree_all_finite((recon, mean, logvar))
    assert recon.dtype == mean.dtype == jnp.float32


def test_call_samples_mean_plus_scaled_noise(causal_params):
    video = _video(5, 9, size=16)
    rng = _key(7)
    recon, mean, logvar = _call(CAUSAL_CFG, causal_params, video, sample_rng=rng)
    latents = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    chex.assert_trees_all_close(recon, _decode(CAUSAL_CFG, causal_params, latents), atol=1e-5)
    # The noise must actually be used.
    assert not np.allclose(recon, _decode(CAUSAL_CFG, causal_params, mean))


# ---- CausalConv3d against a naive loop ---------------------------------------------------


def _naive_causal_conv(x, kernel, bias, strides):
    """Replicate-pad time at the front, zero-pad space, then loop over output positions."""
    kt, kh, kw, _, c_out = kernel.shape
    st, ss, _ = strides
    x = np.concatenate([np.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)
    x = np.pad(x, ((0, 0), (0, 0), (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    b, t_pad, h_pad, w_pad, _ = x.shape
    t_out, h_out, w_out = (t_pad - kt) // st + 1, (h_pad - kh) // ss + 1, (w_pad - kw) // ss + 1
    out = np.zeros((b, t_out, h_out, w_out, c_out))
    for t in range(t_out):
        for i in range(h_out):
            for j in range(w_out):
                window = x[:, t * st : t * st + kt, i * ss : i * ss + kh, j * ss : j * ss + kw]
                out[:, t, i, j] = np.einsum("btijc,tijco->bo", window, kernel) + bias
    return out


class CausalConvTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1, 1, 1), (2, 2, 2), (2, 1, 1), (1, 2, 2))
    def test_matches_naive_loop(self, *strides):
        x = jax.random.normal(_key(0), (2, 5, 6, 6, 3))
        conv = CausalConv3d(4, strides=strides)
        params = _randomised(conv.init(_key(1), x), seed=2)
        out = self.variant(conv.apply)(params, x)
        p = params["params"]["Conv_0"]
        as64 = lambda a: np.asarray(a, np.float64)
        expected = _naive_causal_conv(as64(x), as64(p["kernel"]), as64(p["bias"]), strides)
        chex.assert_trees_all_close(out, expected.astype(np.float32), atol=1e-5, rtol=1e-5)


# ---- Causality ---------------------------------------------------------------------------


@pytest.mark.parametrize("last_kept", [0, 1])
def test_encoder_latents_ignore_later_frames(causal_params, last_kept):
    video = _video(6, 9, size=16)
    # Latent frame j covers input frames ≤ 4j; change everything after that.
    later = 4 * last_kept + 1
    changed = video.at[:, later:].set(_video(7, 9 - later, size=16))
    mean, logvar = _encode(CAUSAL_CFG, causal_params, video)
    mean2, logvar2 = _encode(CAUSAL_CFG, causal_params, changed)
    np.testing.assert_array_equal(mean[:, : last_kept + 1], mean2[:, : last_kept + 1])
    np.testing.assert_array_equal(logvar[:, : last_kept + 1], logvar2[:, : last_kept + 1])
    assert np.abs(mean[:, last_kept + 1 :] - mean2[:, last_kept + 1 :]).min() > 0


@pytest.mark.parametrize("last_kept", [0, 1])
def test_decoder_frames_ignore_later_latents(causal_params, last_kept):
    latents = jax.random.normal(_key(8), (1, 3, 4, 4, 4))
    changed = latents.at[:, last_kept + 1 :].add(1.0)
    recon = _decode(CAUSAL_CFG, causal_params, latents)
    recon2 = _decode(CAUSAL_CFG, causal_params, changed)
    kept_frames = 4 * last_kept + 1  # latent frame j decodes to frames ≤ 4j
    np.testing.assert_array_equal(recon[:, :kept_frames], recon2[:, :kept_frames])
    assert np.abs(recon[:, kept_frames:] - recon2[:, kept_frames:]).max(axis=(2, 3, 4)).min() > 0


def test_first_frame_is_encoded_and_decoded_alone(causal_params):
    clip = _video(9, 9, size=16)
    mean_clip, _ = _encode(CAUSAL_CFG, causal_params, clip)
    mean_image, _ = _encode(CAUSAL_CFG, causal_params, clip[:, :1])
    chex.assert_trees_all_close(mean_clip[:, :1], mean_image, atol=1e-5)
    recon_clip = _decode(CAUSAL_CFG, causal_params, mean_clip)
    recon_image = _decode(CAUSAL_CFG, causal_params, mean_clip[:, :1])
    chex.assert_trees_all_close(recon_clip[:, :1], recon_image, atol=1e-5)


# ---- KL divergence -----------------------------------------------------------------------


def test_kl_divergence_matches_closed_form():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 2, 4, 4, 5))
    logvar = rng.normal(size=(3, 2, 4, 4, 5))
    # Textbook univariate form: log(σ_p/σ_q) + (σ_q² + μ_q²) / (2σ_p²) - 1/2 with σ_p = 1.
    sigma = np.sqrt(np.exp(logvar))
    elementwise = -np.log(sigma) + (sigma**2 + mean**2) / 2 - 0.5
    expected = elementwise.reshape(3, -1).sum(axis=1)
    per_sample = kl_divergence(
        jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32), per_sample=True
    )
    chex.assert_shape(per_sample, (3,))
    chex.assert_trees_all_close(per_sample, expected.astype(np.float32), rtol=1e-5)
    scalar = kl_divergence(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
    chex.assert_shape(scalar, ())
    np.testing.assert_allclose(scalar, expected.mean(), rtol=1e-5)
    zeros = jnp.zeros((2, 1, 2, 2, 3))
    np.testing.assert_array_equal(kl_divergence(zeros, zeros, per_sample=True), [0.0, 0.0])


# ---- Shape errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames,height,width,message",
    [
        (0, 32, 32, r"num_frames must be 1 \+ 4·k.*got 0"),
        (6, 32, 32, r"num_frames must be 1 \+ 4·k.*got 6"),
        (5, 30, 32, r"height must be a positive multiple of the spatial factor 4.*got 30"),
        (5, 2, 32, r"height must be a positive multiple of the spatial factor 4.*got 2"),
        (5, 32, 0, r"width must be a positive multiple of the spatial factor 4.*got 0"),
    ],
)
def test_check_video_shape_rejects_bad_sizes(frames, height, width, message):
    with pytest.raises(ValueError, match=message):
        check_video_shape(TINY, frames, height, width)


def test_check_video_shape_accepts_valid_sizes():
    for frames, height, width in [(1, 4, 4), (9, 32, 48), (13, 8, 4)]:
        check_video_shape(TINY, frames, height, width)


def test_encode_rejects_bad_video(tiny_params):
    with pytest.raises(ValueError, match="num_frames"):
        VideoVAE(TINY).apply(tiny_params, _video(0, 6), method=VideoVAE.encode)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        VideoVAE(TINY).apply(tiny_params, jnp.zeros((1, 5, 32, 32, 4)), method=VideoVAE.encode)


def test_config_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="temporal_downsample must have"):
        VAEConfig(channel_multipliers=(1, 2), temporal_downsample=(True, True))
    with pytest.raises(ValueError, match="dtype must be one of"):
        VAEConfig(dtype="float64")


def _config_with_factors(temporal_factor, spatial_factor, latent_channels):
    """Fewest levels that reach both factors; each downsampling step halves time and/or space."""
    time_steps, space_steps = temporal_factor.bit_length() - 1, spatial_factor.bit_length() - 1
    num_steps = max(time_steps, space_steps)
    return VAEConfig(
        base_channels=4,
        channel_multipliers=(1,) * (num_steps + 1),
        num_res_blocks=0,
        latent_channels=latent_channels,
        temporal_downsample=tuple(i < time_steps for i in range(num_steps)),
        spatial_downsample=tuple(i < space_steps for i in range(num_steps)),
    )


@pytest.mark.parametrize("temporal_factor", [1, 2, 4, 8])
@pytest.mark.parametrize("spatial_factor", [4, 8, 16])
@pytest.mark.parametrize("latent_channels", [4, 64])
def test_every_allowed_factor_gives_the_latent_shape(
    temporal_factor, spatial_factor, latent_channels
):
    cfg = _config_with_factors(temporal_factor, spatial_factor, latent_channels)
    assert (cfg.temporal_factor, cfg.spatial_factor) == (temporal_factor, spatial_factor)
    frames, height, width = 1 + 2 * temporal_factor, 2 * spatial_factor, 3 * spatial_factor
    video = jax.ShapeDtypeStruct((1, frames, height, width, 3), jnp.float32)
    model = VideoVAE(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0), video)
    mean, _ = jax.eval_shape(functools.partial(model.apply, method=VideoVAE.encode), params, video)
    expected = (1, 3, 2, 3, latent_channels)  # (B, 1 + 2, H/fs, W/fs, C)
    assert mean.shape == expected == (1, *latent_shape(cfg, frames, height, width))
    decoded = jax.eval_shape(functools.partial(model.apply, method=VideoVAE.decode), params, mean)
    assert decoded.shape == video.shape


def test_config_rejects_factors_and_channels_outside_the_allowed_sets():
    with pytest.raises(ValueError, match=r"temporal factor of 16; allowed: \(1, 2, 4, 8\)"):
        VAEConfig(
            channel_multipliers=(1,) * 5,
            temporal_downsample=(True,) * 4,
            spatial_downsample=(True, True, False, False),
        )
    with pytest.raises(ValueError, match=r"spatial factor of 2; allowed: \(4, 8, 16\)"):
        VAEConfig(
            channel_multipliers=(1, 2), temporal_downsample=(True,), spatial_downsample=(True,)
        )
    with pytest.raises(ValueError, match=r"latent_channels must be in \[4, 64\], got 65"):
        VAEConfig(latent_channels=65)


def test_preset_factors():
    assert (TINY.temporal_factor, TINY.spatial_factor, TINY.latent_channels) == (4, 4, 8)
    big = VAE_PRESETS["4x8x8-c16"]
    assert (big.temporal_factor, big.spatial_factor, big.latent_channels) == (4, 8, 16)


# ---- Pixel patches -----------------------------------------------------------------------


def test_pixel_patches_match_a_naive_loop_and_invert():
    from soraj.models.vae import patches_to_pixels, pixels_to_patches

    video = np.random.default_rng(0).normal(size=(2, 3, 8, 12, 3)).astype(np.float32)
    expected = np.zeros((2, 3, 4, 6, 12), np.float32)
    for row in range(4):
        for col in range(6):
            # Channels in (dy, dx, rgb) order: the patch's pixels row by row.
            block = video[:, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2, :]
            expected[:, :, row, col] = block.reshape(2, 3, 12)
    patches = np.asarray(pixels_to_patches(video, 2))
    np.testing.assert_array_equal(patches, expected)
    np.testing.assert_array_equal(np.asarray(patches_to_pixels(patches, 2)), video)


def test_pixel_patch_counts_in_the_spatial_factor_and_keeps_causality():
    cfg = VAE_PRESETS["tiny64"]
    assert (cfg.pixel_patch, cfg.spatial_factor, cfg.temporal_factor) == (2, 4, 4)
    assert latent_shape(cfg, 9, 64, 64) == (3, 16, 16, 8)
    video = _video(3, 9, size=16)
    params = VideoVAE(cfg).init(_key(0), video)
    mean, _ = _encode(cfg, params, video)
    assert mean.shape == (1, 3, 4, 4, 8)
    changed = video.at[:, 1:].set(_video(4, 8, size=16))  # frame 0 is encoded alone
    np.testing.assert_array_equal(_encode(cfg, params, changed)[0][:, :1], mean[:, :1])
    assert _decode(cfg, params, mean).shape == video.shape
    with pytest.raises(ValueError, match=r"pixel_patch must be one of \(1, 2, 4\), got 3"):
        VAEConfig(pixel_patch=3)
    with pytest.raises(ValueError, match=r"spatial factor of 32; allowed: \(4, 8, 16\)"):
        VAEConfig(
            pixel_patch=4,
            spatial_downsample=(True, True, True),
            channel_multipliers=(1,) * 4,
            temporal_downsample=(True, True, False),
        )


def test_frame_wise_vae_codes_each_frame_as_a_clip_of_its_own():
    """temporal_kernel 1 at temporal factor 1: the latents of a clip are the latents of each
    of its frames encoded alone, and so are the decoded frames."""
    cfg = VAE_PRESETS["p4-frames"]
    assert (cfg.temporal_factor, cfg.spatial_factor, cfg.temporal_kernel) == (1, 4, 1)
    video = _video(5, 4, size=16)
    params = VideoVAE(cfg).init(_key(0), video)
    mean, _ = _encode(cfg, params, video)
    assert mean.shape == (1, 4, 4, 4, 8)
    decoded = _decode(cfg, params, mean)
    for frame in range(4):
        alone, _ = _encode(cfg, params, video[:, frame : frame + 1])
        np.testing.assert_allclose(mean[:, frame : frame + 1], alone, atol=1e-5)
        np.testing.assert_allclose(
            decoded[:, frame : frame + 1], _decode(cfg, params, alone), atol=1e-5
        )
    with pytest.raises(ValueError, match=r"temporal_kernel must be one of \(1, 3\), got 2"):
        VAEConfig(temporal_kernel=2)
