"""The lean allocator: with it, memory freed between pinned small allocations goes back to the
OS; the run is in a child process, since the setting lasts for the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ruvdllm_export.convert.allocator import use_lean_allocator

    def rss_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "lean":
        assert use_lean_allocator() is True
    # warm the heap up the way training steps do: a big block freed raises glibc's threshold
    np.ones(8 << 20, np.uint8)
    before = rss_mib()
    big, pins = [], []
    for _ in range(48):  # 48 x 4 MiB, each followed by a small block that pins the heap above it
        big.append(np.ones(4 << 20, np.uint8))
        pins.append(np.ones(4096, np.uint8))
    del big
    print(round(rss_mib() - before))
    """
)


def _kept_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_lean_allocator_gives_freed_tensors_back():
    """192 MiB freed: the lean allocator keeps (almost) none of it."""
    assert _kept_mib("lean") < 32
