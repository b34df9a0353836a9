"""Saves a sharded state on a (4, 2) mesh and restores it on other meshes (run by
tests/test_checkpoint.py in subprocesses with fake CPU devices).

    checkpoint_mesh_check.py save WORKDIR      # 8 devices: save on (4, 2), restore on (8, 1)
    checkpoint_mesh_check.py restore WORKDIR   # 1 device: restore_or_init onto that device, and
                                               # a restore with no target shardings

Each mode checks the restored values against the numpy arrays it built the state from, and that
every restored array carries exactly the sharding it was asked for, then prints "ok <mode>".
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from soraj import checkpoint

# Partition specs of the saved state on the (data=4, fsdp=2) mesh, and on the (data=8, fsdp=1)
# mesh it is restored onto: each 2-D array is cut differently on the two.
SAVE_SPECS = {"a": P("fsdp", None), "b": P(None, "data"), "c": P("data", "fsdp")}
RESTORE_SPECS = {"a": P("data", None), "b": P(None, "fsdp"), "c": P(None, "data")}
SHAPES = {"a": (8, 6), "b": (4, 8), "c": (8, 8)}
STEP, KEY_SEED = 7, 1234


def reference_arrays() -> dict:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def shardings(mesh: Mesh, specs: dict) -> dict:
    replicated = NamedSharding(mesh, P())
    params = {name: NamedSharding(mesh, spec) for name, spec in specs.items()}
    return {"params": params, "step": replicated, "rng": replicated}


def make_state(target: dict) -> dict:
    arrays = reference_arrays()
    return {
        "params": {n: jax.device_put(a, target["params"][n]) for n, a in arrays.items()},
        "step": jax.device_put(np.int32(STEP), target["step"]),
        "rng": jax.device_put(jax.random.key(KEY_SEED), target["rng"]),
    }


def check_restored(state: dict, target: dict, where: str) -> None:
    for name, expected in reference_arrays().items():
        restored = state["params"][name]
        np.testing.assert_array_equal(np.asarray(restored), expected, err_msg=f"{where} {name}")
        if restored.sharding != target["params"][name]:
            raise AssertionError(f"{where} {name}: {restored.sharding} != target")
        # The shards each device holds are the ones the target spec cuts, not the saved ones.
        want = target["params"][name].shard_shape(expected.shape)
        got = {shard.data.shape for shard in restored.addressable_shards}
        if got != {want}:
            raise AssertionError(f"{where} {name}: shard shapes {got}, expected {want}")
    if int(state["step"]) != STEP or state["step"].sharding != target["step"]:
        raise AssertionError(f"{where} step: {state['step']} on {state['step'].sharding}")
    key = state["rng"]
    if key.dtype != jax.random.key(0).dtype or key.sharding != target["rng"]:
        raise AssertionError(f"{where} rng: {key.dtype} on {key.sharding}")
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(key)),
        np.asarray(jax.random.key_data(jax.random.key(KEY_SEED))),
    )


def abstract(target: dict) -> dict:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return {
        "params": {
            name: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=target["params"][name])
            for name, shape in SHAPES.items()
        },
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=target["step"]),
        "rng": jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=target["rng"]),
    }


def one_device_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))


def save_then_restore_on_8_by_1(workdir: str) -> None:
    if jax.device_count() < 8:
        raise SystemExit(f"needs 8 devices, sees {jax.device_count()}: set XLA_FLAGS")
    devices = np.array(jax.devices()[:8])
    saved_on = shardings(Mesh(devices.reshape(4, 2), ("data", "fsdp")), SAVE_SPECS)
    manager = checkpoint.make_manager(workdir, keep=2, save_every=1)
    checkpoint.save_train_state(manager, STEP, make_state(saved_on), {"next": 3}, {"m": 1})
    manager.wait_until_finished()
    target = shardings(Mesh(devices.reshape(8, 1), ("data", "fsdp")), RESTORE_SPECS)
    state, data_state, step = checkpoint.restore_train_state(manager, abstract(target))
    assert (data_state, step) == ({"next": 3}, STEP), (data_state, step)
    check_restored(state, target, "(8, 1) mesh")
    manager.close()


def restore_on_one_device(workdir: str) -> None:
    if jax.device_count() != 1:
        raise SystemExit(f"needs exactly 1 device, sees {jax.device_count()}")
    target = shardings(one_device_mesh(), RESTORE_SPECS)

    def init_state(rng):  # what a fresh run would build; the checkpoint must win over it
        return {
            "params": {n: jnp.zeros(s, jnp.float32) for n, s in SHAPES.items()},
            "step": jnp.zeros((), jnp.int32),
            "rng": rng,
        }

    manager = checkpoint.make_manager(workdir, keep=2, save_every=1)
    state, data_state, step = checkpoint.restore_or_init(
        manager, init_state, jax.random.key(0), target
    )
    assert (data_state, step) == ({"next": 3}, STEP), (data_state, step)
    check_restored(state, target, "1 device")
    # A target without shardings lands on the default device, not on the saving run's devices.
    unplaced = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract(target))
    state, _, _ = checkpoint.restore_train_state(manager, unplaced)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    check_restored(state, jax.tree.map(lambda _: default, target), "1 device, unplaced")
    manager.close()


if __name__ == "__main__":
    mode, workdir = sys.argv[1:3]
    {"save": save_then_restore_on_8_by_1, "restore": restore_on_one_device}[mode](workdir)
    print(f"ok {mode}")
