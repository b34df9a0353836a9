"""Completes a save of step 1, then SIGKILLs itself in the middle of the async save of step 2
(run by tests/test_checkpoint.py in a subprocess).

    checkpoint_kill_check.py WORKDIR

Step 1 holds 1.0 everywhere, step 2 holds 2.0. The kill lands once orbax has begun writing
step 2 into its temporary folder; the arrays are large enough (2 × 16 MiB) that writing them
takes far longer than the poll that waits for that folder. Should a busy machine still let the
save finish first, the script exits with RACE_LOST and the test tries again.
"""

import os
import signal
import sys
import time
from pathlib import Path

import jax.numpy as jnp

from soraj import checkpoint

SHAPE = (2048, 2048)
RACE_LOST = 3  # exit status when step 2 finished before the poll saw it half written


def state_filled_with(value: float) -> dict:
    return {"w": jnp.full(SHAPE, value), "v": jnp.full(SHAPE, -value), "step": jnp.int32(value)}


def main(workdir: str) -> None:
    manager = checkpoint.make_manager(workdir, keep=3, save_every=1)
    checkpoint.save_train_state(manager, 1, state_filled_with(1.0), {"next": 1}, {})
    manager.wait_until_finished()
    checkpoint.save_train_state(manager, 2, state_filled_with(2.0), {"next": 2}, {})
    directory = Path(manager.directory)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        partial = sorted(directory.glob("2.orbax-checkpoint-tmp*"))
        if partial and any(path.is_file() for path in partial[0].rglob("*")):
            print(f"killing during the save of step 2: {partial[0].name}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if (directory / "2").exists():
            raise SystemExit(RACE_LOST)
    raise SystemExit("the save of step 2 never started writing")


if __name__ == "__main__":
    main(sys.argv[1])
