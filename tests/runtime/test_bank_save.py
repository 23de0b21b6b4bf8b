"""`Bank.save` replaces a bank directory atomically: a crash at any step of the switch leaves the old
bank or the new one, and the next `load` (or `save`) finishes or undoes what was left half done."""

import os
import shutil

import numpy as np
import pytest

from runtime import banks
from runtime.banks import BANK_JSON, Bank, bank_lock, sibling
from tests.runtime.test_banks import random_factors
from tests.runtime.toy_backend import TOY_CONFIG


def one_bank(seed: int) -> Bank:
    bank = Bank.for_model(TOY_CONFIG)
    bank.add_adapter(f"adapter{seed}", 1, random_factors(bank, np.random.default_rng(seed)))
    return bank


def names(directory) -> list[str]:
    return list(Bank.load(directory).adapters)


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    ("replace_call", "survivor"),
    [
        (1, "adapter1"),  # before the old bank is renamed aside: the old bank, untouched
        (2, "adapter2"),  # old aside, new not yet in: no bank directory; recovery puts the new in
    ],
)
def test_a_crash_at_each_rename_leaves_a_whole_bank(tmp_path, monkeypatch, replace_call, survivor):
    directory = tmp_path / "bank"
    one_bank(1).save(directory)
    calls = {"n": 0}
    real_replace = os.replace

    def crashing_replace(source, target):
        calls["n"] += 1
        if calls["n"] == replace_call:
            raise Crash
        real_replace(source, target)

    monkeypatch.setattr(banks.os, "replace", crashing_replace)
    with pytest.raises(Crash):
        one_bank(2).save(directory)
    monkeypatch.setattr(banks.os, "replace", real_replace)
    assert names(directory) == [survivor]
    assert not sibling(directory, ".new").exists() and not sibling(directory, ".old").exists()
    one_bank(3).save(directory)  # and the next save goes through
    assert names(directory) == ["adapter3"]


def test_a_crash_while_writing_the_new_half_leaves_the_old_bank(tmp_path, monkeypatch):
    directory = tmp_path / "bank"
    one_bank(1).save(directory)

    def crashing_write(path, values):
        raise Crash

    monkeypatch.setattr(banks, "write_f32", crashing_write)
    with pytest.raises(Crash):
        one_bank(2).save(directory)
    assert sibling(directory, ".new").exists()  # a partial half, without its bank.json
    assert names(directory) == ["adapter1"]
    assert not sibling(directory, ".new").exists()


def test_a_crash_after_the_switch_leaves_the_new_bank_and_the_old_half_is_removed(tmp_path):
    directory = tmp_path / "bank"
    one_bank(1).save(directory)
    shutil.copytree(directory, sibling(directory, ".old"))  # as if deleting it had not happened
    one_bank(2).save(tmp_path / "other")
    shutil.rmtree(directory)
    shutil.copytree(tmp_path / "other", directory)
    assert names(directory) == ["adapter2"]
    assert not sibling(directory, ".old").exists()


def test_with_only_the_old_half_left_it_is_put_back(tmp_path):
    """A half-written new half (no bank.json) and the old one aside: the old bank comes back."""
    directory = tmp_path / "bank"
    one_bank(1).save(directory)
    os.replace(directory, sibling(directory, ".old"))
    sibling(directory, ".new").mkdir()
    assert names(directory) == ["adapter1"]
    assert (directory / BANK_JSON).is_file()


def test_the_writer_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
    """A writer holding the lock may load the bank, and a load may have to recover it (which takes
    the lock): that must not deadlock; another thread waits until the writer is done."""
    import threading

    directory = tmp_path / "bank"
    one_bank(1).save(directory)
    os.replace(directory, sibling(directory, ".old"))  # a crashed save to recover
    done = threading.Event()
    with bank_lock(directory):
        assert names(directory) == ["adapter1"]  # recovered inside the held lock
        thread = threading.Thread(target=lambda: (bank_lock_and(directory), done.set()))
        thread.start()
        assert not done.wait(0.3)  # held: the other thread waits
    thread.join(10)
    assert done.is_set()


def bank_lock_and(directory) -> None:
    with bank_lock(directory):
        one_bank(2).save(directory)


def test_save_leaves_no_lock_file_beside_a_bank_it_writes(tmp_path):
    """An exporter writing a model's banks/ must not add files the model's manifest would list."""
    one_bank(1).save(tmp_path / "banks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["banks"]
