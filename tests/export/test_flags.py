"""Flags derived from the config dataclasses: one source for each default, presets that only set
flags their command has, and the order given > preset > saved run > default."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from ruvdllm.cli import build_parser
from ruvdllm.errors import RuvdllmError
from ruvdllm_export import banks_command, convert_command
from ruvdllm_export.convert.objectives import ObjectiveConfig
from ruvdllm_export.convert.trainer import TrainConfig
from ruvdllm_export.flags import resolve
from ruvdllm_export.reference import LoraConfig


def _parse(*argv: str):
    return build_parser(list(argv)).parse_args(list(argv))


def test_every_train_config_field_is_a_convert_flag_with_its_default():
    assert [flag.name for flag in convert_command.TRAINING] == [f.name for f in fields(TrainConfig)]
    args = _parse("convert")
    resolve(args, convert_command.FLAGS)
    assert convert_command._configs(args) == (
        TrainConfig(),
        ObjectiveConfig(),
        LoraConfig(seed=TrainConfig.seed),
    )


@pytest.mark.parametrize("command", [convert_command, banks_command])
def test_presets_set_only_flags_of_their_command(command):
    names = {flag.name for flag in command.FLAGS}
    for preset, values in command.PRESETS.items():
        assert set(values) <= names, preset


def test_a_flag_given_wins_over_the_preset_which_wins_over_the_default(tmp_path):
    args = convert_command._arguments(
        _parse("convert", "--preset", "default-135m", "--rank", "4", "--run-dir", str(tmp_path))
    )
    assert args.rank == 4  # given
    assert (args.alpha, args.lr, args.teacher_weight, args.precision) == (16.0, 5e-4, 0.5, "bf16")  # preset
    assert (args.objective, args.block_size, args.held_out) == ("bd3lm", 8, 0.1)  # defaults


def test_a_resumed_run_keeps_its_arguments_and_takes_defaults_for_newer_flags(tmp_path):
    saved = {"rank": 2, "max_steps": 10, "data": [], "model": None, "output": None, "distill": None}
    (tmp_path / convert_command.ARGS_FILE).write_text(json.dumps(saved))
    args = convert_command._arguments(
        _parse("convert", "--resume", "--run-dir", str(tmp_path), "--max-steps", "20", "--rank", "2")
    )
    assert args.rank == 2 and args.max_steps == 20  # only RESUMABLE flags change on --resume
    assert (args.precision, args.teacher_weight) == ("fp32", 0.0)  # absent from the saved run
    with pytest.raises(RuvdllmError, match="--preset starts a new run"):
        convert_command._arguments(
            _parse("convert", "--resume", "--run-dir", str(tmp_path), "--preset", "cpu-quick")
        )


def test_a_resumed_run_refuses_a_flag_it_would_ignore(tmp_path):
    saved = {"rank": 2, "max_steps": 10, "data": ["a.txt"], "model": None, "output": None, "distill": None}
    (tmp_path / convert_command.ARGS_FILE).write_text(json.dumps(saved))
    resume = ("convert", "--resume", "--run-dir", str(tmp_path))
    with pytest.raises(RuvdllmError, match=r"--rank 4 differs from the run's 2 \(.*args.json\)"):
        convert_command._arguments(_parse(*resume, "--rank", "4"))
    with pytest.raises(RuvdllmError, match="--data b.txt differs from the run's"):
        convert_command._arguments(_parse(*resume, "--data", "b.txt"))
    with pytest.raises(RuvdllmError, match="--lr 0.1 differs from the run's 0.0003"):  # absent: the default
        convert_command._arguments(_parse(*resume, "--lr", "0.1"))
    args = convert_command._arguments(_parse(*resume, "--data", "a.txt", "--max-steps", "12"))
    assert args.max_steps == 12


def test_a_malformed_args_json_is_named_as_not_a_run(tmp_path):
    (tmp_path / convert_command.ARGS_FILE).write_text("{not json")
    with pytest.raises(RuvdllmError, match="args.json: not a convert run's saved arguments") as refused:
        convert_command._arguments(_parse("convert", "--resume", "--run-dir", str(tmp_path)))
    assert "\n" not in str(refused.value)
    (tmp_path / convert_command.ARGS_FILE).write_text("[1, 2]")
    with pytest.raises(RuvdllmError, match="not a JSON object"):
        convert_command._arguments(_parse("convert", "--resume", "--run-dir", str(tmp_path)))


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--rank", "0"),
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--alpha", "inf"),
        ("--alpha", "0"),
        ("--held-out", "-1"),
        ("--held-out", "1.5"),
        ("--max-steps", "0"),
        ("--teacher-weight", "2"),
        ("--seq-len", "1"),
        ("--threads", "-2"),
    ],
)
def test_convert_refuses_out_of_range_numbers_as_they_parse(flag, value, capsys):
    with pytest.raises(SystemExit):
        _parse("convert", flag, value)
    assert f"argument {flag}: {value} is out of range" in capsys.readouterr().err


def test_every_numeric_flag_has_a_range():
    for command in (convert_command, banks_command):
        for flag in command.FLAGS:
            if isinstance(flag.value, (int, float)) and not isinstance(flag.value, bool):
                assert flag.range is not None and flag.range.contains(flag.value), flag.name
