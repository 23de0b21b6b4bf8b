"""runtime/resident.py on a real mapping: paged-out pages read back unchanged."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from runtime.resident import mapped_ranges, release_load_memory

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="/proc/self/maps and madvise are Linux's"
)


@linux
def test_a_mapped_file_is_paged_out_and_reads_back_the_same(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, np.uint8)
        assert int(view.sum()) == int(data.sum())  # every page touched, resident
        ranges = mapped_ranges([path])
        assert sum(end - start for start, end in ranges) >= data.size
        released = release_load_memory([path])
        assert released in (0, sum(end - start for start, end in ranges))  # 0: kernel before 5.4
        assert np.array_equal(view, data)
        del view


def test_files_not_mapped_release_nothing(tmp_path):
    path = tmp_path / "never-mapped.bin"
    path.write_bytes(b"x")
    assert release_load_memory([path]) == 0
