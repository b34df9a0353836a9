"""One process of the multi-host tests (tests/test_distributed.py starts two of these).

The launcher gives JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, 2 CPU devices
per process, and a mode: "ok" runs the steps; "raise", "hang" and "kill" make process
`--fail-process` raise, sleep forever or SIGKILL itself inside step `--fail-step`. Every step
reads its result back to the host, so a missing peer leaves the others blocked in the
collective. Lines the test reads are JSON on stdout.
"""

import argparse
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from soraj import distributed, sharding
from soraj.configs import scale_out

ROWS_PER_PROCESS, COLUMNS = 2, 3


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def local_rows(step: int, process: int) -> np.ndarray:
    """Global row r holds (r + 1)·(step + 1) + column; this process holds its own rows."""
    rows = np.arange(process * ROWS_PER_PROCESS, (process + 1) * ROWS_PER_PROCESS)
    return ((rows[:, None] + 1) * (step + 1) + np.arange(COLUMNS)).astype(np.float32)  # (2, 3)


def accumulate(total, batch):
    # Both reductions cross the two processes (the batch rows live on all 4 devices).
    return total + jnp.mean(batch, axis=0), jnp.sum(batch)  # (3,), ()


def main(args) -> None:
    config = ml_collections.ConfigDict()
    scale_out.add_fields(config)
    config.distributed.initialize = True
    config.distributed.initialization_timeout = args.initialization_timeout
    config.distributed.heartbeat_timeout = args.heartbeat_timeout
    config.distributed.step_timeout = args.step_timeout
    distributed.initialize(config.distributed)
    distributed.initialize(config.distributed)  # a second call does nothing

    process = jax.process_index()
    mesh = sharding.make_mesh()  # all 4 devices of both processes on the data axis
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    step_fn = jax.jit(accumulate, out_shardings=(replicated, replicated))
    report(
        event="started",
        process=process,
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        local_device_count=jax.local_device_count(),
        primary=distributed.is_primary(),
        cpu_collectives=jax.config.jax_cpu_collectives_implementation,
    )

    watchdog = distributed.StepWatchdog(config.distributed.step_timeout, "train step")
    total = jax.device_put(jnp.zeros(COLUMNS, jnp.float32), replicated)
    for step in range(args.steps):
        with watchdog.step(step):
            if args.mode != "ok" and process == args.fail_process and step == args.fail_step:
                report(event="failing", process=process, step=step, time=time.time())
                if args.mode == "raise":
                    raise RuntimeError(f"injected failure in step {step}")
                if args.mode == "kill":  # no Python cleanup, no notice to the peers
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(3600)  # "hang"
            batch = jax.make_array_from_process_local_data(
                batch_sharding, local_rows(step, process)
            )  # (4, 3) global
            total, batch_sum = step_fn(total, batch)
            report(event="step", process=process, step=step, batch_sum=float(batch_sum))
    report(event="done", process=process, total=np.asarray(total).tolist())
    watchdog.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ok", "raise", "hang", "kill"), default="ok")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--fail-process", type=int, default=1)
    parser.add_argument("--fail-step", type=int, default=2)
    parser.add_argument("--step-timeout", type=int, default=0)
    parser.add_argument("--heartbeat-timeout", type=int, default=5)
    parser.add_argument("--initialization-timeout", type=int, default=30)
    distributed.run_main(main, parser.parse_args())
