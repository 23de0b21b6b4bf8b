"""A bank update is atomic: stopped after any of its file operations, the directory loads as the old
bank (before the commit) or the new one (after it), never as something else or not at all."""

import os

import numpy as np
import pytest

from runtime.banks import Bank
from runtime.learning import bank_update
from runtime.learning.bank_update import TEMPORARY, commit_bank, copy_bank, tidy
from runtime.learning.microlora import new_micro


class Crash(Exception):
    pass


def small_bank() -> Bank:
    from runtime.artifact import Features

    bank = Bank(
        layers=2, hidden_size=8, rank=2, slots=5, targets={"q_proj": Features(8, 8), "v_proj": Features(8, 4)}
    )
    rng = np.random.default_rng(0)
    for g in range(3):
        micro = new_micro(g, g, bank.targets, (0, 1), 2, rng)
        micro = micro.with_b(rng.standard_normal(micro.b_vector().size))
        bank.add_adapter(f"group{g}", g, micro.to_bank(2, 2))
    bank.add_patterns(rng.standard_normal((3, 8)).astype(np.float32), [3, 3, 4])
    return bank


def changed(bank: Bank, name: str, seed: int) -> Bank:
    rng = np.random.default_rng(seed)
    new = copy_bank(bank)
    micro = new_micro(1, 3, bank.targets, (1,), 1, rng)
    new.add_adapter(name, 3, micro.with_b(rng.standard_normal(micro.b_vector().size)).to_bank(2, 2))
    new.add_patterns(rng.standard_normal((1, 8)).astype(np.float32), [3])
    return new


def same(a: Bank, b: Bank) -> bool:
    return (
        a._meta() == b._meta()
        and a.pattern_vectors == b.pattern_vectors
        and all(a.adapters[n].factors == b.adapters[n].factors for n in a.adapters)
    )


def operations(monkeypatch, directory, old, new) -> int:
    """How many renames and writes a commit makes (each a point where a crash can land)."""
    count = 0
    real = os.replace

    def counting(*args):
        nonlocal count
        count += 1
        return real(*args)

    monkeypatch.setattr(bank_update.os, "replace", counting)
    commit_bank(directory, new, old)
    monkeypatch.setattr(bank_update.os, "replace", real)
    return count


def test_a_crash_at_any_point_leaves_the_old_or_the_new_bank(tmp_path, monkeypatch):
    old = small_bank()
    new = changed(old, "micro-g1-s3-v1", 1)
    probe = tmp_path / "probe"
    old.save(probe)
    loaded = Bank.load(probe)
    total = operations(monkeypatch, probe, loaded, changed(loaded, "micro-g1-s3-v1", 1))
    assert total >= 4  # adapter files, patterns, bank.json
    outcomes = set()
    for crash_at in range(total + 1):
        directory = tmp_path / f"bank{crash_at}"
        old.save(directory)
        loaded_old = Bank.load(directory)
        calls = 0
        real = os.replace

        def crashing(source, target, crash_at=crash_at, real=real):
            nonlocal calls
            calls += 1
            if calls > crash_at:
                raise Crash(f"power cut before {target}")
            return real(source, target)

        monkeypatch.setattr(bank_update.os, "replace", crashing)
        try:
            commit_bank(directory, changed(loaded_old, "micro-g1-s3-v1", 1), loaded_old)
        except Crash:
            pass
        monkeypatch.setattr(bank_update.os, "replace", real)
        after = Bank.load(directory)  # must load, whatever happened
        assert same(after, old) or same(after, new), crash_at
        outcomes.add("new" if same(after, new) else "old")
        tidy(directory, after)  # what loop B does before its next run
        assert not list(directory.rglob("*" + TEMPORARY))
        again = changed(after, "micro-g1-s3-v2", 2)
        commit_bank(directory, again, after)  # the next update goes through
        assert same(Bank.load(directory), again)
    assert outcomes == {"old", "new"}


def test_a_torn_write_of_the_keys_is_ignored(tmp_path):
    """Keys past bank.json's count (an append that never reached the commit) do not change the bank."""
    old = small_bank()
    old.save(tmp_path / "bank")
    with open(tmp_path / "bank" / "patterns.f32", "ab") as out:
        out.write(b"\x00" * 13)  # a partial key
    assert same(Bank.load(tmp_path / "bank"), old)


def test_the_commit_refuses_what_would_not_be_atomic(tmp_path):
    old = small_bank()
    old.save(tmp_path / "bank")
    old = Bank.load(tmp_path / "bank")
    rewritten = copy_bank(old)
    rewritten.pattern_slots[0] = 4
    with pytest.raises(ValueError, match="appended"):
        commit_bank(tmp_path / "bank", rewritten, old)
    renamed = copy_bank(old)
    renamed.add_adapter(
        "group0", 0, {t: (np.zeros(2 * i * 2), np.zeros(2 * 2 * o)) for t, (i, o) in old.targets.items()}
    )
    with pytest.raises(ValueError, match="new one"):
        commit_bank(tmp_path / "bank", renamed, old)
