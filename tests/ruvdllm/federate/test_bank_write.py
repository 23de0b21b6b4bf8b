"""Replacing a bank's adapters is atomic: a process killed at any moment of a merge leaves a bank
that loads, holding either the old adapters or the new ones, and the record of what was merged
switches with them."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.artifact import Features
from runtime.banks import Bank
from ruvdllm.federate import bank_write
from ruvdllm.federate.bank_write import merged_releases, next_name, remove_unreferenced, replace_adapters
from tests.ruvdllm.federate.banks import random_factors, small_bank

REPO = Path(__file__).resolve().parents[3]


def factor_bytes(bank: Bank, slot: int) -> bytes:
    return concat(next(a for a in bank.adapters.values() if a.slot == slot).factors)


def test_names_count_merged_versions():
    assert next_name("coarse") == "coarse.fed1"
    assert next_name("coarse.fed1") == "coarse.fed2"
    assert next_name("coarse.fed41") == "coarse.fed42"


def test_a_replacement_switches_the_adapter_and_its_merge_record(tmp_path):
    rng = np.random.default_rng(0)
    small_bank(rng).save(tmp_path / "bank")
    bank = Bank.load(tmp_path / "bank")
    new = random_factors(bank, rng)
    replace_adapters(tmp_path / "bank", bank, {2: ("coarse", new, ["hub:1"])})
    loaded = Bank.load(tmp_path / "bank")
    assert sorted(loaded.adapters) == ["coarse.fed1", "domain", "fine"]
    assert loaded.adapters["coarse.fed1"].factors["q_proj"][0].tobytes() == new["q_proj"][0].tobytes()
    assert merged_releases(tmp_path / "bank", loaded) == {"hub:1"}
    assert sorted(p.name for p in (tmp_path / "bank" / "adapters").iterdir()) == [
        "coarse.fed1",
        "domain",
        "fine",
    ]


@pytest.mark.parametrize("crash_at", ["before the switch", "after the switch"])
def test_an_interrupted_merge_leaves_a_whole_bank_and_the_next_one_cleans_up(tmp_path, monkeypatch, crash_at):
    rng = np.random.default_rng(1)
    small_bank(rng).save(tmp_path / "bank")
    old = factor_bytes(Bank.load(tmp_path / "bank"), 2)

    class Crash(BaseException):
        pass

    def crash(*args):
        raise Crash

    target = "replace" if crash_at == "before the switch" else "remove_unreferenced"
    monkeypatch.setattr(bank_write.os if target == "replace" else bank_write, target, crash)
    bank = Bank.load(tmp_path / "bank")
    with pytest.raises(Crash):
        replace_adapters(tmp_path / "bank", bank, {2: ("coarse", random_factors(bank, rng), ["hub:1"])})
    monkeypatch.undo()
    loaded = Bank.load(tmp_path / "bank")
    if crash_at == "before the switch":
        assert factor_bytes(loaded, 2) == old and merged_releases(tmp_path / "bank", loaded) == set()
    else:
        assert factor_bytes(loaded, 2) != old and merged_releases(tmp_path / "bank", loaded) == {"hub:1"}
    remove_unreferenced(tmp_path / "bank", loaded)  # what the next federation step does first
    names = sorted(p.name for p in (tmp_path / "bank" / "adapters").iterdir())
    assert names == sorted(loaded.adapters)
    assert not (tmp_path / "bank" / "bank.json.tmp").exists()


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from runtime.banks import Bank
    from ruvdllm.federate.bank_write import replace_adapters, remove_unreferenced
    from tests.ruvdllm.federate.banks import random_factors

    directory = sys.argv[1]
    bank = Bank.load(directory)
    remove_unreferenced(directory, bank)
    n = 0
    while True:  # merge after merge, alternating two known factor sets, until killed
        n += 1
        factors = random_factors(bank, np.random.default_rng(n % 2))
        replace_adapters(directory, bank, {2: ("coarse", factors, [f"hub:{n}"])})
        if n == 1:
            print("writing", flush=True)
    """
)


def test_a_merge_killed_at_random_moments_always_leaves_a_loadable_bank(tmp_path):
    big = {
        "q_proj": Features(256, 256),
        "v_proj": Features(256, 64),
    }  # big enough that a write takes milliseconds
    bank = small_bank(np.random.default_rng(2), layers=4, targets=big)
    bank.save(tmp_path / "bank")
    sets = [concat(random_factors(bank, np.random.default_rng(n))) for n in (0, 1)]  # the writer's two
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    chooser = random.Random(3)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "bank")], cwd=REPO, env=env, stdout=subprocess.PIPE
        )
        assert child.stdout.readline() == b"writing\n"
        time.sleep(chooser.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)  # no cleanup, no finally: what a crash or the OOM killer does
        child.wait(10)
        loaded = Bank.load(tmp_path / "bank")
        (merged,) = merged_releases(tmp_path / "bank", loaded)  # the record switched with the factors
        assert factor_bytes(loaded, 2) == sets[int(merged.split(":")[1]) % 2]


def concat(factors: dict) -> bytes:
    return b"".join(a.tobytes() + b.tobytes() for _, (a, b) in sorted(factors.items()))
