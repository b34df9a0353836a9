"""Chunked causal encode/decode equals the whole-clip pass (float32, 1e-5), also for a VAE with
pixel patches (the "tiny64-t2" preset)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_vae_params import random_vae_params

from soraj.models.vae import VAE_PRESETS, VAEConfig, VideoVAE
from soraj.models.vae_chunked import decode_chunked, encode_chunked

# Mid attention on, and one level that halves space but not time: every layer kind is chunked.
CONFIG = VAEConfig(
    base_channels=8,
    channel_multipliers=(1, 2, 2),
    latent_channels=4,
    temporal_downsample=(True, False),
    spatial_downsample=(True, True),
    mid_attention=True,
)


@pytest.fixture(scope="module")
def model_and_params():
    model = VideoVAE(CONFIG)
    video = jax.random.uniform(jax.random.key(0), (1, 17, 16, 16, 3), minval=-1, maxval=1)
    params = model.init(jax.random.key(1), video[:, :3])["params"]
    # Random (not zero) biases and larger weights, so every path carries signal.
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(p.size), p.shape), params
    )
    return model, params, video


@pytest.fixture(scope="module")
def patched_model_and_params():
    """The "tiny64-t2" preset (2×2 pixel patches, ft = 2, fs = 4) with random params."""
    model = VideoVAE(VAE_PRESETS["tiny64-t2"])
    noise = np.random.default_rng(2)
    video = noise.uniform(-1, 1, (1, 17, 16, 16, 3)).astype(np.float32)
    return model, random_vae_params(model, video[:, :3], noise), jnp.asarray(video)


@pytest.fixture(params=["mid_attention", "tiny64-t2"])
def vae(request):
    """Both VAEs take 17×16×16 clips in chunks of 2, 4, 8 pixel frames (ft = 2)."""
    name = "patched_model_and_params" if request.param == "tiny64-t2" else "model_and_params"
    return request.getfixturevalue(name)


@pytest.mark.parametrize("chunk", [2, 4, 8])
def test_encode_chunked_equals_whole(vae, chunk):
    model, params, video = vae
    whole = model.apply({"params": params}, video, method=VideoVAE.encode)
    chunked = encode_chunked(model, params, video, chunk)
    chex.assert_trees_all_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_decode_chunked_equals_whole(vae, chunk):
    model, params, video = vae
    latents = model.apply({"params": params}, video, method=VideoVAE.encode)[0]  # (1, 9, ...)
    whole = model.apply({"params": params}, latents, method=VideoVAE.decode)
    chunked = decode_chunked(model, params, latents, chunk)
    chex.assert_shape(chunked, (1, 17, 16, 16, 3))
    chex.assert_trees_all_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_bad_chunk(model_and_params):
    model, params, video = model_and_params
    with pytest.raises(ValueError, match="multiple of the temporal factor 2"):
        encode_chunked(model, params, video, 3)
    with pytest.raises(ValueError, match="positive number of latent frames"):
        decode_chunked(model, params, jnp.zeros((1, 3, 4, 4, 4)), 0)
