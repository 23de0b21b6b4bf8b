import json
import random

import numpy as np
import pytest

from runtime.banks import BANK_JSON, Bank
from ruvdllm.errors import RuvdllmError
from tests.runtime.toy_backend import TOY_CONFIG


def random_factors(bank: Bank, rng: np.random.Generator) -> dict:
    return {
        t: (
            rng.standard_normal((bank.layers, fan_in, bank.rank)).astype(np.float32),
            rng.standard_normal((bank.layers, bank.rank, fan_out)).astype(np.float32),
        )
        for t, (fan_in, fan_out) in bank.targets.items()
    }


@pytest.fixture
def bank():
    rng = np.random.default_rng(0)
    bank = Bank.for_model(TOY_CONFIG)
    bank.add_adapter("coarse", 2, random_factors(bank, rng))
    bank.add_adapter("code", 4, random_factors(bank, rng))
    bank.add_patterns(rng.standard_normal((6, bank.hidden_size)).astype(np.float32), [3, 4, 4, 3, 4, 3])
    return bank


def test_save_load_round_trip(bank, tmp_path):
    bank.save(tmp_path / "bank")
    loaded = Bank.load(tmp_path / "bank")
    assert loaded.targets == bank.targets and loaded.slots == bank.slots
    assert sorted(loaded.adapters) == ["coarse", "code"]
    for name, adapter in bank.adapters.items():
        for target, (a, b) in adapter.factors.items():
            assert loaded.adapters[name].factors[target][0] == a
            assert loaded.adapters[name].factors[target][1] == b
    assert loaded.pattern_vectors == bank.pattern_vectors
    assert loaded.pattern_slots == bank.pattern_slots
    meta = json.loads((tmp_path / "bank" / BANK_JSON).read_text())
    assert meta["group_names"] == ["fine", "domain", "coarse"]


def test_assemble_puts_each_slot_in_its_columns(bank):
    for target, (fan_in, fan_out) in bank.targets.items():
        a, b = bank.assemble(target)
        a = np.frombuffer(a, dtype=np.float32).reshape(bank.layers, fan_in, bank.slots * bank.rank)
        b = np.frombuffer(b, dtype=np.float32).reshape(bank.layers, bank.slots * bank.rank, fan_out)
        r = bank.rank
        for slot in range(bank.slots):
            adapter = next((x for x in bank.adapters.values() if x.slot == slot), None)
            block_a, block_b = a[:, :, slot * r : (slot + 1) * r], b[:, slot * r : (slot + 1) * r, :]
            if adapter is None:
                assert not block_a.any() and not block_b.any()
            else:
                fa, fb = adapter.factors[target]
                np.testing.assert_array_equal(
                    block_a, np.frombuffer(fa, np.float32).reshape(bank.layers, fan_in, r)
                )
                np.testing.assert_array_equal(
                    block_b, np.frombuffer(fb, np.float32).reshape(bank.layers, r, fan_out)
                )


def test_add_replaces_slot_and_remove(bank):
    rng = np.random.default_rng(1)
    bank.add_adapter("code2", 4, random_factors(bank, rng))
    assert sorted(bank.adapters) == ["coarse", "code2"]
    bank.remove_adapter("code2")
    assert sorted(bank.adapters) == ["coarse"]
    with pytest.raises(RuvdllmError, match="not in the bank"):
        bank.remove_adapter("code2")


def test_nested_lists_are_accepted(bank):
    rng = np.random.default_rng(2)
    factors = {t: (a.tolist(), b.tolist()) for t, (a, b) in random_factors(bank, rng).items()}
    adapter = bank.add_adapter("lists", 0, factors)
    target = next(iter(bank.targets))
    assert list(adapter.factors[target][0]) == pytest.approx(np.asarray(factors[target][0]).ravel().tolist())


def test_bad_inputs(bank, tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(RuvdllmError, match="slot 9"):
        bank.add_adapter("x", 9, random_factors(bank, rng))
    with pytest.raises(RuvdllmError, match="name"):
        bank.add_adapter("../x", 0, random_factors(bank, rng))
    short = {t: (a[:, :, :0], b) for t, (a, b) in random_factors(bank, rng).items()}
    with pytest.raises(RuvdllmError, match="expected"):
        bank.add_adapter("short", 0, short)
    with pytest.raises(RuvdllmError, match="DGR slots"):
        bank.add_patterns([[0.0] * bank.hidden_size], [0])
    with pytest.raises(RuvdllmError, match="hidden size"):
        bank.add_patterns([[0.0] * 3], [3])
    with pytest.raises(RuvdllmError, match="no bank.json"):
        Bank.load(tmp_path)


def test_corrupt_files_and_dimension_mismatch(bank, tmp_path):
    bank.save(tmp_path / "bank")
    factor = next((tmp_path / "bank" / "adapters" / "code").glob("*.a.f32"))
    factor.write_bytes(factor.read_bytes()[:-4])
    with pytest.raises(RuvdllmError, match="bytes, expected"):
        Bank.load(tmp_path / "bank")
    (tmp_path / "bank" / BANK_JSON).write_text("{not json")
    with pytest.raises(RuvdllmError, match="malformed"):
        Bank.load(tmp_path / "bank")

    from dataclasses import replace

    bigger = replace(TOY_CONFIG, hidden_size=16, head_dim=16)
    with pytest.raises(RuvdllmError, match="hidden_size 8 does not match the model's 16"):
        bank.check_model(bigger)
    with pytest.raises(RuvdllmError, match="rank"):
        bank.check_model(replace(TOY_CONFIG, adapter_rank=2))
    bank.check_model(TOY_CONFIG)


def test_index_from_bank_finds_the_pattern(bank, tmp_path):
    for exact in (True, False):
        index = bank.build_index(exact=exact)
        for i in range(len(bank.pattern_slots)):
            slot, similarity = index.search(list(bank.pattern(i)), 1)[0]
            assert slot == bank.pattern_slots[i] and similarity == pytest.approx(1.0, abs=1e-5)
    hnsw = bank.build_index()
    bank.save(tmp_path / "saved", index=hnsw)
    loaded = Bank.load(tmp_path / "saved")
    reloaded = loaded.build_index(tmp_path / "saved")
    query = [random.Random(4).gauss(0, 1) for _ in range(bank.hidden_size)]
    assert same_hits(reloaded.search(query, 3), hnsw.search(query, 3))


def same_hits(a, b):
    return [s for s, _ in a] == [s for s, _ in b] and [x for _, x in a] == pytest.approx([x for _, x in b])
