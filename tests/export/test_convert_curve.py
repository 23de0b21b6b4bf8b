"""A run's training curve from its log: one row per evaluation with the mean training loss of
the steps before it; older logs without the certainty metrics still print."""

from __future__ import annotations

import json

import pytest

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.convert.curve import curve, main, markdown, read_log

RECORDS = [
    {"step": 0, "tokens": 0, "eval": {"masked_nll": 9.7, "elbo": 8.7, "masked": 10}},  # an old log's
    {"step": 1, "tokens": 256, "loss": 5.0},
    {"step": 2, "tokens": 512, "loss": 4.0},
    {
        "step": 2,
        "tokens": 512,
        "eval": {"masked_nll": 5.3, "elbo": 4.9, "masked": 10, "accuracy": 0.25, "confident": 0.05},
    },
    {"step": 3, "tokens": 768, "loss": 3.5},
]


def test_one_row_per_evaluation_with_the_loss_since_the_last():
    rows = curve(RECORDS)
    assert [(r["step"], r["train_loss"]) for r in rows] == [(0, None), (2, 4.5)]
    table = markdown(rows).splitlines()
    assert len(table) == 4 and table[0].startswith("| step | tokens seen | train loss | held-out masked NLL")
    assert table[2].startswith("| 0 | 0 | - | 9.700 | 8.700 | - |")
    assert "| 2 | 512 | 4.500 | 5.300 | 4.900 | 0.250 |" in table[3]


def test_the_command_prints_a_run_directory_and_names_a_bad_one(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert main([str(tmp_path), "--json"]) == 0
    assert [json.loads(line)["step"] for line in capsys.readouterr().out.splitlines()] == [0, 2]
    assert main([str(tmp_path / "nothing")]) == 1
    assert "nothing: no log.jsonl" in capsys.readouterr().err
    (tmp_path / "log.jsonl").write_text("{torn")
    with pytest.raises(RuvdllmError, match="log.jsonl:1: not a log record"):
        read_log(tmp_path)
