"""Per-step progress of the jitted sampler: a host callback from inside its Euler loop moves
the tqdm bar (on stderr) of the `StepProgress` that is open."""

import sys
import threading

import jax
import tqdm

# The open bars, innermost last. A module-level slot rather than an argument: the compiled
# sampler holds one callback for good, and whoever listens now is looked up when it fires.
_open: list["StepProgress"] = []
_lock = threading.Lock()


# ---- Traced side ----------------------------------------------------------------------------


def report_step(step, x) -> None:
    """euler_sample's on_step: tells the host that step `step` is done. The callback takes
    one element of the step's x, so it fires once the update exists, not as the step starts;
    one scalar a step is all that leaves the device."""
    jax.debug.callback(_step_done, step, x[0, 0, 0])


def _step_done(step, _element) -> None:
    with _lock:
        bar = _open[-1] if _open else None
    if bar is not None:
        bar.advance_to(int(step) + 1)


# ---- Host side ------------------------------------------------------------------------------


def status(message: str) -> None:
    """A line saying what a long command is doing now: on stderr, so stdout keeps only results."""
    print(message, file=sys.stderr, flush=True)


class StepProgress:
    """`with StepProgress(steps):` a bar over the sampler's steps while it runs. Several
    devices (or a loop re-run) may report one step more than once; the bar only moves
    forward."""

    def __init__(self, total: int, description: str = "sampling"):
        self.total, self.description = total, description
        self.bar = None

    def __enter__(self) -> "StepProgress":
        self.bar = tqdm.tqdm(
            total=self.total, desc=self.description, unit="step", file=sys.stderr, leave=True
        )
        with _lock:
            _open.append(self)
        return self

    def advance_to(self, done: int) -> None:
        with _lock:
            if done > self.bar.n:
                self.bar.update(min(done, self.total) - self.bar.n)

    def __exit__(self, *exc_info) -> None:
        with _lock:
            _open.remove(self)
        self.bar.close()
