"""Giving freed tensors' memory back at once, for runs that would not fit otherwise.

glibc's malloc serves an allocation from its heap below a threshold and maps pages of its own
above it, and it raises that threshold (up to 32 MiB) each time a mapped block is freed. So after
a few steps the tensors of a training step — tens of megabytes each — all come from the heap,
and memory freed there stays with the process, fragmented, for later allocations. A conversion
step's peak then holds what the step uses plus what earlier steps left behind: measured on the
Llama-3.2-1B-shaped checkpoint, 4,087-4,237 MiB at the default against 3,592-3,597 MiB with a
fixed 1 MiB threshold (every tensor of a megabyte or more mapped, and unmapped when freed); on
SmolLM2 at the stage-4 settings only 2,294-2,316 against 2,253-2,263 MiB. The price is a fresh
mapping, and page faults, for every large tensor: 25.4 → 29.7 s per step at 1B (+17%), within
the noise on SmolLM2. Hence a mode the trainer turns on only when the run would not fit its
budget otherwise (trainer.py `memory_plan`), or when asked (`--lean-memory`).

mallopt is glibc's own interface; no Python library wraps it (ctypes is the standard way in).
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LEAN_MMAP_THRESHOLD = 1 << 20  # bytes: every tensor of a megabyte or more gets pages of its own


def use_lean_allocator() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for the rest of the process (it stops adapting);
    True when done, False where malloc is not glibc's (another OS, musl), which then keeps its
    own behaviour."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD))
