"""Sharding: the mesh from config, and (in a subprocess with 8 fake CPU devices) the sharded
train step against the one-device step, the rule tables' PartitionSpecs and no recompiles."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import pytest

from soraj import sharding

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
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run(
        [sys.executable, str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
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
