"""Multi-host `soraj train`: 2 processes × 2 CPU devices on localhost (jax.distributed, gloo
collectives) train the same steps as 1 process with 4 devices, and end with the same losses and
the same exported params (float32 reduction-order tolerance)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from test_resume import OVERRIDES

from soraj.generate import Generator

STEPS = 6
RUN = {
    **OVERRIDES,
    "total_steps": STEPS,
    "save_every": 3,
    "batch_size": 4,  # rows: 1 per device of the 4-device mesh
    "data.shards": 2,  # the same global batches whatever the process count
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_command(workdir, **changes) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in {**RUN, **changes}.items()]
    return [
        sys.executable,
        "-m",
        "soraj",
        "train",
        "--config=soraj/configs/t2v.py:tiny",
        f"--workdir={workdir}",
        *flags,
    ]


def environment(devices: int) -> dict:
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )


def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    port = free_port()
    multi = tmp_path / "two_processes"
    distributed = {
        "distributed.initialize": True,
        "distributed.coordinator_address": f"localhost:{port}",
        "distributed.num_processes": 2,
        # Generous: three processes compile at once on a 2-core machine. The watchdog and
        # failure paths have their own tests (test_distributed.py).
        "distributed.initialization_timeout": 120,
        "distributed.heartbeat_timeout": 60,
    }
    processes = [
        subprocess.Popen(
            train_command(multi, **distributed, **{"distributed.process_id": index}),
            env=environment(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in (0, 1)
    ]
    single = tmp_path / "one_process"
    one = subprocess.run(
        train_command(single), env=environment(4), capture_output=True, text=True, timeout=300
    )
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    report = "\n".join(f"--- process {i}:\n{output}" for i, output in enumerate(outputs))
    assert [p.returncode for p in processes] == [0, 0], report
    assert one.returncode == 0, one.stdout + one.stderr
    assert "mesh {'data': 4" in outputs[0] and "mesh {'data': 4" in one.stdout

    multi_losses, single_losses = losses(multi), losses(single)
    assert [s for s, _ in multi_losses] == list(range(1, STEPS + 1))
    assert [s for s, _ in single_losses] == list(range(1, STEPS + 1))
    np.testing.assert_allclose(
        [loss for _, loss in multi_losses], [loss for _, loss in single_losses], rtol=1e-5
    )
    multi_state, single_state = final_state(multi), final_state(single)
    for key in ("params", "ema_params"):
        for a, b in zip(
            jax.tree.leaves(multi_state[key]), jax.tree.leaves(single_state[key]), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # Process 0 wrote the export, which generation loads.
    assert Generator.load(multi / "export").dit.config.width == RUN["model.width"]


def final_state(workdir) -> dict:
    """The float32 train state of the last checkpoint, every array on this process's device."""
    path = (workdir / "checkpoints" / str(STEPS) / "state").absolute()
    here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.PyTreeCheckpointer() as checkpointer:
        stored = checkpointer.metadata(path).item_metadata.tree
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=here), stored)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
