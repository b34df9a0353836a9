"""Shared pytest set-up: CPU only, quiet logs, one persistent compilation cache.

Tests start `soraj train` and sharded checks in subprocesses, which would compile the same
programs the test process already compiled; JAX's persistent cache (read and written by every
process through these environment variables) lets them load the executables instead.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "soraj-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
