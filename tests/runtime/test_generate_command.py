"""`ruvdllm generate` through the real CLI in a subprocess: output modes and one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from runtime import artifact
from runtime.banks import Bank
from ruvdllm.default_artifact import default_model_name

# The user's real cache (the autouse fixture points RUVDLLM_CACHE elsewhere for every test):
# the slow test exports the default model there once, as `ruvdllm generate` does for users.
USER_CACHE = os.environ.get("RUVDLLM_CACHE") or __import__("platformdirs").user_cache_dir("ruvdllm")


def cli(*args, cache, stdin=None):
    env = {**os.environ, "RUVDLLM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", "generate", *map(str, args), "--threads", "1"],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=120,
    )


def test_plain_stream_and_json(tiny_model_dir, tmp_path):
    plain = cli("Hello there", "--model", tiny_model_dir, "--length", "8", "--no-eos-stop", cache=tmp_path)
    assert plain.returncode == 0, plain.stderr
    run = cli(
        "Hello there", "--model", tiny_model_dir, "--length", "8", "--no-eos-stop", "--json", cache=tmp_path
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert len(report["tokens"]) == 8 and report["finish_reason"] == "length"
    assert plain.stdout == report["text"] + "\n"  # the streamed text is the final text
    assert len(report["steps"]) == 8 and all("forward_ms" in s and "committed" in s for s in report["steps"])
    assert sorted(int(p) for s in report["steps"] for p in s["committed"]) == list(range(8))
    assert report["timings"]["tokens_per_s"] > 0 and report["prompt_tokens"] > 2


def test_verified_equals_ar_and_reports_its_drafts(tiny_switch_model_dir, tmp_path):
    args = ("Hello there", "--model", tiny_switch_model_dir, "--length", "12", "--no-eos-stop", "--json")
    verified = json.loads(
        cli(
            *args, "--sampler", "verified", "--acceptance", "exact", "--block-size", "3", cache=tmp_path
        ).stdout
    )
    ar = json.loads(cli(*args, "--sampler", "ar", cache=tmp_path).stdout)
    assert verified["tokens"] == ar["tokens"] and len(ar["steps"]) == 12
    assert verified["settings"]["acceptance"] == "exact" and ar["settings"]["acceptance"] is None
    assert sum(s["drafted"] for s in verified["steps"]) > 0 and verified["settings"]["sampler"] == "verified"
    timings, steps = verified["timings"], verified["steps"]
    assert timings["drafts_checked"] == sum(s["drafted"] for s in steps) > 0
    assert timings["drafts_kept"] == sum(len(s["committed"]) - 1 for s in steps if s["drafted"])
    assert timings["tokens_per_forward"] == round(sum(len(s["committed"]) for s in steps) / len(steps), 3)
    copying = [s for s in steps if s["looked_up"]]  # each forward's drafts come from one drafter
    assert all(s["looked_up"] == s["drafted"] for s in copying)
    assert timings["copied_drafts_checked"] == sum(s["looked_up"] for s in copying)
    assert timings["copied_drafts_kept"] == sum(len(s["committed"]) - 1 for s in copying)
    assert ar["timings"]["tokens_per_forward"] == 1.0 and ar["timings"]["drafts_checked"] == 0


def test_auto_verifies_where_it_can_and_denoises_where_asked_or_it_cannot(
    tiny_switch_model_dir, tiny_switchless_model_dir, tmp_path
):
    """The default sampler, auto: verified on a model with the adapter switch (lenient acceptance
    when greedy, exact — the AR model's tokens — when asked or sampling), the diffusion sampler when
    --steps is given or the model has no switch; the sampler that ran is in the JSON report and
    first on the --verbose summary line."""
    args = ("Hello there", "--length", "8", "--no-eos-stop")

    def sampler_of(model, *extra, acceptance=False):
        run = cli(*args, "--model", model, "--json", *extra, cache=tmp_path)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        if acceptance:
            return report["settings"]["sampler"], report["settings"]["acceptance"]
        return report["settings"]["sampler"], report["tokens"]

    ar_tokens = sampler_of(tiny_switch_model_dir, "--sampler", "ar")[1]
    assert sampler_of(tiny_switch_model_dir, "--acceptance", "exact") == ("verified", ar_tokens)
    assert sampler_of(tiny_switch_model_dir, acceptance=True) == ("verified", "lenient")
    sampling = ("--temperature", "0.8", "--seed", "3")
    assert sampler_of(tiny_switch_model_dir, *sampling, acceptance=True) == ("verified", "exact")
    assert sampler_of(tiny_switch_model_dir, *sampling, "--acceptance", "lenient", acceptance=True) == (
        "verified",
        "lenient",
    )
    one_line_error(
        cli(*args, "--model", tiny_switch_model_dir, "--steps", "2", "--acceptance", "exact", cache=tmp_path),
        "acceptance exact: only the verified sampler checks drafts (this runs bd3lm)",
    )
    assert sampler_of(tiny_switch_model_dir, "--steps", "2")[0] == "bd3lm"
    assert sampler_of(tiny_switch_model_dir, "--decoding", "threshold")[0] == "bd3lm"
    assert sampler_of(tiny_switchless_model_dir)[0] == "bd3lm"
    one_line_error(
        cli(*args, "--model", tiny_switchless_model_dir, "--sampler", "verified", cache=tmp_path),
        "no per-row switch",
    )
    verbose = cli(*args, "--model", tiny_switch_model_dir, "--verbose", cache=tmp_path)
    assert verbose.returncode == 0
    assert any(line.startswith("verified (lenient) · 8 tokens in ") for line in verbose.stderr.splitlines())


def test_auto_runs_ar_on_a_machine_whose_rows_cost_too_much(tiny_switch_model_dir, tmp_path, monkeypatch):
    """Where the recorded row cost says drafts do not pay (runtime/row_cost.py), auto runs the AR
    model alone: its tokens, one per forward, on the model's AR graph. An acceptance rule named on
    the command line still gets the verified sampler, on the full graph."""
    from runtime.ort_backend import OrtBackend, OrtOptions
    from runtime.row_cost import RowCost, kept

    monkeypatch.setenv("RUVDLLM_CACHE", str(tmp_path))
    backend = OrtBackend(
        tiny_switch_model_dir / artifact.GRAPH_NAME,
        artifact.load_config(tiny_switch_model_dir),
        OrtOptions(intra_op_threads=1),
    )
    kept(tmp_path / "row_cost.json", backend.row_cost_key(), lambda: RowCost(10.0, 5, 24.0))  # 0.35 per row
    args = ("Hello there", "--length", "8", "--no-eos-stop", "--model", tiny_switch_model_dir, "--json")
    runs = {
        name: json.loads(cli(*args, *extra, cache=tmp_path).stdout)
        for name, extra in (("auto", ()), ("ar", ("--sampler", "ar")), ("exact", ("--acceptance", "exact")))
    }
    assert (runs["auto"]["settings"]["sampler"], runs["auto"]["settings"]["acceptance"]) == ("ar", None)
    assert runs["auto"]["tokens"] == runs["ar"]["tokens"] == runs["exact"]["tokens"]
    assert runs["auto"]["timings"]["tokens_per_forward"] == 1.0
    assert runs["auto"]["extra_row_cost"] == 0.35 and runs["ar"]["extra_row_cost"] is None
    assert runs["exact"]["settings"]["sampler"] == "verified" and runs["exact"]["extra_row_cost"] is None
    # a run that will only run the AR model opens the model's AR graph, one that verifies the full one
    assert runs["auto"]["graph"] == runs["ar"]["graph"] == artifact.AR_GRAPH_NAME
    assert runs["exact"]["graph"] == artifact.GRAPH_NAME
    verbose = cli(*args[:-1], "--verbose", cache=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert any(
        line.startswith(
            "ar (auto: one more row costs 0.35 of a forward on this CPU, drafts do not pay) · 8 tokens"
        )
        for line in verbose.stderr.splitlines()
    )


def test_same_seed_same_tokens_and_stdin_prompt(tiny_model_dir, tmp_path):
    args = ("--model", tiny_model_dir, "--length", "8", "--temperature", "1.5", "--json", "--sampler", "mdlm")
    a = json.loads(cli("-", *args, "--seed", "1", cache=tmp_path, stdin="Hello").stdout)["tokens"]
    b = json.loads(cli("Hello", *args, "--seed", "1", cache=tmp_path).stdout)["tokens"]
    c = json.loads(cli("Hello", *args, "--seed", "2", cache=tmp_path).stdout)["tokens"]
    assert a == b and a != c


def test_sampling_without_a_seed_draws_a_fresh_one_and_reports_it(tiny_model_dir, tmp_path):
    args = ("Hello", "--model", tiny_model_dir, "--length", "8", "--temperature", "1.5", "--sampler", "mdlm")
    runs = [json.loads(cli(*args, "--json", cache=tmp_path).stdout) for _ in range(3)]
    assert len({r["seed"] for r in runs}) == 3  # a fixed default made every sampled answer the same
    replay = json.loads(cli(*args, "--json", "--seed", runs[0]["seed"], cache=tmp_path).stdout)
    assert replay["tokens"] == runs[0]["tokens"]
    greedy = json.loads(
        cli("Hello", "--model", tiny_model_dir, "--length", "4", "--json", cache=tmp_path).stdout
    )
    assert greedy["seed"] == 0
    verbose = cli(*args, "--verbose", cache=tmp_path)
    assert verbose.returncode == 0 and " · seed " in verbose.stderr.splitlines()[0]


def test_debug_after_the_command_and_a_reader_that_goes_away(tiny_model_dir, tmp_path):
    debug = cli("", "--debug", cache=tmp_path)  # --debug after the command: a traceback, not a usage error
    assert (
        debug.returncode == 1
        and "Traceback" in debug.stderr
        and "RuvdllmError: prompt: empty" in debug.stderr
    )
    env = {**os.environ, "RUVDLLM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    generate = [sys.executable, "-m", "ruvdllm.cli", "generate", "Hello", "--model", str(tiny_model_dir)]
    reader = subprocess.Popen(["true"], stdin=subprocess.PIPE)  # reads nothing and is gone
    reader.wait()
    run = subprocess.run(
        [*generate, "--threads", "1", "--length", "8", "--no-eos-stop", "--sampler", "ar"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
    )
    reader.stdin.close()
    assert run.returncode == 141 and run.stderr == "", run.stderr  # as `| head` ending early: no traceback
    version = subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("ruvdllm ")


def test_flags_the_ar_sampler_does_not_read_are_said_to_be_unused(tiny_model_dir, tmp_path):
    args = ("Hello", "--model", tiny_model_dir, "--length", "4", "--sampler", "ar", "--json")
    report = json.loads(cli(*args, "--block-size", "4", cache=tmp_path).stdout)
    assert report["warnings"] == ["--block-size: not used by the ar sampler, which runs the AR model alone"]
    assert json.loads(cli(*args, cache=tmp_path).stdout)["warnings"] == []


def test_default_model_comes_from_the_cache(tiny_model_dir, tmp_path):
    name = default_model_name("cpu")
    shutil.copytree(tiny_model_dir, tmp_path / "artifacts" / name)
    run = cli("Hello", "--length", "4", "--json", cache=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["model"].endswith(name)


def one_line_error(run, fragment):
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("",), "prompt: empty"),
        (("hi", "--length", "400"), "exceed the model's context of 256"),
        (("hi", "--steps", "9"), "steps 9: out of range 1..4"),
        (("hi", "--steps", "0"), "steps 0: out of range"),
        (("hi", "--block-size", "0"), "block size 0: out of range"),
        (("hi", "--block-size", "1000"), "block size 1000: out of range 1..256"),
        (("hi", "--sampler", "gibbs"), "sampler 'gibbs': unknown"),
        (("hi", "--acceptance", "loose"), "acceptance 'loose': unknown"),
        (("hi", "--sampler", "verified", "--steps", "2"), "steps 2: the verified sampler takes no steps"),
        (("hi", "--decoding", "beam"), "decoding 'beam': unknown"),
        (("hi", "--threshold", "0"), "threshold 0.0"),
        (("hi", "--entropy-bound", "-1"), "entropy bound -1.0"),
        (("hi", "--order", "right-to-left"), "order 'right-to-left': unknown"),
    ],
)
def test_bad_input_is_one_line(tiny_model_dir, tmp_path, args, fragment):
    one_line_error(cli(*args, "--model", tiny_model_dir, cache=tmp_path), fragment)


def test_prompt_beyond_context(tiny_model_dir, tmp_path):
    one_line_error(
        cli("word " * 300, "--model", tiny_model_dir, cache=tmp_path), "exceed the model's context"
    )


def test_broken_model_directories(tiny_model_copy, tmp_path):
    one_line_error(cli("hi", "--model", tmp_path / "absent", cache=tmp_path), "no such model directory")
    one_line_error(cli("hi", "--model", tmp_path, cache=tmp_path), "not a model directory")
    graph = tiny_model_copy / artifact.GRAPH_NAME
    data = bytearray(graph.read_bytes())
    data[100] ^= 0x01
    graph.write_bytes(bytes(data))
    one_line_error(
        cli("hi", "--model", tiny_model_copy, cache=tmp_path), "sha256 does not match the manifest"
    )
    (tiny_model_copy / artifact.MANIFEST_NAME).write_text("{")
    one_line_error(cli("hi", "--model", tiny_model_copy, cache=tmp_path), "unreadable manifest")


def test_a_sampler_the_model_was_not_trained_for_is_warned_about(tiny_model_copy, tmp_path):
    """Runs (a comparison may want it), with one line on stderr and in the JSON report."""
    config = artifact.load_config(tiny_model_copy)
    (tiny_model_copy / artifact.CONFIG_NAME).write_text(replace(config, samplers=("bd3lm",)).to_json())
    artifact.write_manifest(tiny_model_copy)
    args = ("hi", "--model", tiny_model_copy, "--length", "4")
    mdlm = cli(*args, "--sampler", "mdlm", "--json", cache=tmp_path)
    assert mdlm.returncode == 0, mdlm.stderr
    warning = [line for line in mdlm.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "converted for bd3lm only" in warning[0]
    assert json.loads(mdlm.stdout)["warnings"] == [warning[0].removeprefix("warning: ")]
    bd3lm = cli(*args, "--sampler", "bd3lm", cache=tmp_path)
    assert bd3lm.returncode == 0 and "warning" not in bd3lm.stderr


def test_bank_dimension_mismatch(tiny_model_dir, tmp_path):
    config = artifact.load_config(tiny_model_dir)
    Bank.for_model(replace(config, adapter_slots=7)).save(tmp_path / "bank")
    one_line_error(
        cli("hi", "--model", tiny_model_dir, "--bank", tmp_path / "bank", cache=tmp_path),
        "slots 7 does not match the model's 5",
    )


def test_terminal_shows_the_denoising_live(tiny_model_dir, tmp_path):
    """Under a pseudo-terminal the live view draws masked positions (░) that fill in."""
    import pty

    leader, follower = pty.openpty()
    env = {
        **os.environ,
        "RUVDLLM_CACHE": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "100",
        "TERM": "xterm",
    }
    args = [sys.executable, "-m", "ruvdllm.cli", "generate", "Hello", "--model", str(tiny_model_dir)]
    proc = subprocess.Popen(
        [*args, "--length", "8", "--no-eos-stop", "--threads", "1"],
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", errors="replace")
    assert "░" in screen  # masked positions were drawn
    assert "span 1 · step 4" in screen  # ... and the view followed every step of both blocks
    assert "tokens/s" in proc.stderr.read().decode()


@pytest.mark.slow
def test_default_model_generates_text():
    """No --model: the default model is fetched and exported once into the cache, then sampled.
    Block size 1 is the AR model decoded through the diffusion graph, so the pretrained model's
    own answer must come out; the default settings must run to the end. (The question is one the
    135M model answers right greedily: asked "What is the capital of France?" under its default
    system prompt it answers "L'Étoile, la Cité, ...", as llama.cpp does on the same GGUF.)"""
    question = "Name the capital city of France."
    ar = cli(question, "--block-size", "1", "--length", "12", "--json", cache=USER_CACHE)
    assert ar.returncode == 0, ar.stderr
    assert "Paris" in json.loads(ar.stdout)["text"]
    streamed = cli(question, "--length", "16", cache=USER_CACHE)
    assert streamed.returncode == 0, streamed.stderr
