"""Transparent huge pages for the buffers XLA:CPU allocates every step.

XLA:CPU allocates the buffers of each execution afresh and frees them when it ends, and a
train step walks hundreds of MiB of them. glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35
and later) makes malloc advise transparent huge pages for the memory it maps, so those
buffers sit on 2 MiB pages instead of 4 KiB ones: far fewer page faults when fresh memory is
touched (tests/test_cpu_runtime.py: a fresh 256 MiB block faults 65,537 times without, about
640 with) and far fewer TLB entries to walk. `experiments/bench/cpu_runtime.py` measures what
it is worth for the DiT train step.

Tunables are read when a process starts, so the `soraj` command runs itself again, once,
with the tunable added to GLIBC_TUNABLES, before it imports JAX. Set SORAJ_HUGE_PAGES=0 to
run without. Where huge pages cannot apply (not Linux with glibc ≥ 2.35, or the kernel's
transparent huge pages set to `never`) the command runs as it is.
"""

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "SORAJ_HUGE_PAGES"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_requested(environ) -> bool:
    """SORAJ_HUGE_PAGES: "1" (the default) or "0"; anything else is an error."""
    value = environ.get(SWITCH, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{SWITCH} must be 0 or 1, got {value!r}")
    return value == "1"


def huge_pages_possible() -> bool:
    """Linux, glibc ≥ 2.35 (the hugetlb tunable), and transparent huge pages not `never`."""
    libc, version = platform.libc_ver()
    if sys.platform != "linux" or libc != "glibc" or not version:
        return False
    if tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def with_huge_pages(environ) -> dict[str, str]:
    """A copy of environ whose GLIBC_TUNABLES asks malloc for huge pages; tunables already
    there are kept, and a hugetlb value already there wins."""
    environ = dict(environ)
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.split("=")[0] == TUNABLE for t in tunables):
        tunables.append(f"{TUNABLE}=1")
    environ["GLIBC_TUNABLES"] = ":".join(tunables)
    return environ


def command_environment(environ) -> dict[str, str]:
    """The environment the soraj command runs in: environ with huge pages where requested and
    possible."""
    if huge_pages_requested(environ) and huge_pages_possible():
        return with_huge_pages(environ)
    return dict(environ)


def prepare_command_process() -> None:
    """Give this process the command's environment. Call it first thing in a command-line
    entry point, before JAX is imported: a new GLIBC_TUNABLES takes a fresh process, so this
    one is then replaced by the same command (once)."""
    environ = command_environment(os.environ)
    if environ.get("GLIBC_TUNABLES", "") != os.environ.get("GLIBC_TUNABLES", ""):
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
