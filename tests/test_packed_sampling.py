"""Packed sampling: requests of different shapes (wide, tall, longer) solved in one packed call
each equal the same request solved alone by `generate.sample_tokens`, which packs nothing."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj.diffusion.timesteps import TimeShift, shift_timesteps
from soraj.generate import Generator, single_request_rows
from soraj.generate_packed import request_noise, sample_many_tokens
from soraj.models import patching
from soraj.models.conditioning import TextConfig
from soraj.models.dit import DIT_PRESETS, DiT
from soraj.models.latent_codec import LatentCodec
from soraj.models.vae import VAE_PRESETS
from soraj.sample_rows import sample_rows

CONFIG = dataclasses.replace(DIT_PRESETS["tiny"], depth=2)  # patch (1, 2, 2)
TEXT_CONFIG = TextConfig("minilm")  # states pass through unchanged: no encoder weights needed
M, STEPS, GUIDANCE = 6, 3, 3.0
# Latent (T, H, W): a wide, a tall, a longer clip and a square image; grids of 4, 8, 12, 4
# tokens. With L=16, S=3 first fit puts requests 0, 1, 3 in row 0 and request 2 alone in row 1
# (with 4 padding tokens), so both neighbours and padding are exercised.
LATENT_SHAPES = [(1, 2, 8), (2, 8, 2), (3, 4, 4), (1, 4, 4)]
GRIDS = [patching.grid_shape(s, CONFIG.patch_size) for s in LATENT_SHAPES]
SEEDS = [11, 12, 13, 14]
L, S = 16, 3


@functools.cache
def _random_params():
    """Init, then give every leaf random values: adaLN-Zero would make the output exactly 0."""
    n, p = 4, CONFIG.patch_features
    inputs = (
        jnp.zeros((1, n, p)),
        jnp.zeros((1, n)),
        jnp.zeros((1, n, 3), jnp.int32),
        jnp.ones((1, n), jnp.int32),
        jnp.zeros((1, 1, M, CONFIG.text_width)),
        jnp.ones((1, 1, M), bool),
    )
    params = nn.unbox(jax.jit(DiT(CONFIG).init)(jax.random.key(0), *inputs))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [0.05 * jax.random.normal(k, x.shape) + x for k, x in zip(keys, leaves, strict=True)]
    return {"dit": jax.tree.unflatten(treedef, leaves)}


def _texts():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(len(GRIDS), M, CONFIG.text_width)).astype(np.float32)
    text_mask = np.arange(M)[None] < np.array([2, 3, 4, 5])[:, None]  # (R, M)
    null_text = rng.normal(size=(M, CONFIG.text_width)).astype(np.float32)
    null_mask = np.arange(M) < 1
    return text, text_mask, null_text, null_mask


# L=40 holds all four requests in one row; its largest has 12 tokens, so self-attention runs
# in 36-key windows (DiT max_segment_tokens) rather than over the 40-token row.
@pytest.mark.parametrize("row_length, max_segments", [(L, S), (40, 4)])
def test_each_packed_sample_equals_the_same_sample_alone(row_length, max_segments):
    text, text_mask, null_text, null_mask = _texts()
    dit, params = DiT(CONFIG), _random_params()
    time_shift = TimeShift(shift_by_tokens=True, base_tokens=4, max_tokens=12, max_shift=2.0)
    packed = sample_many_tokens(
        dit,
        params,
        TEXT_CONFIG,
        time_shift,
        text,
        text_mask,
        null_text,
        null_mask,
        GRIDS,
        SEEDS,
        steps=STEPS,
        guidance=GUIDANCE,
        row_length=row_length,
        max_segments=max_segments,
    )
    worst = 0.0
    for i, (grid, seed) in enumerate(zip(GRIDS, SEEDS, strict=True)):
        num_tokens = int(np.prod(grid))
        conditioning = dict(
            text=text[i][None, None],
            text_mask=text_mask[i][None, None],
            null_text=null_text,
            null_mask=null_mask,
        )
        noise = request_noise(seed, 1, num_tokens, CONFIG.patch_features)
        rows = single_request_rows(noise, grid, time_shift.for_tokens(num_tokens), conditioning)
        alone = sample_rows(
            params,
            rows,
            jnp.float32(GUIDANCE),
            dit=dit,
            text_config=TEXT_CONFIG,
            num_steps=STEPS,
        )[0]  # (N, P)
        assert packed[i].shape == alone.shape == (int(np.prod(grid)), CONFIG.patch_features)
        # Guided sampling moved far from the noise: the comparison is not of two zeros.
        noise = jax.random.normal(jax.random.key(seed), (1, *alone.shape))[0]
        assert np.abs(np.asarray(alone) - np.asarray(noise)).max() > 0.1
        worst = max(worst, float(np.abs(packed[i] - np.asarray(alone)).max()))
    print(f"max |packed - alone| over {len(GRIDS)} requests: {worst:.2e}")
    assert worst <= 1e-5


def _generator():
    """A Generator whose shape checks work but which cannot encode text or decode: a request
    that gets past the checks fails loudly, so a ValueError proves nothing ran first."""
    codec = LatentCodec(VAE_PRESETS["tiny"], None, np.zeros(8), np.ones(8))
    return Generator(codec, DiT(CONFIG), None, TEXT_CONFIG, text_encoder=None)


@pytest.mark.parametrize(
    "shapes, kwargs, message",
    [
        ([(9, 32, 32), (6, 32, 32)], {}, r"shape 1 \(6, 32, 32\): --frames must be 1 \+ 4·k"),
        ([(9, 32, 32), (9, 36, 32)], {}, r"shape 1 .*--height must be a positive multiple of 8"),
        ([(9, 32, 12)], {}, r"shape 0 .*--width must be a positive multiple of 8"),
        ([(9, 32, 32), (9, 32, 64)], {"row_length": 48}, r"request 1 .* 96 tokens.*row_length=48"),
        ([(9, 32, 32)], {"max_segments": -1}, r"max_segments=-1 must"),
        ([(9, 32, 32)], {"steps": 0}, r"steps must be a Python int >= 1"),
        ([(9, 32)], {}, r"shape 0 must be \(frames, height, width\)"),
    ],
)
def test_bad_shapes_are_refused_before_any_work(shapes, kwargs, message):
    prompts = ["a red ball"] * len(shapes)
    with pytest.raises(ValueError, match=message):
        _generator().generate_many(prompts, shapes, **kwargs)


def test_mismatched_counts_are_refused():
    with pytest.raises(ValueError, match="2 prompts, 1 shapes and 2 seeds"):
        _generator().generate_many(["a", "b"], [(9, 32, 32)])


# ---- Through the Generator ----


class _LatentsOut(LatentCodec):
    """A codec with the tiny VAE's geometry whose decode returns the latents themselves, so the
    Generator's outputs can be compared token for token without training or running a VAE."""

    def __init__(self):
        super().__init__(VAE_PRESETS["tiny"], None, np.zeros(8), np.ones(8))

    def decode(self, params, latents):
        return latents


class _TableEncoder:
    """Host text encoder mapping each prompt to fixed states: "" to the null text."""

    def __init__(self, prompts):
        text, text_mask, null_text, null_mask = _texts()
        self.table = {p: (text[i], text_mask[i]) for i, p in enumerate(prompts)}
        self.table[""] = (null_text, null_mask)

    def encode(self, prompts):
        text, mask = zip(*(self.table[p] for p in prompts), strict=True)
        return np.stack(text), np.stack(mask)


def test_generate_many_equals_one_call_per_prompt():
    prompts = ["wide", "tall", "longer", "square"]
    # The tiny VAE (factors 4 in time and space) maps these to LATENT_SHAPES.
    shapes = [(1, 8, 32), (5, 32, 8), (9, 16, 16), (1, 16, 16)]
    generator = Generator(
        _LatentsOut(), DiT(CONFIG), _random_params(), TEXT_CONFIG, _TableEncoder(prompts)
    )
    videos = generator.generate_many(
        prompts, shapes, SEEDS, steps=STEPS, guidance=GUIDANCE, row_length=L, max_segments=S
    )
    for i, prompt in enumerate(prompts):
        alone = generator([prompt], *shapes[i], seed=SEEDS[i], steps=STEPS, guidance=GUIDANCE)[0]
        assert videos[i].shape == alone.shape == (*LATENT_SHAPES[i], CONFIG.latent_channels)
        np.testing.assert_allclose(videos[i], alone, rtol=0, atol=1e-5)


def test_generator_samples_on_the_time_grid_training_shifted():
    """A model trained with shift s samples on the grid shifted by s: the Generator's output
    equals a plain Euler loop over shift_timesteps(·, s), written out here, and not the
    unshifted one."""
    prompts, shape, seed = ["wide"], (1, 8, 32), 5
    grid = GRIDS[0]
    dit, params = DiT(CONFIG), _random_params()
    text, text_mask, null_text, null_mask = _texts()
    coords = jnp.broadcast_to(patching.patch_coords(grid), (2, int(np.prod(grid)), 3))
    segment_ids = jnp.ones(coords.shape[:2], jnp.int32)
    both_text = jnp.stack([text[0], null_text])[:, None]  # (2, 1, M, E)
    both_mask = jnp.stack([text_mask[0], null_mask])[:, None]

    def guided_velocity(x, t):
        x2, t2 = jnp.concatenate([x, x]), jnp.full((2, x.shape[1]), t)
        v = dit.apply({"params": params["dit"]}, x2, t2, coords, segment_ids, both_text, both_mask)
        return v[1:] + GUIDANCE * (v[:1] - v[1:])

    def by_hand(shift):
        x = request_noise(seed, 1, int(np.prod(grid)), CONFIG.patch_features)
        times = shift_timesteps(jnp.linspace(1.0, 0.0, STEPS + 1), shift)
        for k in range(STEPS):
            x = x + (times[k + 1] - times[k]) * guided_velocity(x, times[k])
        return np.asarray(x[0])

    for shift in (3.0, 1.0):
        generator = Generator(
            _LatentsOut(),
            dit,
            params,
            TEXT_CONFIG,
            _TableEncoder(prompts),
            time_shift=TimeShift(shift=shift),
        )
        video = generator(prompts, *shape, seed=seed, steps=STEPS, guidance=GUIDANCE)[0]
        tokens = patching.patchify(jnp.asarray(video), CONFIG.patch_size)[0]
        np.testing.assert_allclose(tokens, by_hand(shift), rtol=0, atol=1e-5)
    assert np.abs(by_hand(3.0) - by_hand(1.0)).max() > 1e-2  # the shift matters here
    assert set(generator.sampler.timings) == {
        "compile_seconds",
        "sampling_seconds",
        "seconds_per_step",
    }
