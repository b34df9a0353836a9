"""The trainers' shared step loop (soraj/step_loop.py) around a fake step that counts: the steps
it logs, saves, exports and samples at, where a resumed run starts (at or past its last step
too), the checkpoint and stop on preemption, the stop on a non-finite streak, and the settings
refused before anything is written. Expected steps are written out by hand."""

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
        self.exports, self.samples, self.saved_data, self.steps = [], [], [], []

    def step(self, step, state):
        self.steps.append(step)
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


def train(
    workdir,
    trainer,
    schedule,
    start_step=0,
    max_nonfinite_steps=3,
    with_samples=True,
    step_timeout=0,
):
    """Runs the loop from a state that has done start_step steps; returns (final state, the
    checkpoint manager)."""
    config = ml_collections.ConfigDict(
        dict(max_nonfinite_steps=max_nonfinite_steps, distributed=dict(step_timeout=step_timeout))
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
        step_loop.Schedule(
            **{"total_steps": 10, "log_every": 1, "save_every": 1, "sample_every": 0, **fields}
        )


@pytest.mark.parametrize("name", ["t2v", "vae", "captioner"])
def test_every_trainer_config_turns_samples_and_logs_off_with_zero(name):
    config = importlib.import_module(f"soraj.configs.{name}").get_config("tiny")
    config.log_every = 0
    # Each trainer passes its own sample_every; the captioner, which makes none, passes 0.
    sample_every = 0
    if name != "captioner":
        config.sample_every = sample_every
    schedule = step_loop.Schedule.from_config(config, 20, sample_every)
    assert not any(schedule.logs_at(s) or schedule.samples_at(s) for s in range(1, 21))


def test_a_schedule_needs_its_sample_interval_given():
    config = importlib.import_module("soraj.configs.captioner").get_config("tiny")
    with pytest.raises(TypeError, match="sample_every"):
        step_loop.Schedule.from_config(config, 20)  # no default that could hide a forgotten one


@pytest.mark.parametrize(
    "total, name, message",
    [
        (0, "total_steps", r"config.total_steps must be an integer ≥ 1 \(the steps the run"),
        (-3, "total_steps", r"config.total_steps must be an integer ≥ 1 .*got -3"),
        (2.0, "total_steps", r"config.total_steps must be an integer ≥ 1 .*got 2.0"),
        (
            0,
            "pretrain_steps + config.finetune_steps",
            r"config.pretrain_steps \+ config.finetune_steps must be an integer ≥ 1",
        ),
    ],
)
def test_a_run_of_no_steps_is_refused(total, name, message):
    with pytest.raises(ValueError, match=message):
        step_loop.Schedule(total, log_every=1, save_every=1, sample_every=0, total_name=name)


def fault_config(max_nonfinite_steps=10, step_timeout=0):
    return ml_collections.ConfigDict(
        dict(
            log_every=1,
            save_every=1,
            max_nonfinite_steps=max_nonfinite_steps,
            distributed=dict(step_timeout=step_timeout),
        )
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_nonfinite_steps=0), r"config.max_nonfinite_steps must be an integer ≥ 1"),
        (dict(max_nonfinite_steps=-2), r"config.max_nonfinite_steps must be .*got -2"),
        (dict(max_nonfinite_steps=2.5), r"config.max_nonfinite_steps must be .*got 2.5"),
        (dict(max_nonfinite_steps=True), r"config.max_nonfinite_steps must be .*got True"),
        (dict(step_timeout=float("nan")), r"step_timeout must be a finite number .*got nan"),
        (dict(step_timeout=float("inf")), r"step_timeout must be a finite number .*got inf"),
        (dict(step_timeout=-1), r"step_timeout must be a finite number of seconds ≥ 0 \(0: off"),
        (dict(step_timeout=True), r"step_timeout must be .*got True"),
        (dict(step_timeout="60"), r"step_timeout must be .*got '60'"),
    ],
)
def test_bad_fault_settings_are_refused_by_the_schedule(settings, message):
    with pytest.raises(ValueError, match=message):
        step_loop.Schedule.from_config(fault_config(**settings), 10, 0)


@pytest.mark.parametrize("settings", [dict(), dict(max_nonfinite_steps=1, step_timeout=0.5)])
def test_good_fault_settings_pass(settings):
    schedule = step_loop.Schedule.from_config(fault_config(**settings), 10, 0)
    assert schedule == step_loop.Schedule(10, 1, 1, 0)


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
    assert trainer.exports == []  # the checkpoint only: no export inside the grace period
    assert trainer.samples == [1, 2, 3]  # the stopping step makes no sample
    assert [s for s, _, _ in logged(tmp_path)] == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="SIGTERM handlers can only be installed from the main thread",
)
def test_sigterm_on_a_save_step_saves_without_exporting(tmp_path):
    trainer = FakeTrainer(sigterm_at=4)
    schedule = step_loop.Schedule(10, log_every=0, save_every=2, sample_every=0)
    with pytest.raises(Preempted) as stopped:
        train(tmp_path, trainer, schedule)
    assert stopped.value.step == 4
    assert checkpoint.make_manager(tmp_path, keep=100, save_every=2).all_steps() == [2, 4]
    assert trainer.exports == [(2, 2)]  # step 2's scheduled export; none for step 4


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="SIGTERM handlers can only be installed from the main thread",
)
def test_sigterm_on_the_last_step_finishes_the_run(tmp_path, capsys):
    trainer = FakeTrainer(sigterm_at=5)
    schedule = step_loop.Schedule(5, log_every=1, save_every=100, sample_every=1)
    previous = signal.getsignal(signal.SIGTERM)
    state, manager = train(tmp_path, trainer, schedule)  # no Preempted: the run is complete
    assert int(state["count"]) == 5
    assert manager.all_steps() == [5]
    assert trainer.exports == [(5, 5)]
    assert trainer.samples == [1, 2, 3, 4]  # the grace period pays for no sample
    assert [s for s, _, _ in logged(tmp_path)] == [1, 2, 3, 4, 5]
    out = capsys.readouterr().out
    assert "preemption requested at the last step (5): finishing the run" in out
    assert "fake export written to" in out
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_run_restored_at_its_last_step_exports_again_and_runs_nothing(tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    lines = [json.dumps({"step": s, "loss": 0.0, "of": s}) for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(6, log_every=1, save_every=3, sample_every=1)
    state, manager = train(tmp_path, trainer, schedule, start_step=6)
    assert trainer.steps == [] and trainer.samples == []
    assert int(state["count"]) == 6
    assert trainer.exports == [(6, 6)]  # from the restored state
    assert manager.all_steps() == []  # nothing new to save
    assert [s for s, _, _ in logged(tmp_path)] == [1, 2, 3, 4, 5, 6]
    out = capsys.readouterr().out
    assert "already at the last step (6): no step to run; fake export written again" in out


def test_a_run_restored_past_its_last_step_is_refused_before_anything_is_written(tmp_path):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(5, log_every=1, save_every=1, sample_every=0)
    with pytest.raises(ValueError) as refused:
        train(tmp_path, trainer, schedule, start_step=8)
    message = str(refused.value)
    assert "is of step 8, past config.total_steps = 5" in message
    assert "raise config.total_steps above 8 to continue it" in message
    assert "\n" not in message
    assert trainer.steps == [] and trainer.exports == []
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_non_finite_streak_stops_before_its_step_is_saved(tmp_path):
    # Steps 3, 4 and 5 skipped: the third in a row reaches max_nonfinite_steps = 3.
    trainer = FakeTrainer(streaks={3: 1, 4: 2, 5: 3, 6: 4})
    schedule = step_loop.Schedule(10, log_every=1, save_every=1, sample_every=0)
    with pytest.raises(FloatingPointError, match="3 consecutive steps up to step 5 had non-finite"):
        train(tmp_path, trainer, schedule, max_nonfinite_steps=3)
    manager = checkpoint.make_manager(tmp_path, keep=100, save_every=1)
    assert manager.all_steps() == [1, 2, 3, 4]
    assert [step for step, _ in trainer.exports] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_nonfinite_steps=0), "config.max_nonfinite_steps must be an integer ≥ 1"),
        (dict(step_timeout=float("nan")), "config.distributed.step_timeout must be a finite"),
    ],
)
def test_bad_fault_settings_are_refused_before_the_first_step(tmp_path, settings, message):
    trainer = FakeTrainer()
    schedule = step_loop.Schedule(3, log_every=1, save_every=1, sample_every=0)
    with pytest.raises(ValueError, match=message):
        train(tmp_path, trainer, schedule, **settings)
    assert trainer.steps == []
    assert not (tmp_path / "metrics.jsonl").exists()
