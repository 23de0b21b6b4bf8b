"""runtime/server/command.py (`ruvdllm serve`): bad arguments, bad model directories and banks
that do not fit are one line on stderr and exit 1 (no traceback); an API key guards /v1 but not /health; a free port is
picked and announced with `--port 0`; on SIGTERM queued requests get a 503 at once and running
ones finish within the grace period or end with a 503 (a stream: an error event and [DONE])."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import httpx
import openai
import pytest

from runtime import artifact
from runtime.banks import Bank
from runtime.server.command import threads_per_model
from ruvdllm.cli import main
from tests.runtime.server_process import serve


def serve_fails(capsys, *args: str) -> str:
    assert main(["serve", "--port", "0", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_arguments_are_one_line_errors(capsys, tiny_model_dir):
    model = ("--model", str(tiny_model_dir))
    assert "--max-concurrency 0" in serve_fails(capsys, *model, "--max-concurrency", "0")
    assert "--queue-size -1" in serve_fails(capsys, *model, "--queue-size", "-1")
    assert "--max-request-bytes 10" in serve_fails(capsys, *model, "--max-request-bytes", "10")
    assert "--shutdown-grace -1" in serve_fails(capsys, *model, "--shutdown-grace", "-1")
    assert "no such model directory" in serve_fails(capsys, "--model", str(tiny_model_dir / "missing"))


def test_a_corrupt_model_directory_is_refused_naming_the_file(capsys, tiny_model_copy):
    graph = tiny_model_copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    graph.write_bytes(bytes(data))
    assert "model.onnx: sha256 does not match" in serve_fails(capsys, "--model", str(tiny_model_copy))


def test_a_config_that_is_not_json_is_refused(capsys, tiny_model_copy):
    (tiny_model_copy / "config.json").write_text("{not json")
    manifest = json.loads((tiny_model_copy / "manifest.json").read_text())
    manifest["files"]["config.json"]["bytes"] = len("{not json")
    (tiny_model_copy / "manifest.json").write_text(json.dumps(manifest))
    assert "config.json" in serve_fails(capsys, "--model", str(tiny_model_copy), "--verify", "sizes")


def test_a_bank_that_does_not_fit_the_model_is_refused(capsys, tiny_model_dir, tmp_path):
    config = artifact.load_config(tiny_model_dir)
    Bank.for_model(replace(config, hidden_size=128, head_dim=32)).save(tmp_path / "wrong")
    err = serve_fails(capsys, "--model", str(tiny_model_dir), "--bank", str(tmp_path / "wrong"))
    assert "hidden_size 128 does not match" in err


def test_a_taken_port_is_refused_before_loading(capsys, tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = serve_fails(capsys, "--model", str(tiny_model_dir), "--port", str(port))
    assert f"127.0.0.1:{port}: cannot listen" in err


def test_threads_are_shared_among_models():
    assert threads_per_model(3, 4) == 3  # asked for: as asked
    assert threads_per_model(0, 1) == 0  # one model: onnxruntime's default
    assert threads_per_model(0, 64) == 1  # never below one


def test_the_command_layer_hands_serve_loop_b_trainer_choice(monkeypatch, tiny_model_dir):
    """runtime cannot import the torch trainer: `ruvdllm serve` gets the choice from ruvdllm.cli."""
    import runtime.server.command
    from ruvdllm.loop_b_trainer import trainer_for

    seen = {}
    monkeypatch.setattr(runtime.server.command, "run", lambda args, **kwargs: seen.update(kwargs) or 0)
    assert main(["serve", "--model", str(tiny_model_dir)]) == 0
    assert seen["loop_b_trainer"] is trainer_for and callable(seen["default_model"])


def test_serve_is_listed_in_the_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "ruvdllm.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--model", "--host", "--port", "--max-concurrency", "--queue-size", "--max-request-bytes"):
        assert flag in out


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, tmp_path_factory):
    with serve(tiny_model_dir, "--api-key", "s3cret", cache_dir=tmp_path_factory.mktemp("cache")) as process:
        yield process


def test_an_api_key_guards_v1_but_not_health_or_the_schema(keyed_server):
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200
    assert "/v1/completions" in httpx.get(f"{keyed_server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{keyed_server.url}/docs").status_code == 200  # as docs/server.md says
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = httpx.get(f"{keyed_server.base_url}/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_server.base_url, api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=keyed_server.base_url, api_key="s3cret", max_retries=0)
    assert client.completions.create(model=keyed_server.name, prompt="hi", max_tokens=4).choices


# --- stopping: SIGTERM while generating ---------------------------------------------------------

# mdlm over most of the context, a forward per token: about 2 s on one core here
LONG = {"prompt": "long", "max_tokens": 240, "sampler": "mdlm", "steps": 240, "ignore_eos": True}


def _post(results: dict, key: str, url: str, body: dict) -> None:
    """POST `body` and keep (status, JSON or the SSE data lines, seconds after `results["t0"]`)."""
    stream = body.get("stream", False)
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            response.read()
            if stream and response.status_code == 200:
                payload = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
            else:
                payload = response.json()
            results[key] = (response.status_code, payload, time.monotonic() - results.get("t0", 0.0))
    except Exception as exc:  # a cut connection, a plain-text 500: shown by the assertion
        results[key] = (None, repr(exc), None)


def _start(url: str, requests: dict[str, dict], running: int, queued: int) -> tuple[dict, list]:
    """Send `requests` in order, each once the one before is running or queued."""
    results: dict = {}
    threads = []
    for i, (key, body) in enumerate(requests.items()):
        threads.append(threading.Thread(target=_post, args=(results, key, url, body)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while (h := httpx.get(f"{url}/health").json())["running"] + h["queued"] < i + 1:
            assert time.monotonic() < deadline, h
            time.sleep(0.01)
    assert (h["running"], h["queued"]) == (running, queued), h
    return results, threads


def _stream_ended_with(events: list[str], code: str) -> None:
    assert events[-1] == "[DONE]", events[-3:]
    assert json.loads(events[-2])["error"]["code"] == code, events[-3:]


def test_on_sigterm_the_queued_get_503_at_once_and_the_running_one_finishes(tiny_model_dir, tmp_path):
    with serve(tiny_model_dir, cache_dir=tmp_path / "cache") as server:
        requests = {
            "running": LONG,
            "queued": {"prompt": "wait", "max_tokens": 4},
            "queued stream": {"prompt": "wait", "max_tokens": 4, "stream": True},
        }
        results, threads = _start(server.url, requests, running=1, queued=2)
        results["t0"] = time.monotonic()
        server.process.terminate()
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    status, body, _ = results["running"]  # inside the 5 s grace period: answered in full
    assert status == 200 and body["usage"]["completion_tokens"] == 240
    status, body, seconds = results["queued"]
    assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    assert body["error"]["type"] == "server_error"
    assert seconds < results["running"][2], "the queued request waited for the running one"
    status, events, _ = results["queued stream"]
    assert status == 200  # the stream had started: the error arrives in it
    _stream_ended_with(events, "server_shutting_down")
    assert not [line for line in server.output if "Traceback" in line or '" 500 ' in line]


def test_generations_still_running_after_the_grace_period_end_with_a_503(tiny_model_dir, tmp_path):
    args = ("--max-concurrency", "2", "--shutdown-grace", "0.2")
    with serve(tiny_model_dir, *args, cache_dir=tmp_path / "cache") as server:
        requests = {"whole": LONG, "stream": {**LONG, "stream": True}}
        results, threads = _start(server.url, requests, running=2, queued=0)
        server.process.terminate()
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    status, body, _ = results["whole"]
    assert status == 503 and body["error"]["code"] == "server_shutting_down", body
    status, events, _ = results["stream"]
    assert status == 200
    _stream_ended_with(events, "server_shutting_down")
    assert not [line for line in server.output if "Traceback" in line or '" 500 ' in line]
