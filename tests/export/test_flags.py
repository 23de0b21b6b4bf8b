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
        _parse("convert", "--resume", "--run-dir", str(tmp_path), "--max-steps", "20", "--rank", "9")
    )
    assert args.rank == 2 and args.max_steps == 20  # only RESUMABLE flags change on --resume
    assert (args.precision, args.teacher_weight) == ("fp32", 0.0)  # absent from the saved run
    with pytest.raises(RuvdllmError, match="--preset starts a new run"):
        convert_command._arguments(
            _parse("convert", "--resume", "--run-dir", str(tmp_path), "--preset", "cpu-quick")
        )
