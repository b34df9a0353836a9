"""Training checkpoints: retention, exact round trips, other meshes, interrupted saves, damaged
or mismatched checkpoints, and the refusal to save non-finite state."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from soraj import checkpoint, optim, sharding
from soraj.configs import t2v

TESTS = Path(__file__).parent
RACE_LOST = 3  # tests/checkpoint_kill_check.py: the save finished before it could be killed
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}


def run_script(script: str, *args, devices: int = 1, check: bool = True):
    env = dict(os.environ, **QUIET, PYTHONPATH=str(TESTS.parent))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    result = subprocess.run(
        [sys.executable, str(TESTS / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} {args} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    return result


def small_state(scale: float = 1.0) -> dict:
    return {
        "params": {"w": jnp.arange(12.0).reshape(3, 4) * scale, "b": jnp.full(5, float(scale))},
        "step": jnp.int32(3),
        "rng": jax.random.key(11),
    }


def abstract(tree):
    return jax.eval_shape(lambda: tree)


def saved(workdir, steps=(3,), state=None) -> None:
    manager = checkpoint.make_manager(workdir, keep=5, save_every=1)
    for step in steps:
        checkpoint.save_train_state(
            manager, step, state or small_state(step), {"next": step}, {"note": step}
        )
    manager.wait_until_finished()
    manager.close()


def open_manager(workdir):
    return checkpoint.make_manager(workdir, keep=5, save_every=1)


# ---- Retention ----


def test_keeps_the_last_n_plus_every_mth_step(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=2, save_every=1, keep_period=4)
    for step in range(1, 13):
        checkpoint.save_train_state(manager, step, small_state(), {"next": step}, {})
    manager.wait_until_finished()
    manager.close()
    # Last 2 of 1..12 are {11, 12}; multiples of 4 are {4, 8, 12}.
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8, 11, 12]
    assert open_manager(tmp_path).all_steps() == [4, 8, 11, 12]


def test_save_every_and_keep_without_keep_period(tmp_path):
    manager = checkpoint.make_manager(tmp_path, keep=3, save_every=3)
    written = [
        step
        for step in range(1, 13)
        if checkpoint.save_train_state(manager, step, small_state(), {"next": step}, {})
    ]
    manager.wait_until_finished()
    # Multiples of 3, plus the first save of a run that has none yet; the last 3 of those stay.
    assert written == [1, 3, 6, 9, 12]
    assert manager.all_steps() == [6, 9, 12]
    manager.close()


def test_manager_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="keep must be an integer >= 1, got 0"):
        checkpoint.make_manager(tmp_path, keep=0, save_every=1)
    with pytest.raises(ValueError, match="save_every must be an integer >= 1"):
        checkpoint.make_manager(tmp_path, keep=1, save_every=0)
    with pytest.raises(ValueError, match="keep_period must be 0"):
        checkpoint.make_manager(tmp_path, keep=1, save_every=1, keep_period=-4)


# ---- Exact round trips ----


def test_train_state_data_and_metadata_round_trip_bit_exactly(tmp_path):
    params = {"dense": {"kernel": jnp.linspace(-1, 1, 6).reshape(2, 3), "bias": jnp.ones(3)}}
    optimizer = optax.adamw(1e-2)
    state = optim.TrainState.create(params, optimizer, jax.random.split(jax.random.key(5))[1])
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    state = state.apply_gradients(grads, optimizer, ema_decay=0.9)  # non-trivial moments, EMA
    data_state = {"epoch": 1, "index": [4, 2], "shard": "a"}
    config = t2v.get_config("tiny")
    metadata = checkpoint.training_metadata(config, sharding.make_mesh())
    manager = checkpoint.make_manager(tmp_path, keep=2, save_every=1)
    checkpoint.save_train_state(manager, 1, state, data_state, metadata)
    manager.wait_until_finished()
    manager.close()

    manager = open_manager(tmp_path)  # a fresh manager, as a restarted process has
    restored, restored_data, step = checkpoint.restore_train_state(manager, abstract(state))
    assert (restored_data, step) == (data_state, 1)
    stored = checkpoint.restore_metadata(manager, 1)
    assert stored == metadata and stored["config"]["seed"] == config.seed
    assert stored["mesh"] == dict(sharding.make_mesh().shape) and stored["code_version"]
    assert type(restored) is optim.TrainState
    chex.assert_trees_all_equal(restored, state)  # typed keys compare by their key data
    assert restored.rng.dtype == state.rng.dtype  # still a typed threefry key, not uint32
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    np.testing.assert_array_equal(
        jax.random.normal(restored.rng, (4,)), jax.random.normal(state.rng, (4,))
    )
    with pytest.raises(ValueError, match=r"no complete checkpoint .*/2; saved steps: \[1\]"):
        checkpoint.restore_metadata(manager, 2)


def test_restores_onto_other_meshes(tmp_path):
    # Saved on a (4, 2) mesh of 8 fake devices, restored on (8, 1) in that process and on the
    # single device of a second process (through restore_or_init); see the script.
    assert "ok save" in run_script("checkpoint_mesh_check.py", "save", tmp_path, devices=8).stdout
    assert "ok restore" in run_script("checkpoint_mesh_check.py", "restore", tmp_path).stdout


def test_mesh_check_refuses_too_few_devices(tmp_path):
    result = run_script("checkpoint_mesh_check.py", "save", tmp_path, devices=2, check=False)
    assert result.returncode != 0 and "needs 8 devices, sees 2" in result.stderr


# ---- Interrupted saves ----


def test_a_save_killed_midway_is_never_used(tmp_path):
    for attempt in range(3):
        workdir = tmp_path / str(attempt)
        result = run_script("checkpoint_kill_check.py", workdir, check=False)
        if result.returncode != RACE_LOST:
            break
    assert result.returncode == -9, result.stderr[-2000:]  # died by SIGKILL, as intended
    # The kill really landed mid-save: step 2's temporary folder is there, half written.
    partial = sorted((workdir / "checkpoints").glob("2.orbax-checkpoint-tmp*"))
    assert partial and any(p.is_file() for p in partial[0].rglob("*")), result.stdout
    assert not (workdir / "checkpoints" / "2").exists()

    manager = open_manager(workdir)
    assert manager.latest_step() == 1 and manager.all_steps() == [1]
    big = jax.ShapeDtypeStruct((2048, 2048), jnp.float32)
    target = {"w": big, "v": big, "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state, data_state, step = checkpoint.restore_train_state(manager, target)
    assert (step, data_state, int(state["step"])) == (1, {"next": 1}, 1)
    assert np.all(np.asarray(state["w"]) == 1.0) and np.all(np.asarray(state["v"]) == -1.0)
    # The run goes on: saving step 2 again succeeds beside the leftover and is what loads.
    doubled = {"w": state["w"] * 2, "v": state["v"] * 2, "step": jnp.int32(2)}
    checkpoint.save_train_state(manager, 2, doubled, {"next": 2}, {})
    manager.wait_until_finished()
    state, _, step = checkpoint.restore_train_state(manager, target)
    assert step == 2 and np.all(np.asarray(state["w"]) == 2.0)
    manager.close()


# ---- Damaged or mismatched checkpoints ----


def _array_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("d/*") if p.is_file())


def _delete_data_item(step_dir):
    shutil.rmtree(step_dir / "data")


def _delete_array_files(step_dir):
    for path in _array_files(step_dir):
        path.unlink()


def _delete_state_tree_metadata(step_dir):
    (step_dir / "state" / "_METADATA").unlink()


def _truncate_array_files(step_dir):
    for path in _array_files(step_dir):
        os.truncate(path, path.stat().st_size // 2)


# A failed tensorstore read leaves a callback on orbax's already-closed event loop, which Python
# reports as an unraisable RuntimeError after the ValueError under test has been raised.
quiet_closed_loop = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@quiet_closed_loop
@pytest.mark.parametrize(
    "damage, message",
    [
        (_delete_data_item, r"3 is incomplete: item\(s\) \['data'\] missing"),
        (_delete_state_tree_metadata, r"3 is incomplete: item\(s\) \['state'\] missing or unread"),
        (_delete_array_files, r"3 could not be restored .*NOT_FOUND.*state/d/"),
        (_truncate_array_files, r"3 could not be restored .*OUT_OF_RANGE.*state/d/"),
    ],
)
def test_damaged_checkpoint_is_an_error_not_a_fresh_start(tmp_path, damage, message):
    saved(tmp_path)
    assert _array_files(tmp_path / "checkpoints" / "3")  # the layout the damage relies on
    damage(tmp_path / "checkpoints" / "3")
    manager = open_manager(tmp_path)
    with pytest.raises(ValueError, match=message):
        checkpoint.restore_train_state(manager, abstract(small_state()))

    def init_state(rng):
        return small_state() | {"rng": rng}

    with pytest.raises(ValueError, match=message):
        checkpoint.restore_or_init(manager, init_state, jax.random.key(0), None)


def test_damaged_latest_step_never_falls_back_silently(tmp_path):
    saved(tmp_path, steps=(2, 3))
    _delete_data_item(tmp_path / "checkpoints" / "3")
    with pytest.raises(ValueError, match="move that folder aside to resume from step 2"):
        checkpoint.restore_train_state(open_manager(tmp_path), abstract(small_state()))


def test_mismatched_shapes_and_dtypes_are_named(tmp_path):
    saved(tmp_path)
    manager = open_manager(tmp_path)
    other = small_state()
    other["params"] = {"w": jnp.zeros((4, 4)), "b": jnp.zeros(5, jnp.bfloat16), "c": jnp.ones(1)}
    pattern = (
        r"3 does not match .*\(3 differences\): missing params/c \(1,\); "
        r"params/w: stored \(3, 4\), expected \(4, 4\); "
        r"params/b: stored dtype float32, expected bfloat16"
    )
    with pytest.raises(ValueError, match=pattern):
        checkpoint.restore_train_state(manager, abstract(other))


def test_fresh_start_only_without_any_complete_checkpoint(tmp_path, capsys):
    def init_state(rng):
        return small_state(0.0) | {"rng": rng}

    manager = open_manager(tmp_path)  # no checkpoints folder at all
    state, data_state, step = checkpoint.restore_or_init(
        manager, init_state, jax.random.key(0), None
    )
    assert (data_state, step) == (None, 0)
    chex.assert_trees_all_equal(state, init_state(jax.random.key(0)))

    # Only an unfinished save of the first step: still a fresh start, and it says so.
    (tmp_path / "checkpoints" / "1.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    manager = open_manager(tmp_path)
    _, _, step = checkpoint.restore_or_init(manager, init_state, jax.random.key(0), None)
    assert step == 0 and "ignoring unfinished saves ['1.orbax-checkpoint-tmp']" in (
        capsys.readouterr().out
    )

    saved(tmp_path, steps=(4,), state=small_state(4.0))
    state, data_state, step = checkpoint.restore_or_init(
        open_manager(tmp_path), init_state, jax.random.key(0), None
    )
    assert (data_state, step) == ({"next": 4}, 4)
    chex.assert_trees_all_equal(state, small_state(4.0))


# ---- Refusing non-finite state ----


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_non_finite_state_is_never_checkpointed(tmp_path, bad):
    saved(tmp_path, steps=(2,))
    state = small_state()
    state["params"]["w"] = state["params"]["w"].at[1, 2].set(bad)
    state["opt"] = {"mu": jnp.array([0.0, bad], jnp.bfloat16)}
    manager = open_manager(tmp_path)
    # Leaves flatten in key order: opt/mu comes before params/w.
    with pytest.raises(FloatingPointError, match=r"step 3: state leaf opt/mu .*\(2 non-finite"):
        checkpoint.save_train_state(manager, 3, state, {"next": 3}, {})
    manager.wait_until_finished()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_json_items_are_checked_before_writing(tmp_path):
    manager = open_manager(tmp_path)
    with pytest.raises(ValueError, match="data_state must be JSON-serialisable"):
        checkpoint.save_train_state(manager, 1, small_state(), {"raw": b"\x00"}, {})
    manager.wait_until_finished()
    assert list((tmp_path / "checkpoints").iterdir()) == []
