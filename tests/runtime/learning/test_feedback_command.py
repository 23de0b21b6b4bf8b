"""`ruvdllm generate` records, `ruvdllm feedback` rates: through the real CLI in subprocesses, on
real files in a private data directory."""

import json
import os
import subprocess
import sys

from runtime.learning.scores import SCORES_NAME
from runtime.learning.sqlite_store import SqliteStore


def ruvdllm(*args, data):
    env = {**os.environ, "RUVDLLM_DATA": str(data), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def generate(model_dir, data, *extra):
    return ruvdllm(
        "generate",
        "Hello there",
        "--model",
        model_dir,
        "--length",
        "8",
        "--no-eos-stop",
        "--threads",
        "1",
        "--dgr-strategy",
        "entropy",
        *extra,
        data=data,
    )


def test_generate_records_and_feedback_rescores(banked_model_dir, tmp_path):
    data = tmp_path / "data"
    run = generate(banked_model_dir, data, "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    completion_id = report["completion_id"]
    stored = SqliteStore(data / "trajectories.db").trajectory(completion_id)
    assert stored.answer == report["text"] and stored.answer_tokens == report["tokens"]

    plain = generate(banked_model_dir, data)  # the text mode says the id on stderr
    assert plain.returncode == 0 and "ruvdllm feedback cmpl-" in plain.stderr

    rated = ruvdllm("feedback", completion_id, "--rating", "5", "--json", data=data)
    assert rated.returncode == 0, rated.stderr
    result = json.loads(rated.stdout)
    assert result["value"] == 1.0 and result["patterns"] == stored.patterns
    if stored.patterns:  # the entropy strategy at its default bar may retrieve nothing on this model
        assert (banked_model_dir / "banks" / SCORES_NAME).is_file()
    corrected = ruvdllm("feedback", completion_id, "--correct", "General Kenobi", data=data)
    assert corrected.returncode == 0 and "recorded (correction, -0.50)" in corrected.stdout
    kinds = [f.kind for f in SqliteStore(data / "trajectories.db").feedback_for(completion_id)]
    assert kinds == ["rating", "correction"]


def test_feedback_errors_are_one_line(banked_model_dir, tmp_path):
    data = tmp_path / "data"
    nothing = ruvdllm("feedback", "cmpl-x", "--up", data=data)
    assert nothing.returncode == 1 and "no trajectory store yet" in nothing.stderr
    assert generate(banked_model_dir, data).returncode == 0
    unknown = ruvdllm("feedback", "cmpl-x", "--up", data=data)
    assert unknown.returncode == 1 and unknown.stderr.strip() == (
        "error: completion id 'cmpl-x': no such completion recorded"
    )
    bad = ruvdllm("feedback", "cmpl-x", "--rating", "9", data=data)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: rating 9.0: must be in 1..5"
    both = ruvdllm("feedback", "cmpl-x", "--up", "--down", data=data)
    assert both.returncode == 2 and "not allowed with" in both.stderr  # argparse's own usage error


def test_recording_is_switched_off_by_flag_or_config(banked_model_dir, tmp_path):
    data = tmp_path / "data"
    off = generate(banked_model_dir, data, "--json", "--no-record")
    assert off.returncode == 0 and json.loads(off.stdout)["completion_id"] is None
    config = tmp_path / "learning.toml"
    config.write_text("[loop_a]\nenabled = false\n")
    by_config = generate(banked_model_dir, data, "--json", "--learning-config", config)
    assert json.loads(by_config.stdout)["completion_id"] is None
    assert not (data / "trajectories.db").exists()
    forced = generate(banked_model_dir, data, "--json", "--learning-config", config, "--record")
    assert json.loads(forced.stdout)["completion_id"].startswith("cmpl-")
    config.write_text("[loop_a]\nqueue_size = -1\n")
    bad = generate(banked_model_dir, data, "--learning-config", config)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"error: {config}: loop_a.queue_size -1: must be at least 1"


def test_an_unusable_store_costs_one_line_and_no_answer(banked_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's directory should be")
    config = tmp_path / "learning.json"
    config.write_text(json.dumps({"loop_a": {"store": str(blocker / "t.db")}}))
    run = generate(banked_model_dir, tmp_path / "data", "--json", "--learning-config", config)
    assert run.returncode == 0 and json.loads(run.stdout)["completion_id"] is None
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not recording trajectories" in warnings[0]
