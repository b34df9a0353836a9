"""Runs a check script in a subprocess with N fake CPU devices (XLA_FLAGS must be set before
JAX starts, so the test process itself cannot have them)."""

import os
import subprocess
import sys

# Compiling dominates on 2 cores; these flags cut it to about a third. A script's one-device
# reference compiles under the same flags as its sharded programs.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)


def run_check(script, devices: int = 8, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
        JAX_PLATFORMS="cpu",
    )
    return subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(str(script)),
    )
