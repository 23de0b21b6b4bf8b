"""Loop C on the tiny model: MicroLoRAs in DGR slots folded into their group adapter, their slots
freed and their keys retired, the Fisher measured and kept beside the bank, atomically."""

import json

import numpy as np
import pytest

from runtime import artifact
from runtime.banks import RETIRED, Bank
from runtime.cpython_model import open_model
from runtime.dgr import DgrConfig, vote
from runtime.learning.config import LoopCConfig, parse_learning_config
from runtime.learning.consolidate import consolidate
from runtime.learning.ewc import components
from runtime.learning.fisher import FisherState, GroupFisher
from runtime.learning.logits_session import LogitsSession
from runtime.learning.microlora import micro_name
from runtime.settings import GenerationSettings
from ruvdllm.errors import RuvdllmError
from tests.runtime.tiny_artifact import random_bank

GROUP = 1  # the domain group


def micro_factors(bank: Bank, rng, rank: int = 2) -> dict:
    """A rank-`rank` MicroLoRA in the bank's layout (zero-padded columns past its rank)."""
    factors = {}
    for target, (fan_in, fan_out) in bank.targets.items():
        a = np.zeros((bank.layers, fan_in, bank.rank), np.float32)
        b = np.zeros((bank.layers, bank.rank, fan_out), np.float32)
        a[:, :, :rank] = rng.standard_normal((bank.layers, fan_in, rank)) / np.sqrt(fan_in)
        b[:, :rank, :] = rng.standard_normal((bank.layers, rank, fan_out)) * 0.5
        factors[target] = (a, b)
    return factors


def deltas(bank: Bank, name: str) -> dict:
    out = {}
    for target, (fan_in, fan_out) in bank.targets.items():
        fa, fb = bank.adapters[name].factors[target]
        a = np.asarray(fa, np.float64).reshape(bank.layers, fan_in, bank.rank)
        b = np.asarray(fb, np.float64).reshape(bank.layers, bank.rank, fan_out)
        out[target] = a @ b
    return out


@pytest.fixture
def learnt(tiny_model_dir, tmp_path):
    """A learnt bank: random group adapters, two MicroLoRAs of the domain group in the DGR slots
    3 and 4 with a key each, and a key of the model's own pointing at slot 3 too."""
    model = open_model(tiny_model_dir, verify="sizes")
    rng = np.random.default_rng(3)
    bank = random_bank(model.config, seed=1, patterns=0)
    for slot in range(bank.groups, bank.slots):
        bank.remove_adapter(f"slot{slot}")
    bank.add_adapter(micro_name(GROUP, 3, 1), 3, micro_factors(bank, rng))
    bank.add_adapter(micro_name(GROUP, 4, 2), 4, micro_factors(bank, rng))
    keys = rng.standard_normal((3, bank.hidden_size)).astype(np.float32)
    bank.add_patterns(keys, [3, 4, 3])
    bank_dir = tmp_path / "learnt"
    bank.save(bank_dir)
    (bank_dir / "adapters" / "slot1" / "merged.json").write_text('{"releases": ["r1"]}')
    session = LogitsSession(tiny_model_dir / artifact.GRAPH_NAME, model.config)
    prompt = model.encode("Tell me about the licence:")
    examples = {GROUP: [(prompt, model.encode(" the licence grants permission to copy the software"))]}
    return model, session, bank_dir, examples


def run(learnt, **knobs):
    model, session, bank_dir, examples = learnt
    config = LoopCConfig(fisher_blocks=2, **knobs)
    return consolidate(
        bank_dir, config, session, model.config.mask_token_id, model.config.block_size, examples
    )


def test_plain_consolidation_folds_the_micro_loras_into_their_group(learnt):
    model, _, bank_dir, _ = learnt
    before = Bank.load(bank_dir)
    report = run(learnt, ewc_lambda=0.0, fold_into="own")

    (group,) = report.groups
    assert group.group == GROUP and group.adapter == "domain.c1" and report.retired_keys == 3
    assert sorted(group.micros) == [micro_name(GROUP, 3, 1), micro_name(GROUP, 4, 2)]
    assert report.removed == sorted(group.micros)
    bank = Bank.load(bank_dir)
    assert sorted(bank.adapters) == ["domain.c1", "slot0", "slot2"]  # the DGR slots are free
    assert bank.pattern_slots == [RETIRED] * 3  # ids kept, retrieval skips them
    assert vote([(RETIRED, 0.99)], DgrConfig(), bank.groups, bank.slots) == [0.0, 0.0]
    # λ = 0: the best rank-r approximation of group adapter + MicroLoRAs, per layer and target
    old, m3, m4 = (deltas(before, n) for n in ("slot1", micro_name(GROUP, 3, 1), micro_name(GROUP, 4, 2)))
    new = deltas(bank, "domain.c1")
    for target in bank.targets:
        for layer in range(bank.layers):
            u, s, vt = np.linalg.svd(old[target][layer] + m3[target][layer] + m4[target][layer])
            best = (u[:, : bank.rank] * s[: bank.rank]) @ vt[: bank.rank]
            np.testing.assert_allclose(new[target][layer], best, atol=1e-4)
    # the other groups are untouched, the merge record travels with the adapter
    assert bank.adapters["slot0"].factors == before.adapters["slot0"].factors
    assert json.loads((bank_dir / "adapters" / "domain.c1" / "merged.json").read_text()) == {
        "releases": ["r1"]
    }
    assert not (bank_dir / "adapters" / "slot1").exists()
    # the Fisher is kept beside the bank, about the new adapter, one number per component
    state = FisherState.load(bank_dir)
    assert state.groups[GROUP].adapter == "domain.c1"
    for target in bank.targets:
        fisher = state.groups[GROUP].fisher[target]
        assert fisher.shape == (bank.layers, bank.rank) and np.all(fisher >= 0) and fisher.sum() > 0
    # nothing left to fold: the next run changes nothing
    again = run(learnt, ewc_lambda=0.0, fold_into="own")
    assert again.groups == [] and Bank.load(bank_dir)._meta() == bank._meta()
    # and a model samples with it: retired keys are searched but never vote
    learnt_model = open_model(model.directory, bank=bank_dir, verify="sizes")
    learnt_model.generate("Tell me about the licence:", GenerationSettings(length=8))


def test_by_default_every_group_adapter_takes_the_micro_loras(learnt):
    """DGR applied a MicroLoRA at every timestep, and TALoRA's group weights sum to 1 at every t, so
    adding it to every group adapter keeps what it did: at rank large enough to hold the sum, each
    group's new delta is its old one plus the MicroLoRAs', and the mixture at any t gains exactly
    their sum. Each MicroLoRA is removed once and its keys retired once."""
    model, _, bank_dir, examples = learnt
    before = Bank.load(bank_dir)
    micros = [micro_name(GROUP, 3, 1), micro_name(GROUP, 4, 2)]
    report = run(learnt, ewc_lambda=0.0)

    assert [g.group for g in report.groups] == [0, 1, 2]
    assert all(sorted(g.micros) == micros for g in report.groups)
    assert report.removed == micros and report.retired_keys == 3
    bank = Bank.load(bank_dir)
    assert sorted(bank.adapters) == ["coarse.c1", "domain.c1", "fine.c1"]
    assert bank.pattern_slots == [RETIRED] * 3
    added = {t: deltas(before, micros[0])[t] + deltas(before, micros[1])[t] for t in bank.targets}
    for old, new in (("slot0", "fine.c1"), ("slot1", "domain.c1"), ("slot2", "coarse.c1")):
        old_delta, new_delta = deltas(before, old), deltas(bank, new)
        for target in bank.targets:
            for layer in range(bank.layers):
                # λ = 0: the best rank-r approximation of the group's adapter plus both MicroLoRAs
                u, s, vt = np.linalg.svd(old_delta[target][layer] + added[target][layer])
                best = (u[:, : bank.rank] * s[: bank.rank]) @ vt[: bank.rank]
                np.testing.assert_allclose(new_delta[target][layer], best, atol=1e-4)
    # every group's Fisher is measured, on the answers the MicroLoRAs learnt from
    state = FisherState.load(bank_dir)
    assert sorted(state.groups) == [0, 1, 2] and all(g.fisher_blocks == 2 for g in report.groups)
    assert len(report.lines) == 4 and "2 MicroLoRA(s) removed, 3 DGR key(s) retired" in report.lines[-1]


def test_a_strong_fisher_keeps_the_group_adapter_as_it_was(learnt):
    model, _, bank_dir, _ = learnt
    bank = Bank.load(bank_dir)
    old = deltas(bank, "slot1")
    state = FisherState.load(bank_dir)
    state.groups[GROUP] = GroupFisher("slot1", {t: np.ones((bank.layers, bank.rank)) for t in bank.targets})
    state.save(bank_dir)
    run(learnt, ewc_lambda=1e9, fold_into="own")
    new = deltas(Bank.load(bank_dir), "domain.c1")
    for target in bank.targets:
        np.testing.assert_allclose(new[target], old[target], atol=1e-3 * np.abs(old[target]).max())
    # the carried Fisher of an unchanged adapter is the old one, averaged with the new measurement
    fisher = FisherState.load(bank_dir).groups[GROUP].fisher
    assert all(np.all(f >= 0.7 - 1e-6) for f in fisher.values())  # decay 0.7 of ones, plus ≥ 0


def test_the_first_component_order_matches_the_saved_adapter(learnt):
    """The Fisher file's numbers are per singular component, strongest first, as `components` gives."""
    _, _, bank_dir, _ = learnt
    run(learnt, ewc_lambda=0.0)
    bank = Bank.load(bank_dir)
    fa, fb = bank.adapters["domain.c1"].factors["q_proj"]
    fan_in, fan_out = bank.targets["q_proj"]
    a = np.asarray(fa).reshape(bank.layers, fan_in, bank.rank)[0]
    b = np.asarray(fb).reshape(bank.layers, bank.rank, fan_out)[0]
    assert np.all(np.diff(components(a, b).s) <= 1e-6)


def test_the_config_section_and_its_one_line_errors():
    config = parse_learning_config("[loop_c]\nenabled = true\newc_lambda = 500\ndecay = 0.5\n", "x.toml")
    assert config.loop_c.enabled and config.loop_c.ewc_lambda == 500.0 and config.loop_c.decay == 0.5
    for text, message in (
        ("ewc_lambda = -1", "ewc_lambda -1.0: must be >= 0"),
        ("decay = 1", "decay 1.0: must be in [0, 1)"),
        ("weight = 0", "weight 0.0: must be in (0, 1]"),
        ('fold_into = "all"', "fold_into 'all': must be one of every, own"),
        ("lambda = 3", "unknown lambda"),
    ):
        with pytest.raises(
            RuvdllmError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
        ):
            parse_learning_config(f"[loop_c]\n{text}\n", "x.toml")


def test_a_running_model_takes_the_consolidated_bank_between_generations(learnt):
    """What `ruvdllm serve` relies on: a bank switched on disk by another writer (loop C here, a
    federation merge likewise) is read before the next generation, without a restart."""
    model, _, bank_dir, _ = learnt
    running = open_model(model.directory, bank=bank_dir, verify="sizes")
    assert micro_name(GROUP, 3, 1) in running.bank.adapters
    running.generate("Tell me about the licence:", GenerationSettings(length=4))
    run(learnt, ewc_lambda=0.0)
    assert running.refresh_bank() is True  # the first check after the switch reads it
    assert "domain.c1" in running.bank.adapters and micro_name(GROUP, 3, 1) not in running.bank.adapters
    assert running.refresh_bank() is False  # unchanged since: one stat, nothing read
    running.generate("Tell me about the licence:", GenerationSettings(length=4))


def test_a_bank_that_no_longer_fits_keeps_the_old_one_with_a_one_line_warning(learnt, capsys):
    model, _, bank_dir, _ = learnt
    running = open_model(model.directory, bank=bank_dir, verify="sizes")
    before = running.bank
    text = (bank_dir / "bank.json").read_text().replace('"rank": 2', '"rank": 3')
    (bank_dir / "bank.json").write_text(text)
    running.generate("Tell me about the licence:", GenerationSettings(length=4))
    assert running.bank is before
    assert capsys.readouterr().err.count("warning:") == 1
    running.generate("Tell me about the licence:", GenerationSettings(length=4))
    assert capsys.readouterr().err.count("warning:") == 0  # said once


def test_learn_consolidate_command(learnt, tmp_path, monkeypatch, capsys):
    from ruvdllm.cli import main

    model, _, bank_dir, _ = learnt
    monkeypatch.setenv("RUVDLLM_DATA", str(tmp_path / "data"))  # no store: the Fisher is not measured
    code = main(["learn", "consolidate", "--bank", str(bank_dir), "--model", str(model.directory), "--json"])
    assert code == 0
    body = json.loads(capsys.readouterr().out)
    assert [g["adapter"] for g in body["groups"]] == ["fine.c1", "domain.c1", "coarse.c1"]
    assert all(g["fisher_blocks"] == 0 for g in body["groups"]) and body["retired_keys"] == 3
    assert (
        main(["learn", "consolidate", "--bank", str(tmp_path / "none"), "--model", str(model.directory)]) == 1
    )
    assert "no learnt bank" in capsys.readouterr().err


def test_serve_runs_loop_c_after_loop_b_once_its_interval_has_passed(learnt):
    from runtime.learning.config import LoopBConfig
    from runtime.learning.loop_c_service import consolidation

    model, session, bank_dir, _ = learnt
    now = [0.0]
    installed = []
    step = consolidation(
        LoopCConfig(enabled=True, interval=60.0, fisher_blocks=1),
        LoopBConfig(),
        bank_dir,
        model,
        session,
        lambda after, threshold, limit: [],  # an empty store: the Fisher is carried, not measured
        lambda bank, directory: installed.append(sorted(bank.adapters)),
        clock=lambda: now[0],
    )
    assert step() is None and installed == []  # not yet due
    now[0] = 61.0
    report = step()
    assert [g.adapter for g in report.groups] == ["fine.c1", "domain.c1", "coarse.c1"]
    assert installed == [["coarse.c1", "domain.c1", "fine.c1"]]  # the running models get the new bank
    assert step() is None  # the next one waits another interval
