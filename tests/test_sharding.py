"""Sharding: the mesh from config; in a subprocess with 8 fake CPU devices, the sharded train
step against the one-device step, the rule tables' PartitionSpecs and no recompiles; and the
DiT's scale-out switches (scan over blocks, remat) against the plain model."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from fake_devices import run_check

from soraj import sharding
from soraj.models.dit import DiT, DiTConfig

CHECK_SCRIPT = Path(__file__).with_name("sharded_step_check.py")


def test_mesh_sizes_must_multiply_to_the_device_count():
    devices = jax.devices()[:1]
    config = ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=1, context=1))
    with pytest.raises(ValueError, match="device count|devices"):
        sharding.make_mesh(config, devices)
    config.data = -1
    mesh = sharding.make_mesh(config, devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1, "context": 1}


def test_sharded_step_on_eight_fake_devices():
    result = run_check(CHECK_SCRIPT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "ALL OK" in result.stdout


def test_check_script_refuses_fewer_than_eight_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "needs 8 devices, found 2" in result.stderr


# ---- Scale-out switches of the DiT: scan over blocks, remat ----

SMALL = DiTConfig(width=16, depth=2, num_heads=2, latent_channels=2, text_width=8)


def _small_inputs(rows=2, length=12, segments=2, text_tokens=3):
    rng = np.random.default_rng(0)
    segment_ids = np.array([[1] * 6 + [2] * 4 + [0] * 2] * rows, np.int32)
    return (
        rng.normal(size=(rows, length, SMALL.patch_features)).astype(np.float32),
        rng.uniform(size=(rows, length)).astype(np.float32),
        rng.integers(0, 3, size=(rows, length, 3)).astype(np.int32),
        segment_ids,
        rng.normal(size=(rows, segments, text_tokens, SMALL.text_width)).astype(np.float32),
        rng.random((rows, segments, text_tokens)) > 0.3,
    )


def _random_params(config, inputs):
    """Init, then random values everywhere: adaLN-Zero would hide the blocks otherwise."""
    params = nn.unbox(jax.jit(DiT(config).init)(jax.random.key(0), *inputs))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        treedef, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def _stacked(params, depth):
    """Unscanned params → the scanned layout: block_i's leaves stacked on a leading axis."""
    blocks = [params.pop(f"block_{i}") for i in range(depth)]
    return dict(params, blocks=jax.tree.map(lambda *xs: jnp.stack(xs), *blocks))


def _apply(config, params, inputs):
    apply = jax.jit(DiT(config).apply, static_argnames="max_segment_tokens")
    return apply({"params": params}, *inputs, max_segment_tokens=6)


def test_scanned_blocks_equal_unrolled_blocks():
    inputs = _small_inputs()
    params = _random_params(SMALL, inputs)
    unrolled = _apply(SMALL, params, inputs)
    scanned_config = dataclasses.replace(SMALL, scan_blocks=True)
    scanned = _apply(scanned_config, _stacked(dict(params), SMALL.depth), inputs)
    assert float(jnp.abs(unrolled).max()) > 0.1  # the blocks do something
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-6)
    # The scanned model's own init has the same layout, with "layers" first in its names.
    boxed = jax.eval_shape(DiT(scanned_config).init, jax.random.key(0), *inputs)["params"]
    kernel = boxed["blocks"]["mlp"]["Dense_0"]["kernel"]
    assert kernel.names == ("layers", "embed", "mlp")
    assert kernel.value.shape == (SMALL.depth, SMALL.width, 4 * SMALL.width)  # (layers, D, 4D)


def test_remat_changes_neither_values_nor_gradients():
    inputs = _small_inputs()
    params = _random_params(SMALL, inputs)

    def loss_and_grads(config, p):
        loss = lambda p: jnp.sum(jnp.square(_apply(config, p, inputs)))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(p)

    want_loss, want_grads = loss_and_grads(SMALL, params)
    for scan_blocks, policy in ((False, "full"), (True, "dots_saveable")):
        config = dataclasses.replace(SMALL, scan_blocks=scan_blocks, remat=policy)
        stacked = _stacked(dict(params), SMALL.depth) if scan_blocks else params
        got_loss, got_grads = loss_and_grads(config, stacked)
        if scan_blocks:
            want = _stacked(dict(want_grads), SMALL.depth)
        else:
            want = want_grads
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
        # Recomputed activations fuse differently, so gradients agree to float32 rounding
        # of sums of terms as large as the leaf's largest entry, not of each small entry.
        for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5 * float(np.abs(w).max()))


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat='everything'; allowed: none, full, dots_saveable"):
        dataclasses.replace(SMALL, remat="everything")
