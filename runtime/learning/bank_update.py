"""Writing a changed adapter bank in place so that a crash at any moment leaves a usable bank: the
old one until the commit, the new one after it. Standard library only.

A bank is several files (runtime/banks.py); no single rename replaces a directory. So every file
is written beside its final name, flushed to disk (fsync) and renamed over it, in an order that
keeps the old bank.json's view intact until bank.json itself is replaced — the commit point:

    1  adapters/<new name>/*.f32   new names only: the old bank.json never lists them
    2  patterns.f32                keys are only appended, and the loader reads the first
                                   `count` (bank.json's): the old bank sees its own keys
                                   (a key is removed by retiring it: its slot in bank.json
                                   becomes RETIRED, the vector stays, its id never changes)
    3  bank.json                   COMMIT: from here on the new bank
    4  patterns.hnsw               a cache; a stale one is detected by its count and rebuilt
    5  adapter folders bank.json no longer lists, leftover temporaries: removed

Each rename is atomic on POSIX and Windows (os.replace), and the directory is fsynced after it
where the platform allows, so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from array import array
from dataclasses import replace
from pathlib import Path

from runtime.banks import BANK_JSON, PATTERNS_F32, PATTERNS_HNSW, RETIRED, Bank, as_f32, fsync_path

TEMPORARY = ".partial"  # suffix of files being written; removed by `tidy`


def write_atomic(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, never a mixture."""
    temporary = path.with_name(path.name + TEMPORARY)
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_path(path.parent)


def f32_bytes(values) -> bytes:
    """Little-endian float32 bytes, the bank's raw factor format."""
    values = as_f32(values)
    if sys.byteorder == "big":
        values = array("f", values)
        values.byteswap()
    return values.tobytes()


def copy_bank(bank: Bank) -> Bank:
    """A bank to change and commit over `bank`: its own adapter table and pattern arrays, the same
    (unchanged) Adapter objects."""
    return replace(
        bank,
        adapters=dict(bank.adapters),
        pattern_vectors=array("f", bank.pattern_vectors),
        pattern_slots=list(bank.pattern_slots),
    )


def commit_bank(directory: Path, bank: Bank, old: Bank, index=None) -> None:
    """Write `bank` over `old`, both of `directory`, atomically (module docstring). `bank` may only
    have appended patterns to `old`'s or retired some, and added or removed adapters; a changed adapter must have
    a new name (its files are new files, never overwritten)."""
    directory = Path(directory)
    kept = bank.pattern_slots[: len(old.pattern_slots)]
    if any(s not in (o, RETIRED) for s, o in zip(kept, old.pattern_slots, strict=True)):
        raise ValueError("patterns may only be appended or retired")
    for name, adapter in bank.adapters.items():  # 1
        if name in old.adapters:
            if adapter is not old.adapters[name]:
                raise ValueError(f"adapter {name}: changed under its old name (give it a new one)")
            continue
        folder = directory / "adapters" / name
        folder.mkdir(parents=True, exist_ok=True)
        for target, (a, b) in adapter.factors.items():
            write_atomic(folder / f"{target}.a.f32", f32_bytes(a))
            write_atomic(folder / f"{target}.b.f32", f32_bytes(b))
        fsync_path(folder.parent)
    if len(bank.pattern_slots) != len(old.pattern_slots):  # 2
        write_atomic(directory / PATTERNS_F32, f32_bytes(bank.pattern_vectors))
    write_atomic(directory / BANK_JSON, json.dumps(bank._meta(), indent=2).encode())  # 3
    if index is not None and hasattr(index, "save"):  # 4
        temporary = directory / (PATTERNS_HNSW + TEMPORARY)
        index.save(temporary)
        os.replace(temporary, directory / PATTERNS_HNSW)
    else:
        (directory / PATTERNS_HNSW).unlink(missing_ok=True)
    tidy(directory, bank)  # 5


def tidy(directory: Path, bank: Bank) -> None:
    """Remove what a finished or interrupted update left behind: adapter folders `bank` does not
    list, and temporaries."""
    adapters = Path(directory) / "adapters"
    if adapters.is_dir():
        for folder in adapters.iterdir():
            if folder.is_dir() and folder.name not in bank.adapters:
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                for leftover in folder.glob("*" + TEMPORARY):
                    leftover.unlink(missing_ok=True)
    for leftover in Path(directory).glob("*" + TEMPORARY):
        leftover.unlink(missing_ok=True)
