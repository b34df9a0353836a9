"""Fault tolerance of `soraj train`, end to end: a run killed after a save and restarted, and a
run preempted by SIGTERM and restarted, give the same per-step losses and final params as an
uninterrupted run, bit for bit; non-finite steps are skipped, counted, and stop the run after
config.max_nonfinite_steps without a non-finite state ever being saved."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from soraj import checkpoint, dit_data, train
from soraj.configs import t2v
from soraj.data.shapes import FPS as SHAPES_FPS
from soraj.fault_tolerance import PREEMPTED_EXIT_CODE

VAE_DIR = "experiments/shapes/checkpoint/vae"
TOTAL_STEPS = 12
# Small enough that a step takes milliseconds: 8-token clips packed 4 to a 32-token row.
OVERRIDES = {
    "vae_checkpoint": VAE_DIR,
    "data.num_frames": 5,
    "data.height": 16,
    "data.width": 16,
    "data.num_clips": 64,
    "data.row_length": 32,
    "data.max_segments": 4,
    "data.token_budget": 32,
    "batch_size": 2,
    "model.width": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "text.encoder": "bytes",
    "text.byte_width": 32,
    "text.byte_depth": 1,
    "text.byte_heads": 2,
    "optim.warmup_steps": 2,
    "total_steps": TOTAL_STEPS,
    "log_every": 1,
    "sample_every": 0,
}


def make_config(**changes):
    config = t2v.get_config("tiny")
    for key, value in {**OVERRIDES, **changes}.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def launch(workdir: Path, **changes) -> subprocess.Popen:
    """`soraj train` in its own process, with OVERRIDES plus changes as --config flags."""
    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **changes}.items()]
    command = [sys.executable, "-m", "soraj", "train", "--config=soraj/configs/t2v.py:tiny"]
    return subprocess.Popen(
        [*command, f"--workdir={workdir}", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting on the run")
        time.sleep(0.02)


def losses(workdir: Path) -> list[tuple[int, float]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines)]


def logged_steps(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Run A: 12 steps without interruption."""
    workdir = tmp_path_factory.mktemp("straight")
    state = train.train_and_evaluate(make_config(save_every=4), workdir)
    return workdir, state


def test_a_shapes_run_records_the_shapes_frame_rate(straight_run):
    workdir, _ = straight_run
    stored = json.loads((workdir / "export" / "dit" / "config.json").read_text())
    assert stored["trained_on"]["fps"] == SHAPES_FPS == 8  # config.data.fps left unset
    assert json.loads((workdir / "config.json").read_text())["data"]["fps"] == 8.0


def test_killed_after_a_save_then_restarted_equals_the_straight_run(straight_run, tmp_path):
    workdir_a, state_a = straight_run
    run = launch(tmp_path, save_every=5)
    try:
        wait_for(lambda: (tmp_path / "checkpoints" / "5").is_dir(), run)
        run.kill()  # SIGKILL: no handler runs, the way a lost machine ends
        run.wait(timeout=30)
    finally:
        run.kill()
    killed_at = logged_steps(tmp_path)
    resumed_from = checkpoint.make_manager(tmp_path, 2, 5).latest_step()
    assert 5 <= resumed_from < TOTAL_STEPS
    state_b = train.train_and_evaluate(make_config(save_every=5), tmp_path)
    # Steps past the checkpoint that the killed run logged were dropped and run again.
    assert killed_at >= resumed_from
    assert losses(tmp_path) == losses(workdir_a)
    assert [step for step, _ in losses(tmp_path)] == list(range(1, TOTAL_STEPS + 1))
    assert_same_params(state_b.params, state_a.params)
    assert_same_params(state_b.ema_params, state_a.ema_params)


def test_sigterm_saves_exits_75_and_the_same_command_continues(straight_run, tmp_path):
    workdir_a, state_a = straight_run
    run = launch(tmp_path, save_every=1000)
    try:
        wait_for(lambda: logged_steps(tmp_path) >= 3, run)
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == PREEMPTED_EXIT_CODE, output
    saved = checkpoint.make_manager(tmp_path, 2, 1000).latest_step()
    assert 3 <= saved < TOTAL_STEPS
    assert f"checkpoint of step {saved} saved" in output
    state_c = train.train_and_evaluate(make_config(save_every=1000), tmp_path)
    assert losses(tmp_path) == losses(workdir_a)
    assert_same_params(state_c.params, state_a.params)


# ---- Non-finite steps ----


def poison_steps(monkeypatch, steps):
    """Makes the latents of the given (1-based) steps NaN, so their gradients are NaN."""
    build = dit_data.BatchBuilder.__call__
    calls = {"step": 0}

    def poisoned(self, host_batch):
        calls["step"] += 1
        if calls["step"] in steps:
            host_batch = dict(host_batch, latents=np.full_like(host_batch["latents"], np.nan))
        return build(self, host_batch)

    monkeypatch.setattr(dit_data.BatchBuilder, "__call__", poisoned)


def test_non_finite_steps_are_skipped_and_counted(monkeypatch, tmp_path):
    poison_steps(monkeypatch, {3, 4})
    store = tmp_path / "store"  # config.checkpoint_dir: checkpoints apart from the workdir
    config = make_config(total_steps=6, save_every=6, checkpoint_dir=str(store))
    state = train.train_and_evaluate(config, tmp_path / "work")
    tmp_path = tmp_path / "work"
    assert (store / "checkpoints" / "6").is_dir() and not (tmp_path / "checkpoints").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2, 2]
    assert [r["nonfinite_streak"] for r in records] == [0, 0, 1, 2, 0, 0]
    assert np.isnan(records[2]["loss"]) and np.isfinite(records[4]["loss"])
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state.params))


def test_a_non_finite_streak_stops_the_run_before_anything_non_finite_is_saved(
    monkeypatch, tmp_path
):
    poison_steps(monkeypatch, set(range(3, 100)))
    config = make_config(total_steps=10, save_every=1, max_nonfinite_steps=3)
    with pytest.raises(FloatingPointError, match="3 consecutive steps up to step 5"):
        train.train_and_evaluate(config, tmp_path)
    manager = checkpoint.make_manager(tmp_path, 2, 1)
    assert manager.latest_step() == 4  # steps 3 and 4 were skipped, so their state is finite
