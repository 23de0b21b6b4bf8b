"""Resident memory of this process, for the export report (docs/checkpoints.md, "Memory").

The exporter promises a bound on its peak resident set, so it measures it: VmHWM/VmRSS from
/proc on Linux, getrusage's ru_maxrss elsewhere (peak only; KiB on Linux, bytes on macOS).

On Linux the kernel's high-water mark is reset at each phase boundary (writing 5 to
/proc/self/clear_refs), so each phase reports its own peak, not the running maximum; the
export's peak is the largest of them. Elsewhere the peaks are the running maximum.

Each phase boundary also hands the C heap's free pages back to the kernel (glibc's malloc_trim):
numpy's and torch's freed buffers of up to 32 MB stay in the heap otherwise, and the next phase
would start from the previous one's high-water mark (measured: the reference's forwards left
0.24 GB resident after they returned, which onnxruntime's session then sat on top of).
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


def reset_peak() -> bool:
    """Restart the high-water mark (VmHWM) from the current RSS; False where the kernel or the
    platform does not allow it (the peak then keeps running)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Return the C heap's free pages to the kernel where the C library can (glibc); a no-op
    elsewhere. Only pages no object uses are released: nothing is freed or moved."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without it)
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class PhaseMemory:
    """The peak resident memory of each named phase of one export, and the RSS it left.

    Each `mark(phase)` closes a phase: it records the peak since the previous mark (per phase
    where reset_peak works, the running maximum otherwise) and the current RSS. A name marked
    again (one per validation window) keeps the larger peak; "validate.reference" also folds
    into "validate", so the parent shows the peak of all its sub-phases."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.peak: float | None = None
        self.per_phase = reset_peak()

    def mark(self, phase: str) -> None:
        peak = peak_rss_mb()
        release_free_memory()  # what the phase freed, before the next one starts
        now = rss_mb()
        for name in dict.fromkeys((phase, phase.split(".")[0])):
            entry = self.phases.setdefault(name, {})
            if peak is not None:
                entry["peak_rss_mib"] = round(max(peak, entry.get("peak_rss_mib", 0.0)), 1)
            if now is not None:
                entry["rss_mib"] = round(now, 1)
        if peak is not None:
            self.peak = max(peak, self.peak or 0.0)
        if self.per_phase:
            reset_peak()

    def report(self) -> dict:
        peak = peak_rss_mb()  # what ran since the last mark
        if peak is not None:
            self.peak = max(peak, self.peak or 0.0)
        return {
            "peak_rss_mib": None if self.peak is None else round(self.peak, 1),
            "peaks": "per phase" if self.per_phase else "running maximum",
            "phases": dict(self.phases),
        }
