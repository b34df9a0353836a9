"""The soraj command's huge pages (soraj/cpu_runtime.py): the environment it builds, that they
take effect in the process it re-runs as, and the switch."""

import os
import subprocess
import sys
import textwrap

import pytest

from soraj.cpu_runtime import (
    command_environment,
    huge_pages_possible,
    huge_pages_requested,
    with_huge_pages,
)

# A child that re-runs itself like the soraj command, then counts the page faults of writing
# a fresh 256 MiB malloc block, which glibc takes from a new mapping. (Plain malloc, as XLA's
# allocator uses: numpy advises huge pages for its own large arrays.)
CHILD = textwrap.dedent(
    """
    import ctypes, os, resource
    from soraj.cpu_runtime import prepare_command_process
    prepare_command_process()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    size = 256 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(size), 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(os.environ.get("GLIBC_TUNABLES"), faults)
    """
)
PAGES_4K = 256 * 2**20 // 4096


def test_environment_keeps_other_tunables_and_a_users_choice():
    assert with_huge_pages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    env = with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/x"})
    both = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env == {"GLIBC_TUNABLES": both, "HOME": "/x"}
    chosen = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert with_huge_pages(chosen) == chosen
    assert with_huge_pages(with_huge_pages({})) == with_huge_pages({})


def test_switch_off_leaves_the_environment_as_it_is():
    environ = {"SORAJ_HUGE_PAGES": "0", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert command_environment(environ) == environ


def test_switch_takes_only_0_or_1():
    assert huge_pages_requested({}) and huge_pages_requested({"SORAJ_HUGE_PAGES": "1"})
    assert not huge_pages_requested({"SORAJ_HUGE_PAGES": "0"})
    with pytest.raises(ValueError, match="SORAJ_HUGE_PAGES must be 0 or 1, got 'yes'"):
        huge_pages_requested({"SORAJ_HUGE_PAGES": "yes"})


def _child(**env):
    dropped = ("GLIBC_TUNABLES", *env)
    environ = {k: v for k, v in os.environ.items() if k not in dropped}
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=environ | env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    tunables, faults = done.stdout.split()
    return tunables, int(faults)


@pytest.mark.skipif(not huge_pages_possible(), reason="no glibc ≥ 2.35 with transparent huge pages")
def test_rerun_turns_huge_pages_on_and_cuts_page_faults():
    tunables, faults = _child()
    off_tunables, off_faults = _child(SORAJ_HUGE_PAGES="0")
    assert tunables == "glibc.malloc.hugetlb=1" and off_tunables == "None"
    # Without huge pages every 4 KiB page of the block faults once; with them, 2 MiB at a time
    # (a few 4 KiB faults remain at the unaligned ends and where no huge page was free).
    assert off_faults >= 0.9 * PAGES_4K
    assert faults < 0.1 * PAGES_4K


def test_bad_switch_stops_the_command_before_any_work():
    environ = dict(os.environ, SORAJ_HUGE_PAGES="on")
    done = subprocess.run(
        [sys.executable, "-m", "soraj", "generate"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "SORAJ_HUGE_PAGES must be 0 or 1, got 'on'" in done.stderr
