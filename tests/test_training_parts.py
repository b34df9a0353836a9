"""The trainers' parts: optimizer schedule and EMA, the input pipeline, the mesh (exports:
tests/test_exports.py)."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from soraj import checkpoint, optim, sharding
from soraj.data.pipeline import batch_iterator, caption_dropout
from soraj.data.shapes import ShapesSource


def optim_config(**overrides):
    fields = dict(
        learning_rate=1e-3,
        warmup_steps=10,
        decay_steps=0,
        weight_decay=0.0,
        b1=0.9,
        b2=0.99,
        grad_clip=1.0,
    )
    return ml_collections.ConfigDict({**fields, **overrides})


def test_schedule_warmup_then_constant_or_cosine():
    constant = optim.learning_rate_schedule(optim_config())
    np.testing.assert_allclose(
        [constant(0), constant(5), constant(10), constant(1000)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6
    )
    cosine = optim.learning_rate_schedule(optim_config(decay_steps=100))
    # Closed form of cosine decay to alpha = 0.1, halfway through the decay.
    halfway = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    np.testing.assert_allclose(cosine(10 + 50), halfway, rtol=1e-5)


def test_ema_matches_closed_form():
    ema = {"w": jnp.zeros(3)}
    for _ in range(5):
        ema = optim.ema_update(ema, {"w": jnp.ones(3)}, decay=0.9)
    chex.assert_trees_all_close(ema["w"], jnp.full(3, 1 - 0.9**5), rtol=1e-6)


def test_nonfinite_gradients_are_skipped():
    optimizer = optim.make_optimizer(optim_config(warmup_steps=0))
    state = optim.TrainState.create({"w": jnp.ones(2)}, optimizer, jax.random.key(0))
    state = state.apply_gradients({"w": jnp.array([jnp.nan, 1.0])}, optimizer, 0.9)
    chex.assert_trees_all_equal(state.params, {"w": jnp.ones(2)})
    state = state.apply_gradients({"w": jnp.array([1.0, 1.0])}, optimizer, 0.9)
    assert np.all(np.asarray(state.params["w"]) < 1.0)


def test_pipeline_is_deterministic_and_resumes():
    source = ShapesSource(32, 1, 16, 16, seed=3)
    first = batch_iterator(source, 4, seed=11, random_transform=caption_dropout(0.5))
    batches = [next(first) for _ in range(3)]
    state = first.get_state()
    after = [next(first) for _ in range(3)]
    again = batch_iterator(source, 4, seed=11, random_transform=caption_dropout(0.5))
    for expected in batches:
        got = next(again)
        np.testing.assert_array_equal(got["video"], expected["video"])
        np.testing.assert_array_equal(got["caption"], expected["caption"])
    resumed = batch_iterator(source, 4, seed=11, random_transform=caption_dropout(0.5))
    resumed.set_state(state)
    for expected in after:
        np.testing.assert_array_equal(next(resumed)["index"], expected["index"])
    dropped = [c for b in batches + after for c in b["caption"] if c == ""]
    assert 0 < len(dropped) < 24  # dropout happened, and not to everything


def test_pipeline_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fewer than one batch"):
        batch_iterator(ShapesSource(2, 1, 16, 16), 4, seed=0)
    with pytest.raises(ValueError, match="caption dropout"):
        caption_dropout(1.5)


def test_mesh_sizes_must_multiply_to_device_count():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.size == jax.device_count()
    bad = ml_collections.ConfigDict({"data": 3, "fsdp": 1, "tensor": 1, "context": 1})
    if jax.device_count() % 3:
        with pytest.raises(ValueError, match="devices"):
            sharding.make_mesh(bad)


def test_train_checkpoint_resume_and_mismatch(tmp_path):
    state = {"params": {"w": jnp.arange(4.0)}, "step": jnp.array(3)}
    manager = checkpoint.make_manager(tmp_path, keep=2, save_every=1)
    checkpoint.save_train_state(manager, 3, state, {"next_index": 5}, {"note": "x"}, force=True)
    manager.wait_until_finished()
    restored, data_state, step = checkpoint.restore_train_state(
        manager, jax.eval_shape(lambda: state)
    )
    chex.assert_trees_all_equal(restored, state)
    assert (data_state, step) == ({"next_index": 5}, 3)
    other = {"params": {"w": jnp.zeros(5), "b": jnp.zeros(1)}, "step": jnp.array(0)}
    with pytest.raises(ValueError, match=r"missing params/b .*params/w: stored \(4,\)"):
        checkpoint.restore_train_state(manager, jax.eval_shape(lambda: other))
    manager.close()
