"""The trainers' shared step loop (soraj/step_loop.py) around a fake step that counts: the steps
it logs, saves, exports and samples at, where a resumed run starts, the save and stop on
preemption, and the stop on a non-finite streak. Expected steps are written out by hand."""

import importlib
import json
import os
import signal
import threading

import jax.numpy as jnp
import ml_collections
import pytest

from soraj import checkpoint, step_loop
from soraj.fault_tolerance import PREEMPTED_EXIT_CODE, Preempted


class FakeTrainer:
    """A trainer whose state counts steps and whose hooks record when they ran.

    streaks: the non-finite streak the step reports, by step (0 where absent);
    sigterm_at: the step during which the process receives SIGTERM."""

    def __init__(self, streaks=None, sigterm_at=None):
        self.streaks, self.sigterm_at = streaks or {}, sigterm_at
        self.exports, self.samples, self.saved_data = [], [], []

    def step(self, step, state):
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        state = {"count": state["count"] + 1, "weight": state["weight"] * 0.5}
        metrics = {"loss": jnp.float32(step), "nonfinite_streak": self.streaks.get(step, 0)}
        return state, metrics, {"batch_of": step}

    def hooks(self, with_samples=True) -> step_loop.StepHooks:
        return step_loop.StepHooks(
            step=self.step,
            log=lambda metrics, batch: ({"loss": metrics["loss"], "of": batch["batch_of"]}, 4),
            data_state=lambda: {"position": len(self.saved_data)},
            metadata=lambda step: {"saved_at": step},
            export=lambda step, state: self.exports.append((step, int(state["count"]))),
            sample=(lambda step, state, batch: self.samples.append(step)) if with_samples else None,
        )


def train(workdir, trainer, schedule, start_step=0, max_nonfinite_steps=3, with_samples=True):
    """Runs the loop from a fresh state; returns (final state, saved steps)."""
    config = ml_collections.ConfigDict(
        dict(max_nonfinite_steps=max_nonfinite_steps, distributed=dict(step_timeout=0))
    )
    manager = checkpoint.make_manager(workdir, keep=100, save_every=schedule.save_every)
    state = {"count": jnp.int32(start_step), "weight": jnp.ones(3)}
    hooks = trainer.hooks(with_samples)
    run = step_loop.TrainingRun(
        config, workdir, schedule, hooks, manager, state, start_step, name="fake", progress="fake"
    )
    try:
        return run.train(), manager
    finally:
        manager.wait_until_finished()


def logged(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r["of"]) for r in map(json.loads, lines)]


# ---- The schedule -------------------------------------------------------------------------------


def test_every_n_steps_and_the_last_and_zero_is_never():
    schedule = step_loop.Schedule(10, log_every=4, save_every=3, sample_every=0)
    steps = range(1, 11)
    assert [s for s in steps if schedule.logs_at(s)] == [4, 8, 10]
    assert [s for s in steps if schedule.saves_at(s)] == [3, 6, 9, 10]
    assert [s for s in steps if schedule.samples_at(s)] == []
    quiet = step_loop.Schedule(10, log_every=0, save_every=10, sample_every=0)
    assert [s for s in steps if quiet.logs_at(s) or quiet.samples_at(s)] == []
    assert [s for s in steps if quiet.saves_at(s)] == [10]


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(log_every=-1), r"config.log_every must be an integer ≥ 0 \(0: never\), got -1"),
        (dict(sample_every=2.5), r"config.sample_every must be an integer ≥ 0"),
        (dict(save_every=0), r"config.save_every must be an integer ≥ 1 \(a run always saves"),
        (dict(log_every=True), r"config.log_every must be an integer"),
    ],
)
def test_bad_intervals_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        step_loop.Schedule(**{"total_steps": 10, "log_every": 1, "save_every": 1, **fields})


@pytest.mark.parametrize(
    "name, arg",
    [("t2v", "tiny"), ("vae", "tiny"), ("captioner", "tiny")],
)
def test_every_trainer_config_turns_samples_and_logs_off_with_zero(name, arg):
    config = importlib.import_module(f"soraj.configs.{name}").get_config(arg)
    config.log_every = 0
    if "sample_every" in config:
        config.sample_every = 0
    schedule = step_loop.Schedule.from_config(config, 20)
    assert not any(schedule.logs_at(s) or schedule.samples_at(s) for s in range(1, 21))


# ---- The loop -----------------------------------------------------------------------------------


def test_logs_saves_exports_and_samples_on_schedule(tmp_path):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(7, log_every=2, save_every=3, sample_every=4)
    state, manager = train(tmp_path, trainer, schedule)
    assert int(state["count"]) == 7
    assert logged(tmp_path) == [(2, 2.0, 2), (4, 4.0, 4), (6, 6.0, 6), (7, 7.0, 7)]
    assert manager.all_steps() == [3, 6, 7]
    assert trainer.exports == [(3, 3), (6, 6), (7, 7)]  # after each save, of that step's state
    assert trainer.samples == [4, 7]
    assert json.loads((tmp_path / "config.json").read_text())["max_nonfinite_steps"] == 3
    restored = checkpoint.restore_metadata(manager, 6)
    assert restored == {"saved_at": 6}


def test_zero_logs_and_samples_nothing_and_still_saves_the_last_step(tmp_path):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(5, log_every=0, save_every=5, sample_every=0)
    train(tmp_path, trainer, schedule)
    assert logged(tmp_path) == []
    assert trainer.samples == []
    assert trainer.exports == [(5, 5)]


def test_a_trainer_without_samples_ignores_sample_every(tmp_path):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(4, log_every=1, save_every=4, sample_every=1)
    train(tmp_path, trainer, schedule, with_samples=False)
    assert trainer.samples == []


def test_a_resumed_run_starts_after_its_checkpoint_and_drops_later_metrics(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    # A run that died after step 6, with its last checkpoint at step 4.
    lines = [json.dumps({"step": s, "loss": 0.0, "of": s}) for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(8, log_every=2, save_every=3, sample_every=0)
    state, manager = train(tmp_path, trainer, schedule, start_step=4)
    assert int(state["count"]) == 8
    assert [s for s, _, _ in logged(tmp_path)] == [1, 2, 3, 4, 6, 8]
    assert manager.all_steps() == [6, 8]


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="SIGTERM handlers can only be installed from the main thread",
)
def test_sigterm_saves_the_step_it_arrives_in_and_stops(tmp_path):
    trainer = FakeTrainer(sigterm_at=4)
    schedule = step_loop.Schedule(10, log_every=1, save_every=100, sample_every=1)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        train(tmp_path, trainer, schedule)
    assert stopped.value.code == PREEMPTED_EXIT_CODE and stopped.value.step == 4
    manager = checkpoint.make_manager(tmp_path, keep=100, save_every=100)
    assert manager.all_steps() == [4]
    assert trainer.exports == [(4, 4)]
    assert trainer.samples == [1, 2, 3]  # the stopping step makes no sample
    assert [s for s, _, _ in logged(tmp_path)] == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_non_finite_streak_stops_before_its_step_is_saved(tmp_path):
    # Steps 3, 4 and 5 skipped: the third in a row reaches max_nonfinite_steps = 3.
    trainer = FakeTrainer(streaks={3: 1, 4: 2, 5: 3, 6: 4})
    schedule = step_loop.Schedule(10, log_every=1, save_every=1, sample_every=0)
    with pytest.raises(FloatingPointError, match="3 consecutive steps up to step 5 had non-finite"):
        train(tmp_path, trainer, schedule, max_nonfinite_steps=3)
    manager = checkpoint.make_manager(tmp_path, keep=100, save_every=1)
    assert manager.all_steps() == [1, 2, 3, 4]
    assert [step for step, _ in trainer.exports] == [1, 2, 3, 4]


def test_bad_fault_settings_are_refused_before_the_first_step(tmp_path):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(3, log_every=1, save_every=1)
    with pytest.raises(ValueError, match="config.max_nonfinite_steps must be ≥ 1, got 0"):
        train(tmp_path, trainer, schedule, max_nonfinite_steps=0)
    assert not (tmp_path / "metrics.jsonl").exists()
