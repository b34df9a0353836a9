"""soraj/distributed.py: two processes × two CPU devices on localhost (gloo collectives) compute
a cross-process mean; one process raising or hanging ends both within a bound; bad config is
refused before JAX is touched."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from soraj import distributed
from soraj.configs import scale_out

WORKER = Path(__file__).with_name("distributed_worker.py")
HEARTBEAT_TIMEOUT = 4  # seconds; short so that a dead peer is noticed fast
# After the failure, every process must be gone within this many seconds: the heartbeat timeout
# plus start-up slack for two processes sharing two busy cores.
EXIT_BOUND = HEARTBEAT_TIMEOUT + 20
LAUNCH_DEADLINE = 60  # no test may wait longer than this for its processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(tmp_path: Path, *worker_args: str, step_timeouts=(0, 0)) -> list[dict]:
    """Runs 2 workers; returns per process its exit code, exit time, stdout records, stderr."""
    port = free_port()
    processes = []
    for process in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(process),
        )
        out = open(tmp_path / f"out{process}.txt", "w")  # noqa: SIM115 — closed below
        err = open(tmp_path / f"err{process}.txt", "w")  # noqa: SIM115
        args = [sys.executable, str(WORKER), *worker_args]
        args += [f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"]
        args += [f"--step-timeout={step_timeouts[process]}"]
        popen = subprocess.Popen(args, env=env, stdout=out, stderr=err, cwd=WORKER.parent.parent)
        processes.append((popen, out, err))
    deadline, ended = time.time() + LAUNCH_DEADLINE, [None, None]
    while None in ended and time.time() < deadline:
        for i, (popen, _, _) in enumerate(processes):
            if ended[i] is None and popen.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.05)
    results = []
    for i, (popen, out, err) in enumerate(processes):
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        out.close()
        err.close()
        lines = (tmp_path / f"out{i}.txt").read_text().splitlines()
        # Gloo prints its own lines on stdout too; the worker's records are JSON objects.
        records = [json.loads(line) for line in lines if line.startswith("{")]
        stderr = (tmp_path / f"err{i}.txt").read_text()
        results.append(dict(code=popen.returncode, ended=ended[i], records=records, stderr=stderr))
    hung = [i for i in range(2) if ended[i] is None]
    assert not hung, f"processes {hung} still ran after {LAUNCH_DEADLINE} s: {results}"
    return results


def events(result: dict, name: str) -> list[dict]:
    return [r for r in result["records"] if r["event"] == name]


def test_two_processes_compute_a_cross_process_mean(tmp_path):
    steps = 4
    results = launch(tmp_path, "--mode=ok", f"--steps={steps}")
    for process, result in enumerate(results):
        assert result["code"] == 0, result["stderr"][-3000:]
        (started,) = events(result, "started")
        assert started == dict(
            event="started",
            process=process,
            process_count=2,
            device_count=4,
            local_device_count=2,
            primary=process == 0,
            cpu_collectives="gloo",
        )
        # Global row r of step s holds (r + 1)(s + 1) + column, r = 0..3, columns 0..2:
        # the batch sums to 30(s + 1) + 12, the row mean is 2.5(s + 1) + column, and the
        # running total after N steps is 2.5·N(N + 1)/2 + N·column.
        sums = [r["batch_sum"] for r in events(result, "step")]
        assert sums == [30.0 * (s + 1) + 12.0 for s in range(steps)]
        (done,) = events(result, "done")
        expected = 2.5 * steps * (steps + 1) / 2 + steps * np.arange(3)
        np.testing.assert_allclose(done["total"], expected, rtol=1e-6)


@pytest.mark.parametrize("failing", [0, 1])
def test_one_process_raising_ends_both(tmp_path, failing):
    # Process 0 hosts the coordination service, so its failure and a peer's differ.
    results = launch(tmp_path, "--mode=raise", f"--fail-process={failing}", "--fail-step=2")
    (failure,) = events(results[failing], "failing")
    assert failure["step"] == 2
    assert "injected failure in step 2" in results[failing]["stderr"]
    peer = 1 - failing
    # The peer was told through the key-value store, not by a heartbeat timeout (that would be
    # JAX's abort, status -6).
    assert (
        f"process {peer} stops because process {failing} failed: RuntimeError: injected "
        in (results[peer]["stderr"])
    )
    for result in results:
        assert result["code"] == distributed.FAILED_EXIT_CODE, result["stderr"][-3000:]
        assert not events(result, "done")
        assert result["ended"] - failure["time"] < EXIT_BOUND


@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_process_ends_its_peer(tmp_path, killed):
    # SIGKILL leaves no notice: JAX's heartbeat (or process 0's closed service) ends the peer.
    results = launch(tmp_path, "--mode=kill", f"--fail-process={killed}", "--fail-step=2")
    (failure,) = events(results[killed], "failing")
    assert results[killed]["code"] == -signal.SIGKILL
    peer = results[1 - killed]
    assert peer["code"] != 0
    assert not events(peer, "done")
    assert peer["ended"] - failure["time"] < EXIT_BOUND


def test_hanging_process_is_ended_by_the_step_watchdog(tmp_path):
    # Only the hanging process has a watchdog (2 s); its peer, blocked in the collective, is
    # told by the watchdog before it exits.
    step_timeout = 2
    results = launch(
        tmp_path,
        "--mode=hang",
        "--fail-process=1",
        "--fail-step=2",
        step_timeouts=(0, step_timeout),
    )
    (failure,) = events(results[1], "failing")
    hung, peer = results[1], results[0]
    assert hung["code"] == distributed.STEP_TIMEOUT_EXIT_CODE, hung["stderr"][-3000:]
    assert "train step 2 on process 1" in hung["stderr"]
    assert f"step timeout of {step_timeout} s" in hung["stderr"]
    assert hung["ended"] - failure["time"] >= step_timeout
    assert peer["code"] == distributed.FAILED_EXIT_CODE, peer["stderr"][-3000:]
    assert (
        "process 0 stops because process 1 hit the step timeout in train step 2" in (peer["stderr"])
    )
    for result in results:
        assert not events(result, "done")
        assert result["ended"] - failure["time"] < step_timeout + EXIT_BOUND


WATCHDOG_PROGRAM = """
import sys, time
from soraj.distributed import StepWatchdog
watchdog = StepWatchdog(1.0, "eval step")
for step in range(7):  # 7 steps of 0.2 s: 1.4 s in all, but each well under the timeout
    with watchdog.step(step):
        time.sleep(0.2)
print("short steps passed", flush=True)
time.sleep(1.5)  # between steps nothing is timed
watchdog.step_started(7)
time.sleep(30)
print("not reached", flush=True)
"""


def test_watchdog_times_each_step_and_exits_with_its_code():
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-c", WATCHDOG_PROGRAM],
        capture_output=True,
        text=True,
        timeout=LAUNCH_DEADLINE,
        cwd=WORKER.parent.parent,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert result.returncode == distributed.STEP_TIMEOUT_EXIT_CODE, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["short steps passed"]
    assert "eval step 7 on process 0 has run" in result.stderr
    assert "over the step timeout of 1 s" in result.stderr
    assert time.time() - started < 20


# ---- Validation (no processes started) -------------------------------------------------------


def distributed_config(**fields) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    scale_out.add_fields(config)
    config.distributed.initialize = True
    config.distributed.update(fields)
    return config.distributed


@pytest.fixture
def no_distributed_env(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_processes=2, process_id=0), "without a coordinator_address"),
        (dict(num_processes=2), "num_processes and process_id go together"),
        (dict(process_id=1), "num_processes and process_id go together"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), "process_id=2 is out"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=-3), "process_id=-3 must"),
        (dict(coordinator_address="h:1", num_processes=-1, process_id=0), "num_processes=-1"),
        (dict(coordinator_address="nohost", num_processes=1, process_id=0), "'host:port'"),
        (dict(coordinator_address="h:70000", num_processes=1, process_id=0), "'host:port'"),
        (dict(initialization_timeout=0), "initialization_timeout=0 must be an integer ≥ 1"),
        (dict(heartbeat_timeout=-5), "heartbeat_timeout=-5 must be an integer ≥ 1"),
        (dict(step_timeout=-1), "step_timeout=-1 must be an integer ≥ 0"),
    ],
)
def test_initialize_refuses_bad_config(no_distributed_env, fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        distributed.initialize(distributed_config(**fields))


def test_initialize_refuses_bad_environment(no_distributed_env):
    no_distributed_env.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize(distributed_config())
    no_distributed_env.setenv("JAX_NUM_PROCESSES", "2")
    no_distributed_env.setenv("JAX_PROCESS_ID", "5")
    with pytest.raises(ValueError, match="without a coordinator_address"):
        distributed.initialize(distributed_config())
    no_distributed_env.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    with pytest.raises(ValueError, match="process_id=5 is out of range: allowed 0 .. 1"):
        distributed.initialize(distributed_config())


def test_initialize_off_does_nothing(no_distributed_env):
    config = distributed_config(num_processes=2)  # invalid, but never looked at when off
    config.initialize = False
    distributed.initialize(config)


def test_watchdog_refuses_a_negative_timeout():
    with pytest.raises(
        ValueError,
        match=r"step timeout \(config.distributed.step_timeout\) must be a number of seconds ≥ 0",
    ):
        distributed.StepWatchdog(-1)
