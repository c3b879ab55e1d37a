"""Peak resident memory of this process, from Linux's /proc (shared by the benchmarks' memory children)."""

from __future__ import annotations


def status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: now, VmHWM: the peak since the last reset); 0 if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
