"""Resident memory of this process, for the export report (docs/checkpoints.md, "Memory").

The exporter promises a bound on its peak resident set, so it measures it: VmHWM/VmRSS from
/proc on Linux, getrusage's ru_maxrss elsewhere (peak only; KiB on Linux, bytes on macOS).
"""

from __future__ import annotations

import sys


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (MiB), None where it cannot be read."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float | None:
    """Resident memory now (MiB): what a phase left behind, beside the peak it reached."""
    return _proc_status_mb("VmRSS")


class PhaseMemory:
    """Peak and current resident memory after each named phase of one export.

    The peak is the process's running maximum, so the phase whose entry first shows a value is
    the phase that reached it."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    def mark(self, phase: str) -> None:
        peak, now = peak_rss_mb(), rss_mb()
        entry = {}
        if peak is not None:
            entry["peak_rss_mib"] = round(peak, 1)
        if now is not None:
            entry["rss_mib"] = round(now, 1)
        self.phases[phase] = entry

    def report(self) -> dict:
        peak = peak_rss_mb()
        return {"peak_rss_mib": None if peak is None else round(peak, 1), "phases": dict(self.phases)}
