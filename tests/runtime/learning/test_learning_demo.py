"""benchmarks/learning.py in its smallest form on the tiny model: the mechanics, not the figures.
A simulated user's requests go through the runtime and loop A, loop B trains and installs, the
held-out NLLs are printed per domain with the goal lines, and two devices take their updates
through a real hub process and merge its release."""

import json

import pytest

from tests.fixtures.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "learning.py"


def test_the_demonstration_runs_the_loops_and_the_hub_round_trip(tiny_model_dir, corpus, tmp_path, capsys):
    demo = load_script(SCRIPT, "learning_demo")
    figures = tmp_path / "figures.json"
    argv = ["--model", str(tiny_model_dir), "--corpus", str(corpus), "--domain", "licences"]
    argv += ["--prompts", "4", "--held-out", "2", "--prompt-tokens", "8", "--answer-tokens", "8"]
    argv += ["--steps", "3", "--batch", "1", "--scratch", str(tmp_path / "scratch"), "--json", str(figures)]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(figures.read_text())

    single = result["single"]
    assert single["user"]["requests"] == 4  # every request answered, recorded and given feedback
    assert single["user"]["liked"] + single["user"]["corrected"] == 4
    assert single["loop_b"]["read"] == 4  # loop B read them all from loop A's store
    assert single["loop_b"]["trained"] and all(t["steps"] == 3 for t in single["loop_b"]["trained"])
    consolidated = single["loop_c"]  # loop C ran on the learnt bank: one line per group, or why not
    assert consolidated and all(line.startswith("loop C: ") for line in consolidated)
    if any(t["kept"] for t in single["loop_b"]["trained"]):
        assert any("folded into" in line for line in consolidated)  # a kept MicroLoRA is folded
    for when in ("before", "after_b", "after"):  # after_b: loop B's bank, scored before loop C
        assert set(single[when]) == {"docs", "licences"}
        assert all(v > 0 for v in single[when].values())
    assert "held-out masked NLL per domain, start -> after loops A/B (before loop C)" in out
    assert "held-out masked NLL per domain, start -> after loops A/B/C" in out
    assert "(goal <= -5%: " in out and "(goal <= +1%: " in out and "all goals: " in out
    # the full system against each component removed, on the same probes and masks
    components = single["components"]
    assert set(components) == {"after B", "after B + C", "no learning"}
    for label in ("after B", "after B + C"):
        assert set(components[label]) == {"full", "dgr", "talora", "adapters"}
    # loop B only added DGR slots: without retrieval its bank is the start bank
    assert components["after B"]["dgr"] == pytest.approx(components["no learning"])
    assert components["after B"]["full"] == pytest.approx(single["after_b"])
    # no bank at all is the converted model whatever the bank held
    assert components["after B"]["adapters"] == pytest.approx(components["after B + C"]["adapters"])
    assert "each component removed" in out

    federation = result["federation"]
    lines = federation["lines"]
    assert sum("tenant: sent " in line for line in lines) == 2  # both devices sent their update
    assert any("merged release" in line for line in lines)  # and took the release back
    assert set(federation["scores"]) == {"docs", "licences"}
    for scores in federation["scores"].values():
        assert set(scores) == {"start", "learnt", "federated"}
    assert "device x domain" in out


def test_the_feedback_rule_is_token_overlap():
    demo = load_script(SCRIPT, "learning_demo")
    assert demo.unigram_f1([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert demo.unigram_f1([1, 2], [3, 4]) == 0.0
    assert demo.unigram_f1([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fisher", [True, False])
def test_loop_c_in_the_demo_measures_its_fisher_unless_told_not_to(tiny_model_dir, tmp_path, fisher):
    """--no-fisher: loop C still folds the MicroLoRAs in (the figures the demo prints), but skips
    the Fisher it would measure afterwards for a next consolidation (hours on the default model)."""
    from types import SimpleNamespace

    import numpy as np

    from runtime import artifact
    from runtime.banks import Bank
    from runtime.cpython_model import open_model
    from runtime.learning.config import LoopBConfig, LoopCConfig
    from runtime.learning.logits_session import LogitsSession
    from runtime.learning.microlora import micro_name
    from tests.runtime.learning.test_consolidate import GROUP, micro_factors
    from tests.runtime.tiny_artifact import random_bank

    demo = load_script(SCRIPT, "learning_demo")
    model = open_model(tiny_model_dir, verify="sizes")
    bank = random_bank(model.config, seed=1, patterns=0)
    for slot in range(bank.groups, bank.slots):
        bank.remove_adapter(f"slot{slot}")
    rng = np.random.default_rng(3)
    bank.add_adapter(micro_name(GROUP, 3, 1), 3, micro_factors(bank, rng))
    bank.add_patterns(rng.standard_normal((1, bank.hidden_size)).astype(np.float32), [3])
    bank_dir = tmp_path / "bank"
    bank.save(bank_dir)
    middle = (bank.timestep_groups[GROUP] + bank.timestep_groups[GROUP + 1]) / 2
    liked = SimpleNamespace(  # a liked answer whose steps were most uncertain in GROUP
        embedding=[1.0] * bank.hidden_size,
        prompt_tokens=model.encode("Tell me about the licence:"),
        answer_tokens=model.encode(" the licence grants permission to copy"),
        steps=[{"t": middle, "entropy": 1.0}],
    )
    session = LogitsSession(tiny_model_dir / artifact.GRAPH_NAME, model.config)
    lines = demo.consolidate_learnt(
        model,
        bank_dir,
        session,
        lambda after, threshold, limit: [(1, liked, None)],
        LoopBConfig(),
        LoopCConfig(fisher_blocks=2),
        fisher,
    )
    assert any("1 MicroLoRA(s) folded into" in line for line in lines)  # folded either way
    assert any(f"Fisher from {2 if fisher else 0} block(s)" in line for line in lines)
    assert not any(a.slot == 3 for a in Bank.load(bank_dir).adapters.values())  # its DGR slot freed
