"""The one step loop of every trainer (train.py, train_vae.py, captions/train_captioner.py): each
step under the watchdog and the non-finite guard, then metrics, checkpoint and export, samples,
and on preemption a checkpoint (no export) and a clean stop. What differs between trainers
(what a step is, what is logged, saved, exported and sampled) comes in as StepHooks; when it
happens, as a Schedule."""

import contextlib
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from soraj import checkpoint, distributed, fault_tolerance
from soraj.metric_writer import MetricWriter

# ---- When: the schedule -----------------------------------------------------------------------


def check_every(name: str, value, least: int = 0, why: str = "0: never") -> None:
    """config.<name>, an interval in steps, must be an integer ≥ least."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"config.{name} must be an integer ≥ {least} ({why}), got {value!r}")


def check_fault_settings(config) -> None:
    """config.max_nonfinite_steps (an integer ≥ 1) and config.distributed.step_timeout (a finite
    number of seconds ≥ 0; 0: off), checked before a trainer writes anything: a NaN timeout
    would otherwise switch the watchdog off without a word."""
    check_every(
        "max_nonfinite_steps",
        config.max_nonfinite_steps,
        least=1,
        why="consecutive skipped steps that stop the run",
    )
    timeout = config.distributed.step_timeout
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout < 0
    ):
        raise ValueError(
            "config.distributed.step_timeout must be a finite number of seconds ≥ 0 (0: off), "
            f"e.g. 0, 600 or 1800.5; got {timeout!r}"
        )


def due(step: int, every: int, total_steps: int) -> bool:
    """Whether an event every `every` steps falls on `step`: on its multiples and on the last
    step. every = 0 means never, the last step included."""
    return every > 0 and (step % every == 0 or step == total_steps)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When the loop logs, saves and samples: every N steps and at the last step; 0 is never.
    Saving cannot be off: the last step's checkpoint and export are what a run is for.
    total_name: what the config calls the step count, for messages."""

    total_steps: int
    log_every: int
    save_every: int
    sample_every: int
    total_name: str = "total_steps"

    def __post_init__(self):
        check_every(self.total_name, self.total_steps, least=1, why="the steps the run trains")
        check_every("log_every", self.log_every)
        last = "a run always saves its last step; = total steps saves only that one"
        check_every("save_every", self.save_every, least=1, why=last)
        check_every("sample_every", self.sample_every)

    @classmethod
    def from_config(
        cls, config, total_steps: int, sample_every: int, total_name: str = "total_steps"
    ) -> "Schedule":
        """The schedule of a trainer's config, whose fault settings are checked here too (every
        trainer calls this first in its prepare, before anything is written). sample_every is
        the trainer's own: config.sample_every, or 0 for a trainer that makes no samples."""
        check_fault_settings(config)
        return cls(total_steps, config.log_every, config.save_every, sample_every, total_name)

    def logs_at(self, step: int) -> bool:
        return due(step, self.log_every, self.total_steps)

    def saves_at(self, step: int) -> bool:
        return due(step, self.save_every, self.total_steps)

    def samples_at(self, step: int) -> bool:
        return due(step, self.sample_every, self.total_steps)


# ---- What: one trainer's part -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepHooks:
    """What one trainer does at each point of the loop."""

    # (step, state) → (state, metrics on device, host batch): the next batch through the jitted
    # step; `step` counts from 1, the steps done once it has run.
    step: Callable[[int, Any], tuple[Any, dict, Any]]
    # (metrics fetched to the host, host batch) → (the metrics to log, samples in the step).
    log: Callable[[dict, Any], tuple[dict, int]]
    # () → where the data iterators are, JSON, saved beside the state.
    data_state: Callable[[], dict]
    # step → what its checkpoint records beside the state (config, code version, ...).
    metadata: Callable[[int], dict]
    # (step, state) → writes WORKDIR/export, and whatever is read from it (an evaluation).
    export: Callable[[int, Any], None]
    # (step, state, host batch) → writes a sample; None: the trainer makes none.
    sample: Callable[[int, Any, Any], None] | None = None


# ---- The loop -----------------------------------------------------------------------------------


class TrainingRun:
    """A trainer set up to its first step; train() runs the steps.

    The trainers' prepare functions refuse bad input before one of these exists, so the CLI
    prints an error raised before train() as one line and leaves those inside it alone. The
    fault settings come from config.distributed.step_timeout and config.max_nonfinite_steps
    (configs/scale_out.py), checked by Schedule.from_config at the top of each prepare (and
    again here, for a loop built by hand). A checkpoint past the schedule's last step is
    refused here, still before train()."""

    def __init__(
        self,
        config,
        workdir: Path,
        schedule: Schedule,
        hooks: StepHooks,
        manager,
        state,
        start_step: int,
        *,
        name: str,
        progress: str,
    ):
        """name: what the export is called in the last line; progress: the bar's label."""
        self.config, self.workdir = config, Path(workdir)
        self.schedule, self.hooks, self.manager = schedule, hooks, manager
        self.state, self.start_step = state, start_step
        self.name, self.progress = name, progress
        if start_step > schedule.total_steps:
            raise ValueError(
                f"the latest checkpoint in {manager.directory} is of step {start_step}, past "
                f"config.{schedule.total_name} = {schedule.total_steps}: the run is already "
                f"past the requested total; raise config.{schedule.total_name} above "
                f"{start_step} to continue it"
            )
        check_fault_settings(config)
        self._nonfinite = fault_tolerance.NonFiniteGuard(
            config.max_nonfinite_steps, before_stop=manager.wait_until_finished
        )
        self._watchdog = distributed.StepWatchdog(config.distributed.step_timeout)

    def train(self):
        """Runs steps start_step + 1 … total_steps and returns the last state. On SIGTERM it
        saves a checkpoint (no export) at the next step and raises fault_tolerance.Preempted
        (exit code 75), unless that step is the last: then the run ends as usual. A run
        restored at its last step runs no step and writes the export again from that state."""
        schedule, hooks, manager = self.schedule, self.hooks, self.manager
        state, total = self.state, schedule.total_steps
        if distributed.is_primary():
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2))
            fault_tolerance.trim_metrics(self.workdir, self.start_step)
        if self.start_step == total:
            # Whatever became of the export after the last save (a preemption skips it, a
            # crash may cut it), the one written now is the last step's.
            self._watchdog.close()
            hooks.export(total, state)
            print(
                f"the checkpoint in {manager.directory} is already at the last step ({total}): "
                f"no step to run; {self.name} export written again from it to "
                f"{self.workdir / 'export'}"
            )
            return state
        writer = MetricWriter(self.workdir, total, self.start_step, self.progress)
        with fault_tolerance.PreemptionPoint() as preemption, contextlib.closing(self._watchdog):
            for step in range(self.start_step + 1, total + 1):  # step: steps done after it
                self._watchdog.step_started(step)
                state, metrics, batch = hooks.step(step, state)
                self._nonfinite.check(step, metrics["nonfinite_streak"])
                writer.advance()
                # Every process asks at every step (with several, it is a sync point). A request
                # on the last step ends the run as usual (its save and export complete it), less
                # the sample, which the grace period need not pay for.
                preempted = preemption.reached(step)
                finishing = preempted and step == total
                if finishing:
                    print(f"preemption requested at the last step ({step}): finishing the run")
                    preempted = False
                if schedule.logs_at(step):
                    writer.write(step, *hooks.log(jax.device_get(metrics), batch))
                if preempted:
                    # The checkpoint only: an export (the captioner's also evaluates) could
                    # outlast the grace period after SIGTERM; the next save writes one.
                    self._save(step, state, export=False)
                elif schedule.saves_at(step):
                    self._save(step, state)
                if preempted:
                    manager.wait_until_finished()
                    writer.close()
                    print(f"preempted: checkpoint of step {step} saved in {manager.directory}")
                    raise fault_tolerance.Preempted(step, manager.directory)
                # Samples in single-process runs only: process 0 alone cannot run a jitted
                # function on params sharded across hosts, and sampling on every host would
                # make them all wait on process 0's media writing.
                single = jax.process_count() == 1
                wanted = schedule.samples_at(step) and not finishing
                if hooks.sample is not None and single and wanted:
                    hooks.sample(step, state, batch)
                self._watchdog.step_finished()
        self._nonfinite.flush()
        manager.wait_until_finished()
        writer.close()
        print(f"{self.name} export written to {self.workdir / 'export'}")
        return state

    def _save(self, step: int, state, export: bool = True) -> None:
        self._nonfinite.flush()  # never save after too many skipped steps
        data_state, metadata = self.hooks.data_state(), self.hooks.metadata(step)
        checkpoint.save_train_state(self.manager, step, state, data_state, metadata, force=True)
        # With several processes, process 0 writes the export only after the last step, so no
        # host waits on its writing inside the loop.
        if export and (jax.process_count() == 1 or step == self.schedule.total_steps):
            self.hooks.export(step, state)
