"""What a training loop needs to survive preemption and bad numerics, used by the trainers'
shared loop (soraj/step_loop.py): a SIGTERM-driven preemption point, the non-finite step streak
check, resuming onto a mesh, and the trimming of metrics a crashed run logged past its last
checkpoint."""

import json
import signal
import sys
import threading
from pathlib import Path

import flax.linen as nn
import jax
from jax.experimental import multihost_utils

from soraj import checkpoint, sharding

# A preempted run exits with this code after its checkpoint is complete; the same command
# continues from there. 75 is sysexits.h's EX_TEMPFAIL: "try again later".
PREEMPTED_EXIT_CODE = 75


class Preempted(SystemExit):
    """Raised by a trainer after it saved at the preemption point; exits PREEMPTED_EXIT_CODE."""

    def __init__(self, step: int, checkpoint_dir: Path):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.checkpoint_dir = step, checkpoint_dir


# ---- Preemption -------------------------------------------------------------------------------


class PreemptionPoint:
    """SIGTERM asks the run to save at the next step and stop.

    On one process the signal handler sets a flag. With jax.distributed, JAX's preemption
    service already listens for SIGTERM and agrees on one step for every host
    (multihost_utils.reached_preemption_sync_point), so no handler is installed there.
    Use as a context manager: the previous handler comes back on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        single = jax.process_count() == 1
        # Signal handlers can only be installed from the main thread (not, e.g., a notebook
        # worker thread); there the run simply is not preemptible by SIGTERM.
        if single and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _on_sigterm(self, signum, frame):
        self.requested = True
        print("SIGTERM received: saving at the next step, then exiting", file=sys.stderr)

    def reached(self, step: int) -> bool:
        """True at the step every process saves and stops at (called by all, every step)."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


# ---- Non-finite steps -------------------------------------------------------------------------


class NonFiniteGuard:
    """optax.apply_if_finite skips a step whose gradients are not finite (soraj/optim.py); this
    stops the run once `max_steps` consecutive steps were skipped. The streak is read one step
    late, so checking never stalls the device queue; a skipped step leaves the state finite,
    so the late read never lets a non-finite state through."""

    def __init__(self, max_steps: int, before_stop=None):
        """before_stop: called before the error is raised, e.g. the checkpoint manager's
        wait_until_finished, so the saves of earlier (finite) steps still complete."""
        if max_steps < 1:
            raise ValueError(f"config.max_nonfinite_steps must be ≥ 1, got {max_steps}")
        self.max_steps, self.before_stop = max_steps, before_stop
        self._pending = None  # (step, device scalar) of the step before

    def check(self, step: int, streak) -> None:
        """Registers step's streak (a device scalar) and checks the previous step's."""
        pending, self._pending = self._pending, (step, streak)
        if pending is not None:
            self._raise_if_over(*pending)

    def flush(self) -> None:
        """Checks the last registered step (before a save or at the end)."""
        if self._pending is not None:
            self._raise_if_over(*self._pending)

    def _raise_if_over(self, step: int, streak) -> None:
        streak = int(jax.device_get(streak))
        if streak >= self.max_steps:
            if self.before_stop is not None:
                self.before_stop()
            raise FloatingPointError(
                f"{streak} consecutive steps up to step {step} had non-finite gradients (each "
                f"was skipped; the limit is config.max_nonfinite_steps={self.max_steps}). The "
                "run stops here without saving; the last checkpoint holds the last finite state. "
                "Lower the learning rate or check the data."
            )


# ---- Resuming ----------------------------------------------------------------------------------


def resume_or_start(manager, init_state, rng, mesh, rules):
    """(state, state_shardings, data_state, start_step): the latest complete checkpoint
    restored straight onto this mesh's shardings, or a fresh state made sharded (the model
    never lands whole on one device). The shardings come from the params' logical axis names
    (init_state returns them boxed); checkpoint.restore_or_init does the rest."""
    shardings = sharding.logical_shardings(jax.eval_shape(init_state, rng), mesh, rules)
    state, data_state, step = checkpoint.restore_or_init(
        manager, lambda key: nn.unbox(init_state(key)), rng, shardings
    )
    return state, shardings, data_state, step


# ---- Metrics of a restarted run -----------------------------------------------------------------


def trim_metrics(workdir: Path, restored_step: int, filename: str = "metrics.jsonl") -> None:
    """Drops lines of WORKDIR/filename (JSON records with a "step") past restored_step: a run
    that died after its last checkpoint logged steps the restart will run again. Only process 0
    touches the file."""
    path = Path(workdir) / filename
    if jax.process_index() != 0 or not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= restored_step]
    if len(kept) != len(lines):
        staging = path.with_name(path.name + ".tmp")
        staging.write_text("".join(kept))
        staging.replace(path)  # atomic: a crash here leaves the old file or the new one
