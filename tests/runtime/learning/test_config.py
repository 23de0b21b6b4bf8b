"""The learning config file: defaults, TOML and JSON, and one-line errors for every bad value."""

import json

import pytest

from runtime.learning.config import (
    LearningConfig,
    LoopAConfig,
    data_root,
    load_learning_config,
    parse_learning_config,
)
from ruvdllm.errors import RuvdllmError


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RUVDLLM_DATA", str(tmp_path / "data"))
    config = load_learning_config()
    assert config == LearningConfig() and config.loop_a.enabled
    assert data_root() == tmp_path / "data"
    assert config.loop_a.store_path() == tmp_path / "data" / "trajectories.db"


def test_toml_and_json_say_the_same(tmp_path):
    toml = tmp_path / "learning.toml"
    toml.write_text('[loop_a]\nenabled = false\nstore = "x.db"\nqueue_size = 8\nscore_rate = 1\n')
    as_json = tmp_path / "learning.json"
    as_json.write_text(
        json.dumps({"loop_a": {"enabled": False, "store": "x.db", "queue_size": 8, "score_rate": 1}})
    )
    a, b = load_learning_config(toml), load_learning_config(as_json)
    assert a.loop_a == b.loop_a == LoopAConfig(enabled=False, store="x.db", queue_size=8, score_rate=1.0)
    assert isinstance(a.loop_a.score_rate, float)


def test_the_data_dir_file_and_the_environment_are_found(tmp_path, monkeypatch):
    monkeypatch.setenv("RUVDLLM_DATA", str(tmp_path))
    (tmp_path / "learning.toml").write_text("[loop_a]\nqueue_size = 3\n")
    assert load_learning_config().loop_a.queue_size == 3
    other = tmp_path / "other.json"
    other.write_text('{"loop_a": {"queue_size": 5}}')
    monkeypatch.setenv("RUVDLLM_LEARNING_CONFIG", str(other))
    assert load_learning_config().loop_a.queue_size == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("[loop_a]\nenabeld = true\n", r"\[loop_a\] has unknown enabeld"),
        ("[loop_d]\nenabled = true\n", "unknown section loop_d"),
        ("[loop_a]\nenabled = 1\n", r"loop_a.enabled = 1: expected bool"),
        ("[loop_a]\nqueue_size = true\n", r"loop_a.queue_size = True: expected int"),
        ("[loop_a]\nqueue_size = 0\n", "queue_size 0: must be at least 1"),
        ("[loop_a]\nscore_rate = 0\n", r"score_rate 0.0: must be in \(0, 1\]"),
        ("[loop_a]\nscore_floor = 0\n", r"score_floor 0.0: must be in \[-1, 0\)"),
        ("[loop_a]\nscore_weight = nan\n", "score_weight nan: must be >= 0"),
        ('[loop_b]\ntrainer = "sgd"\n', "loop_b.trainer sgd: must be one of auto, spsa, adam"),
        ("[loop_b]\nadam_lr = 0\n", "loop_b.adam_lr 0.0: must be > 0"),
        ('[loop_b]\ngroup_by = "topic"\n', "loop_b.group_by 'topic': must be one of uncertainty, every"),
        ("[loop_b]\nthreads = 0\n", "loop_b.threads 0: must be at least 1"),
        ("loop_a = 3\n", r"\[loop_a\] must be a table"),
        ("[loop_a\n", "not valid TOML"),
    ],
)
def test_bad_values_are_one_line_errors(text, message):
    with pytest.raises(RuvdllmError, match=message) as error:
        parse_learning_config(text, "learning.toml")
    assert "\n" not in str(error.value) and str(error.value).startswith("learning.toml: ")


def test_a_missing_named_file_is_an_error(tmp_path):
    with pytest.raises(RuvdllmError, match="cannot read the learning config"):
        load_learning_config(tmp_path / "nope.toml")
    with pytest.raises(RuvdllmError, match="not valid JSON"):
        parse_learning_config("{", "x.json", ".json")
