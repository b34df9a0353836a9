"""Multi-host runtime: `jax.distributed` start-up from config or environment, the primary
process, a step watchdog, and a `run_main` that turns one process's failure into every
process exiting non-zero instead of a hang.

What JAX 0.10.2 does when a peer dies (measured with 2 processes on localhost, gloo CPU
collectives; tests/test_distributed.py rechecks what this module relies on):
- A process that ends *without* `jax.distributed.shutdown` (SIGKILL, `os._exit`) stops sending
  heartbeats. After `heartbeat_timeout` the coordination service (on process 0) reports it to
  every other process, whose client aborts the process (SIGABRT, exit status 134 / -6), even
  when it is blocked in a collective.
- If that process is process 0, the service ends with it and every peer fails at once (a gloo
  collective raises "Connection closed by peer"; the client aborts).
- A process that *raises* and leaves Python normally runs JAX's atexit hook, which waits at the
  shutdown barrier for every peer. Peers blocked in a collective never arrive, so it waits the
  whole shutdown timeout (300 s by default) before everyone aborts. `run_main` skips that hook.
- A process that hangs keeps sending heartbeats (a C++ thread does it), so nothing in JAX
  notices; its peers wait in the collective. Only `StepWatchdog` ends it.
So a failure that `run_main` or the watchdog sees is also written to every peer's key in the
coordination service's key-value store, where a thread of each peer waits for it: the peers
exit at once instead of after heartbeat_timeout. A killed process still relies on heartbeats.
"""

import atexit
import contextlib
import faulthandler
import os
import sys
import threading
import time
import traceback

import jax
import ml_collections

# Exit codes: 1 an exception (run_main); 2 usage errors; 75 preempted (fault_tolerance.py);
# 134 JAX's abort when the coordination service reports a dead peer. 76 is sysexits.h's
# EX_PROTOCOL ("remote error in protocol"): a step that never finished, most often a collective
# waiting for a peer that died or hung.
FAILED_EXIT_CODE = 1
STEP_TIMEOUT_EXIT_CODE = 76

# Read when config.distributed leaves a field empty (JAX itself only reads the address).
ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# One key per process in the coordination service: a peer's failure notice, or EXIT_NOTICE
# that its own failure monitor may stop because the process is ending normally.
FAILURE_KEY = "soraj/failure/{}"
EXIT_NOTICE = "exit"
COORDINATOR_GRACE_S = 1.0


# ---- Start-up ---------------------------------------------------------------------------------


def initialize(distributed_config: ml_collections.ConfigDict) -> None:
    """Starts jax.distributed when `distributed_config.initialize` is true; else does nothing.

    Empty fields (coordinator_address "", num_processes 0, process_id -1) come from
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, and when those are unset too,
    from JAX's cluster detection (TPU VM, SLURM, Open MPI, Kubernetes). Must run before any
    other JAX call. A second call once jax.distributed is running does nothing.
    """
    if not distributed_config.initialize or jax.distributed.is_initialized():
        return
    address, num_processes, process_id = _resolve(distributed_config)
    # Cross-process collectives on the CPU backend need an implementation; JAX before 0.5 left
    # it unset, and then a psum across processes fails. Only the CPU backend reads it.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(distributed_config.initialization_timeout),
            heartbeat_timeout_seconds=int(distributed_config.heartbeat_timeout),
        )
    except ValueError as error:  # JAX found neither values nor a cluster to read them from
        raise ValueError(
            f"config.distributed.initialize is true but {error} No cluster (TPU VM, SLURM, "
            "Open MPI, Kubernetes) was detected: set config.distributed.coordinator_address, "
            f"num_processes and process_id, or {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES} "
            f"and {ENV_PROCESS_ID}."
        ) from error
    _start_failure_monitor()


def _resolve(config: ml_collections.ConfigDict) -> tuple[str | None, int | None, int | None]:
    """(address, num_processes, process_id) from config then env; None = left to JAX."""
    for field, minimum in (("initialization_timeout", 1), ("heartbeat_timeout", 1)):
        _check_int(f"config.distributed.{field}", getattr(config, field), minimum)
    _check_int("config.distributed.step_timeout", config.step_timeout, 0)
    address = config.coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS) or None
    num_processes = _field_or_env(config.num_processes, 0, 1, "num_processes", ENV_NUM_PROCESSES)
    process_id = _field_or_env(config.process_id, -1, 0, "process_id", ENV_PROCESS_ID)

    if (num_processes is None) != (process_id is None):
        raise ValueError(
            "config.distributed.num_processes and process_id go together: give both (or "
            f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}), or neither to read them from the cluster;"
            f" got num_processes={num_processes}, process_id={process_id}"
        )
    if num_processes is not None:
        if address is None:
            raise ValueError(
                f"config.distributed.num_processes={num_processes} was given without a "
                f"coordinator_address: set config.distributed.coordinator_address or "
                f"{ENV_COORDINATOR_ADDRESS} to process 0's 'host:port'"
            )
        _check_int("config.distributed.num_processes", num_processes, 1)
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"config.distributed.process_id={process_id} is out of range: allowed 0 .. "
                f"{num_processes - 1} for num_processes={num_processes}"
            )
    if address is not None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"config.distributed.coordinator_address={address!r} is not 'host:port' with a "
                "port in 1..65535 (e.g. '10.0.0.1:1234')"
            )
    return address, num_processes, process_id


def _field_or_env(value, unset: int, minimum: int, field: str, env: str) -> int | None:
    if value != unset:
        _check_int(f"config.distributed.{field}", value, minimum)
        return int(value)
    text = os.environ.get(env, "").strip()
    if not text:
        return None
    if not text.lstrip("-").isdigit():
        raise ValueError(f"{env}={text!r} is not an integer")
    return int(text)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer ≥ {minimum}")


def is_primary() -> bool:
    """True on process 0, the one process that writes logs, media and metrics files."""
    return jax.process_index() == 0


# ---- Step watchdog ----------------------------------------------------------------------------


class StepWatchdog:
    """Ends the process when one step runs longer than `timeout_s` (0: off).

    A collective waiting for a dead or hung peer cannot be interrupted from Python, so a daemon
    thread checks the clock and calls os._exit(STEP_TIMEOUT_EXIT_CODE). The step loop only
    stores a number and a time per step: nothing in it blocks. With async dispatch a step's
    Python call returns early; a stuck collective shows up as the first later step that waits
    on it (fetching metrics, the next step's donated buffers), which is the step named.
    """

    def __init__(self, timeout_s: float, describe: str = "step"):
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s < 0:
            raise ValueError(
                f"the step timeout (config.distributed.step_timeout) must be a number of seconds "
                f"≥ 0 (0: off), got {timeout_s!r}"
            )
        self.timeout_s, self.describe = float(timeout_s), describe
        # (step, monotonic start) of the running step, or None between steps. One attribute,
        # so the watching thread never sees a step paired with another step's start.
        self._current = None
        self._stop = threading.Event()
        self._thread = None
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="StepWatchdog", daemon=True)
            self._thread.start()

    def step_started(self, step: int) -> None:
        self._current = (step, time.monotonic())

    def step_finished(self) -> None:
        self._current = None

    @contextlib.contextmanager
    def step(self, step: int):
        """`with watchdog.step(k): ...` times one step."""
        self.step_started(step)
        try:
            yield
        finally:
            self.step_finished()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        poll = min(1.0, self.timeout_s / 10)
        while not self._stop.wait(poll):
            current = self._current
            if current is None or time.monotonic() - current[1] <= self.timeout_s:
                continue
            step, started = current
            print(
                f"StepWatchdog: {self.describe} {step} on {_this_process()} has run "
                f"{time.monotonic() - started:.1f} s, over the step timeout of {self.timeout_s:g} "
                "s (config.distributed.step_timeout). Most often a peer process died or hung and "
                "left this one waiting in a collective. Exiting with code "
                f"{STEP_TIMEOUT_EXIT_CODE}; Python stacks follow.",
                file=sys.stderr,
                flush=True,
            )
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            _tell_peers(f"{_this_process()} hit the step timeout in {self.describe} {step}")
            _exit_now(STEP_TIMEOUT_EXIT_CODE)


# ---- Failure propagation ----------------------------------------------------------------------


def run_main(main, *args, **kwargs):
    """Calls main(*args, **kwargs); with several processes, an exception ends this one at once.

    The exception's traceback is printed, every peer is told (their failure monitors exit with
    FAILED_EXIT_CODE), then os._exit(FAILED_EXIT_CODE) skips JAX's shutdown barrier, which would
    wait for peers stuck in a collective (see the module docstring). os._exit also skips other
    atexit hooks and unflushed file buffers, so writers must flush each record. SystemExit (a
    coordinated exit, e.g. preemption) and single-process runs keep Python's normal exit.
    """
    try:
        return main(*args, **kwargs)
    except Exception:
        # Not jax.process_count(): that could start the backend, which talks to the peers.
        if not jax.distributed.is_initialized():
            raise
        print(f"{_this_process()} failed:", file=sys.stderr)
        traceback.print_exc()
        error = traceback.format_exception_only(*sys.exc_info()[:2])[-1].strip()
        _tell_peers(f"{_this_process()} failed: {error}")
        _exit_now(FAILED_EXIT_CODE)


def _jax_distributed_state():
    # The coordination service's client and this process's id; orbax reaches them the same way.
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state


def _this_process() -> str:
    # Not jax.process_index(): before the first computation it would start the backend, which
    # exchanges topology with peers that may be dead.
    state = _jax_distributed_state()
    return f"process {state.process_id if state.client is not None else 0}"


def _start_failure_monitor() -> None:
    """A daemon thread that waits for this process's failure key and exits when a peer fails."""
    state = _jax_distributed_state()
    client, key = state.client, FAILURE_KEY.format(state.process_id)
    monitor = threading.Thread(target=_wait_for_failure, args=(client, key), daemon=True)
    monitor.start()

    def stop() -> None:
        # A daemon thread still inside the client's C++ call when Python finalizes aborts the
        # process (measured: "FATAL: exception not rethrown"), so it is woken and joined first.
        # atexit runs this before JAX's own shutdown hook, registered earlier.
        with contextlib.suppress(Exception):  # already set by a failing peer, or shut down
            client.key_value_set(key, EXIT_NOTICE)
        monitor.join(timeout=10)

    atexit.register(stop)


def _wait_for_failure(client, key: str) -> None:
    while True:
        try:
            notice = client.blocking_key_value_get(key, 2**31 - 1)  # ms, about 24 days
            break
        except Exception as error:
            if "DEADLINE_EXCEEDED" in str(error):
                continue
            return  # shut down, or the coordinator died: JAX's heartbeats take over
    if notice == EXIT_NOTICE:
        return
    print(f"{_this_process()} stops because {notice}", file=sys.stderr, flush=True)
    if _jax_distributed_state().process_id == 0:
        # Process 0 hosts the coordination service; when it ends, every other process aborts
        # (status 134). The wait lets the failing process end first, with its own exit code.
        time.sleep(COORDINATOR_GRACE_S)
    _exit_now(FAILED_EXIT_CODE)


def _tell_peers(notice: str) -> None:
    """Writes notice to every peer's failure key; gives up after 5 s (the coordinator may hang)."""
    state = _jax_distributed_state()
    if state.client is None:
        return

    def send() -> None:
        # Process 0 last: the others are told while its coordination service is surely up.
        for process in reversed(range(state.num_processes)):
            if process != state.process_id:
                with contextlib.suppress(Exception):  # that peer's key is already set
                    state.client.key_value_set(FAILURE_KEY.format(process), notice)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=5)


def _exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
