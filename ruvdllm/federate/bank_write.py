"""Replace some adapters of a bank on disk atomically: a crash at any moment leaves either the old
bank or the new one, each whole, and never a bank that half-merged a release.

`Bank.save` rebuilds the whole directory and swaps it in (two renames, recovered on open), which
also drops the files beside the bank (loop B's state, pattern scores, these merge records). Here
nothing the current `bank.json` refers to is touched:

    1. each new adapter goes into a folder of a new name (`coarse` -> `coarse.fed1` -> `coarse.fed2`),
       with `merged.json` listing every release merged into it so far; files fsynced
    2. the new `bank.json` is written beside the old one and renamed over it (atomic on POSIX and
       Windows), then the directory is fsynced
    3. adapter folders the new `bank.json` does not name are deleted (left-overs of step 1 from a
       crash are deleted the same way on the next merge)

Before step 2 the old bank.json names only old, untouched folders; after it, the new one names only
complete folders. The releases merged are recorded inside the bank they changed, so "merged once"
holds through a crash as well: there is no second file to fall out of step with the bank.

Writers of one bank (a federation step, loop B adding adapters, loop C consolidating) exclude each
other with runtime.banks.bank_lock (`<bank>.lock` beside it), and read the bank again once they hold it.
Readers (a model loading the bank) take no lock: they see one bank.json or the other.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from runtime.banks import BANK_JSON, Bank, fsync_path, write_f32
from ruvdllm.errors import RuvdllmError

MERGED_JSON = "merged.json"  # in an adapter's folder: the release ids merged into it, oldest first
_VERSION = re.compile(r"^(?P<base>.+?)\.fed(?P<n>[0-9]+)$")


def merged_releases(directory: Path, bank: Bank) -> set[str]:
    """Every release id merged into the bank's current adapters."""
    seen: set[str] = set()
    for adapter in bank.adapters.values():
        path = Path(directory) / "adapters" / adapter.name / MERGED_JSON
        if path.is_file():
            try:
                seen.update(json.loads(path.read_text())["releases"])
            except (ValueError, KeyError, TypeError):
                raise RuvdllmError(f"{path}: not a merge record") from None
    return seen


def next_name(name: str) -> str:
    """The adapter's name for its next merged version: `coarse` -> `coarse.fed1` -> `coarse.fed2`."""
    match = _VERSION.match(name)
    return f"{match['base']}.fed{int(match['n']) + 1}" if match else f"{name}.fed1"


def replace_adapters(directory: Path, bank: Bank, new: dict[int, tuple[str, dict, list[str]]]) -> None:
    """Write `new` {slot: (base name, factors per target, releases merged into it)} into the bank at
    `directory` (loaded as `bank`, updated in place) as one atomic change."""
    directory = Path(directory)
    written = []
    for slot, (base, factors, releases) in sorted(new.items()):
        old = next((a for a in bank.adapters.values() if a.slot == slot), None)
        name = next_name(old.name if old is not None else base)
        while (directory / "adapters" / name).exists():  # a left-over of a crashed merge
            name = next_name(name)
        bank.add_adapter(name, slot, factors)
        written.append((name, releases))
    for name, releases in written:  # step 1: new folders only
        folder = directory / "adapters" / name
        folder.mkdir(parents=True)
        for target, (a, b) in bank.adapters[name].factors.items():
            write_f32(folder / f"{target}.a.f32", a)
            write_f32(folder / f"{target}.b.f32", b)
        (folder / MERGED_JSON).write_text(json.dumps({"releases": releases}))
        for path in folder.iterdir():
            fsync_path(path)
        fsync_path(folder)
    staging = directory / (BANK_JSON + ".tmp")  # step 2: the switch
    staging.write_text(json.dumps(bank._meta(), indent=2))
    fsync_path(staging)
    os.replace(staging, directory / BANK_JSON)
    fsync_path(directory)
    remove_unreferenced(directory, bank)  # step 3


def remove_unreferenced(directory: Path, bank: Bank) -> None:
    """Delete adapter folders the bank does not name (the versions a merge replaced, or the
    half-written ones of a crashed merge)."""
    folder = Path(directory) / "adapters"
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_dir() and child.name not in bank.adapters:
                shutil.rmtree(child, ignore_errors=True)
    (Path(directory) / (BANK_JSON + ".tmp")).unlink(missing_ok=True)
