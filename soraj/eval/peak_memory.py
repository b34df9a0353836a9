"""Peak memory of a block of work, above the level when it started.

On an accelerator: the device's peak_bytes_in_use minus bytes_in_use at entry (the device peak
is process-long, so a block that allocates less than an earlier one reads as 0).
On CPU: the process's peak resident set during the block minus the resident set at entry, with
the kernel's high-water mark reset at entry (/proc/self/clear_refs, Linux).
"""

import resource
from pathlib import Path

import jax


def _resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS missing from /proc/self/status")


class PeakMemory:
    """with PeakMemory() as peak: work() → peak.bytes, peak.kind."""

    def __enter__(self) -> "PeakMemory":
        self.device = jax.devices()[0]
        stats = self.device.memory_stats() if jax.default_backend() != "cpu" else None
        self.kind = "device peak_bytes_in_use" if stats else "process peak RSS"
        if stats:
            self._before = stats["bytes_in_use"]
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS high-water mark
            self._before = _resident_bytes()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.kind.startswith("device"):
            peak = self.device.memory_stats()["peak_bytes_in_use"]
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.bytes = max(0, int(peak - self._before))
