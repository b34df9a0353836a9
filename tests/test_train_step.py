"""The DiT train step on a packed batch: pure, and training the byte encoder when it is the
text encoder (its params sit beside the DiT's and get gradients through cross-attention)."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from soraj import optim
from soraj.configs import t2v
from soraj.generate import init_params
from soraj.models.conditioning import TextConfig, segment_inputs
from soraj.models.dit import DiT, DiTConfig
from soraj.train import train_step


def packed_batch(text_encoder, captions, tokens=6, features=8):
    rng = np.random.default_rng(0)
    text, text_mask = segment_inputs(text_encoder, captions)
    b = len(captions)
    return {
        "latents": rng.normal(size=(b, tokens, features)).astype(np.float32),
        "coords": np.tile(
            np.stack([np.zeros(tokens), np.arange(tokens) // 3, np.arange(tokens) % 3], -1)[None],
            (b, 1, 1),
        ).astype(np.int32),
        "segment_ids": np.ones((b, tokens), np.int32),
        "cond_mask": np.zeros((b, tokens), bool),
        "grid": np.tile(np.array([[[1, 2, 3]]], np.int32), (b, 1, 1)),
        "text": text,
        "text_mask": text_mask,
    }


def test_byte_encoder_trains_with_the_dit():
    config = t2v.get_config("tiny")
    config.text = ml_collections.ConfigDict(
        dict(encoder="bytes", max_tokens=16, byte_width=32, byte_depth=1, byte_heads=2)
    )
    config.optim.warmup_steps = 0
    text = TextConfig(**config.text)
    dit = DiT(
        DiTConfig(
            width=32,
            depth=1,
            num_heads=2,
            patch_size=(1, 1, 1),
            latent_channels=8,
            text_width=text.width,
        )
    )
    optimizer = optim.make_optimizer(config.optim)
    params = init_params(dit, text, jax.random.key(0))
    assert set(params) == {"dit", "text"}
    state = optim.TrainState.create(params, optimizer, jax.random.key(1))
    batch = packed_batch(text.host_encoder(), ["a red circle", "a blue square"])
    chex.assert_shape(batch["text"], (2, 1, 16))  # byte ids, not states
    step = jax.jit(
        functools.partial(train_step, dit=dit, text=text, optimizer=optimizer, config=config)
    )
    # adaLN-Zero and the zero-initialised cross-attention output block the text path at step 0;
    # after a few steps the byte encoder's params must have moved.
    new_state = state
    for _ in range(3):
        new_state, metrics = step(new_state, batch, jax.random.key(2))
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), state.params["text"], new_state.params["text"]
    )
    assert max(jax.tree.leaves(moved)) > 0


def test_timestep_shift_settings_reach_the_timestep_draw(monkeypatch):
    from soraj import train

    config = t2v.get_config("tiny")
    anchors = dict(shift=2.0, base_tokens=4, base_shift=1.5, max_tokens=64, max_shift=5.0)
    config.diffusion.update(shift_by_tokens=True, **anchors)
    text = TextConfig(encoder="bytes", max_tokens=16, byte_width=32, byte_depth=1, byte_heads=2)
    dit_config = DiTConfig(width=32, depth=1, num_heads=2, patch_size=(1, 1, 1), latent_channels=8)
    dit = DiT(dataclasses.replace(dit_config, text_width=text.width))
    params = init_params(dit, text, jax.random.key(0))
    seen = {}
    draw = train.per_segment_timesteps

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return draw(*args, **kwargs)

    monkeypatch.setattr(train, "per_segment_timesteps", spy)
    batch = packed_batch(text.host_encoder(), ["a red circle"])
    loss, _ = train.dit_loss(
        params, batch, jax.random.key(1), dit=dit, text=text, diffusion=config.diffusion
    )
    assert np.isfinite(float(loss))
    assert seen["shift_by_tokens"] is True
    assert {k: seen[k] for k in anchors} == anchors
