"""benchmarks/talora_loops.py on the tiny model: the mechanics of the TALoRA ablation by loops B/C,
not its figures. One recorded session; for each group count, loop B trains one MicroLoRA per group
on the same answers (`group_by = "every"`) and loop C makes each its own group's adapter."""

import json

import pytest

from runtime.banks import Bank
from runtime.learning.microlora import parse_micro_name
from tests.fixtures.scripts import BENCHMARKS, load_script

SCRIPT = BENCHMARKS / "talora_loops.py"


def test_every_group_count_learns_from_the_same_session_at_equal_parameters(corpus, tmp_path, capsys):
    demo = load_script(SCRIPT, "talora_loops_demo")
    figures, scratch = tmp_path / "figures.json", tmp_path / "scratch"
    argv = ["--tiny", "--groups", "1", "2", "--corpus", str(corpus), "--prompts", "4", "--held-out", "2"]
    argv += ["--prompt-tokens", "8", "--answer-tokens", "8", "--trainer", "spsa", "--steps", "3"]
    argv += ["--scratch", str(scratch), "--json", str(figures)]
    assert demo.main(argv) == 0
    result = json.loads(figures.read_text())
    assert result["user"]["requests"] == 4
    by_groups = {r["groups"]: r for r in result["results"]}
    assert by_groups[1]["parameters"] == by_groups[2]["parameters"]  # L/G layers each
    assert (by_groups[1]["layers"], by_groups[2]["layers"]) == (2, 1)
    for groups, r in by_groups.items():
        assert sorted(t["group"] for t in r["trained"]) == list(range(groups))  # one per group
        bank = Bank.load(scratch / f"groups-{groups}" / "bank")
        assert bank.groups == groups
        kept = {t["group"] for t in r["trained"] if t["kept"]}
        # loop C (fold own): each kept MicroLoRA is now its own group's adapter; none is left
        assert {a.slot for a in bank.adapters.values()} == kept
        assert not any(parse_micro_name(name) for name in bank.adapters)
        assert set(r["after"]) == {"docs", "licences"} and all(v > 0 for v in r["after"].values())
        assert len(r["by_t"]["start"]) == len(r["by_t"]["bank"]) == demo.T_BINS
    out = capsys.readouterr().out
    assert "vs static (licences)" in out and "predicted (the seeds)" in out
    assert "by the probes' noise level t" in out


def test_group_counts_that_do_not_split_the_layers_are_refused(corpus, tmp_path):
    demo = load_script(SCRIPT, "talora_loops_demo")
    with pytest.raises(SystemExit, match="does not split evenly"):
        demo.main(["--tiny", "--groups", "3", "--corpus", str(corpus), "--scratch", str(tmp_path)])
