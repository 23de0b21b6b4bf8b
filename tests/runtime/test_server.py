"""runtime/server (`ruvdllm serve`) end to end: a real uvicorn process on loopback serving a tiny
model exported by `ruvdllm_export.export`, driven by the official `openai` client. Answers are compared with the runtime
called in-process on the same model, knobs and seed: the server must add nothing and lose
nothing (streamed or not, alone or among concurrent clients)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from runtime import artifact
from runtime.chat_template import chat_prompt
from runtime.cpython_model import open_model
from runtime.ort_backend import OrtOptions
from runtime.settings import USER_ACCEPTANCE, settings_from
from ruvdllm_export.export import export_model
from tests.fixtures.tiny_models import make_gguf_checkpoint
from tests.runtime.server_process import serve
from tests.runtime.tiny_artifact import random_bank

LONG = {"sampler": "mdlm", "steps": 200, "ignore_eos": True}  # 200 whole-span forwards: ~1-2 s here


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    """A tiny random LLaMA checkpoint (GGUF, as llama.cpp writes it) through `export_model`: the
    directory a user would serve. Parity of the export is the exporter's tests' business."""
    scratch = tmp_path_factory.mktemp("export")
    checkpoint = make_gguf_checkpoint(scratch / "tiny.gguf", "llama")
    return export_model(checkpoint, scratch / "tiny-llama", validate=False, log=None)


@pytest.fixture(scope="module")
def server(exported_dir, tmp_path_factory):
    with serve(exported_dir, cache_dir=tmp_path_factory.mktemp("cache")) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(exported_dir):
    return open_model(exported_dir, options=OrtOptions(intra_op_threads=1), verify="sizes")


def runtime_text(model, prompt: str | list[int], seed: int, length: int, **knobs) -> str:
    """The runtime's text for a request's knobs, with the acceptance the server takes when a
    request names none (USER_ACCEPTANCE, as `ruvdllm generate`)."""
    ids = model.encode(prompt) if isinstance(prompt, str) else prompt
    settings = settings_from({"acceptance": USER_ACCEPTANCE, **knobs, "length": length})
    return model.generate(ids, settings, seed=seed).text


def chat_ids(model, content: str) -> list[int]:
    return model.encode(chat_prompt(model, [{"role": "user", "content": content}]))


def collect(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(
        (c.choices[0].delta.content if hasattr(c.choices[0], "delta") else c.choices[0].text) or ""
        for c in chunks
        if c.choices
    )
    return text, chunks


# --- models and health ------------------------------------------------------------------------


def test_models_lists_the_one_served_model(client, server, model, exported_dir):
    models = client.models.list().data
    assert [m.id for m in models] == [server.name] == [exported_dir.name]
    assert models[0].max_model_len == model.config.max_position
    assert client.models.retrieve(server.name).id == server.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_health_reports_the_load(server):
    health = httpx.get(f"{server.url}/health").json()
    assert health == {
        "status": "ok",
        "model": server.name,
        "workers": 1,
        "running": 0,
        "queued": 0,
        "queue_size": 64,
    }


def test_the_quick_start_in_the_docs_runs_as_pasted(server, capsys):
    """docs/server.md's first Python block, pointed at this server: the served id is read, not
    guessed (`model="model"` was a 404 with the default model, whose id is its directory name)."""
    doc = (Path(__file__).parents[2] / "docs" / "server.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8000/v1" in code
    exec(code.replace("http://127.0.0.1:8000/v1", server.base_url), {})
    assert capsys.readouterr().out


# --- completions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"sampler": "mdlm", "steps": 6},
        {"block_size": 8, "steps": 4},
        {"decoding": "threshold", "threshold": 0.3},
        {"decoding": "entropy-bounded", "entropy_bound": 1.0, "order": "left-to-right"},
        {"temperature": 0.9, "top_k": 5, "top_p": 0.9, "schedule": "cosine"},
        {"talora": False, "dgr": False},
        {"sampler": "verified", "block_size": 4},
        {"sampler": "verified", "block_size": 4, "acceptance": "exact"},
        {"sampler": "verified", "block_size": 4, "temperature": 0.8},
        {"sampler": "ar", "temperature": 0.7},
    ],
    ids=[
        "defaults",
        "mdlm",
        "block8",
        "threshold",
        "entropy-bounded",
        "sampled",
        "no-adapters",
        "verified",
        "verified-exact",
        "verified-sampled",
        "ar",
    ],
)
def test_completion_matches_the_runtime(client, server, model, knobs):
    response = client.completions.create(
        model=server.name, prompt="The quick brown fox", max_tokens=24, seed=11, extra_body=knobs
    )
    choice = response.choices[0]
    expected = runtime_text(model, "The quick brown fox", 11, 24, **knobs)
    assert choice.text == expected
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(model.encode("The quick brown fox"))
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.model == server.name and response.object == "text_completion"
    assert response.model_extra["diffusion"]["seed"] == 11
    # the sampler that ran: auto (the default) is bd3lm on a model without a conversion adapter
    info = response.model_extra["diffusion"]
    assert info["sampler"] == knobs.get("sampler", "bd3lm")
    # and the verified sampler's acceptance: auto is lenient when greedy, exact when sampling
    if info["sampler"] == "verified":
        greedy = knobs.get("temperature", 0) == 0
        assert info["acceptance"] == knobs.get("acceptance", "lenient" if greedy else "exact")
    else:
        assert info["acceptance"] is None


def test_completion_takes_token_ids_and_echoes(client, server, model):
    ids = model.encode("Hello, world!")
    response = client.completions.create(model=server.name, prompt=ids, max_tokens=8, seed=1, echo=True)
    assert response.choices[0].text == model.decode(ids) + runtime_text(model, ids, 1, 8)


def test_same_seed_same_text_and_a_fresh_seed_is_reported(client, server, model):
    knobs = {"temperature": 1.0}
    first = client.completions.create(model=server.name, prompt="Once", max_tokens=16, extra_body=knobs)
    seed = first.model_extra["diffusion"]["seed"]
    again = client.completions.create(
        model=server.name, prompt="Once", max_tokens=16, seed=seed, extra_body=knobs
    )
    assert (
        again.choices[0].text
        == first.choices[0].text
        == runtime_text(model, "Once", seed, 16, temperature=1.0)
    )


def test_ignore_eos_generates_every_token(client, server):
    response = client.completions.create(
        model=server.name, prompt="x", max_tokens=40, seed=0, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 40
    assert response.choices[0].finish_reason == "length"


def test_stop_sequence_ends_the_text_before_it(client, server):
    full = (
        client.completions.create(
            model=server.name, prompt="Stop", max_tokens=48, seed=2, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    # A two-character stop string from the middle of the text, without U+FFFD (random weights
    # emit partial UTF-8 now and then).
    stop = next(full[i : i + 2] for i in range(4, len(full) - 2) if "\ufffd" not in full[i : i + 2])
    expected = full[: full.find(stop)]
    whole = client.completions.create(
        model=server.name, prompt="Stop", max_tokens=48, seed=2, stop=[stop], extra_body={"ignore_eos": True}
    ).choices[0]
    assert (whole.text, whole.finish_reason) == (expected, "stop")
    streamed, chunks = collect(
        client.completions.create(
            model=server.name,
            prompt="Stop",
            max_tokens=48,
            seed=2,
            stop=stop,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert streamed == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- chat -------------------------------------------------------------------------------------


def test_chat_uses_the_models_chat_template(client, server, model):
    response = client.chat.completions.create(
        model=server.name,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        max_tokens=20,
        seed=5,
    )
    prompt = chat_prompt(
        model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    )
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == runtime_text(model, prompt, 5, 20)
    assert response.usage.prompt_tokens == len(model.encode(prompt))
    assert response.object == "chat.completion"


def test_chat_content_parts_and_max_completion_tokens(client, server, model):
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    response = client.chat.completions.create(
        model=server.name, messages=[{"role": "user", "content": parts}], max_completion_tokens=12, seed=5
    )
    assert response.choices[0].message.content == runtime_text(model, chat_ids(model, "Hi there"), 5, 12)


# --- streaming --------------------------------------------------------------------------------


def test_streamed_completion_equals_the_whole_one(client, server):
    request = {
        "model": server.name,
        "prompt": "Stream me",
        "max_tokens": 32,
        "seed": 4,
        "extra_body": {"block_size": 4},
    }
    whole = client.completions.create(**request)
    text, chunks = collect(
        client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    assert text == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1, "text arrives in several deltas"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1


def test_streamed_chat_opens_with_the_role_and_equals_the_whole_one(client, server):
    request = {
        "model": server.name,
        "messages": [{"role": "user", "content": "Tell me"}],
        "max_tokens": 32,
        "seed": 9,
    }
    whole = client.chat.completions.create(**request)
    text, chunks = collect(client.chat.completions.create(**request, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": server.name, "prompt": "raw", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_clients_are_all_answered_correctly(client, server, model):
    """16 clients at once (half streaming) on one worker: all queue, none is dropped, and each
    gets exactly what it would get alone."""

    def ask(i: int) -> str:
        request = {"model": server.name, "prompt": f"Client {i} says", "max_tokens": 16, "seed": i}
        if i % 2:
            return collect(client.completions.create(**request, stream=True))[0]
        return client.completions.create(**request).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert answers == [runtime_text(model, f"Client {i} says", i, 16) for i in range(16)]


def test_a_client_leaving_mid_stream_frees_the_model(client, server):
    body = {"model": server.name, "prompt": "long", "max_tokens": 200, "stream": True, **LONG}
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=60) as response:
        next(response.iter_lines())  # the generation has started; now walk away
    deadline = time.monotonic() + 30  # liveness bound, far above the ~1 s of the whole job
    while httpx.get(f"{server.url}/health").json()["running"]:
        assert time.monotonic() < deadline, "the abandoned generation never ended"
        time.sleep(0.02)
    assert (
        client.completions.create(model=server.name, prompt="still here", max_tokens=4).choices[0].text
        is not None
    )
    assert server.alive()


def test_a_client_giving_up_on_a_whole_answer_frees_the_model(client, server):
    body = {"model": server.name, "prompt": "long", "max_tokens": 200, **LONG}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.base_url}/completions", json=body, timeout=0.3)
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/health").json()["running"]:
        assert time.monotonic() < deadline, "the abandoned generation never ended"
        time.sleep(0.02)
    assert client.completions.create(model=server.name, prompt="next", max_tokens=4).choices
    assert server.server_errors() == []


# --- adapters: the bank and the TALoRA / DGR knobs reach the runtime ---------------------------


@pytest.fixture(scope="module")
def bank_dir(tiny_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bank") / "bank"
    random_bank(artifact.load_config(tiny_model_dir), seed=3).save(directory)
    return directory


@pytest.fixture(scope="module")
def bank_server(tiny_model_dir, bank_dir, tmp_path_factory):
    with serve(
        tiny_model_dir, "--bank", str(bank_dir), cache_dir=tmp_path_factory.mktemp("cache")
    ) as process:
        yield process


def test_the_bank_and_adapter_knobs_reach_the_runtime(bank_server, tiny_model_dir, bank_dir):
    model = open_model(tiny_model_dir, bank=bank_dir, options=OrtOptions(intra_op_threads=1), verify="sizes")
    client = openai.OpenAI(base_url=bank_server.base_url, api_key="unused", max_retries=0)
    texts = {}
    for name, knobs in {
        "on": {"dgr_strategy": "entropy"},
        "off": {"talora": False, "dgr": False},
    }.items():
        response = client.completions.create(
            model=bank_server.name,
            prompt="Adapt",
            max_tokens=16,
            seed=0,
            extra_body={"ignore_eos": True, **knobs},
        )
        texts[name] = response.choices[0].text
        assert texts[name] == runtime_text(model, "Adapt", 0, 16, stop_at_eos=False, **knobs)
    assert texts["on"] != texts["off"], "the adapters change nothing: the bank did not reach the model"


# --- the queue bound: 429 with Retry-After ----------------------------------------------------


@pytest.fixture(scope="module")
def small_server(exported_dir, tmp_path_factory):
    with serve(
        exported_dir,
        "--max-concurrency",
        "2",
        "--queue-size",
        "1",
        cache_dir=tmp_path_factory.mktemp("cache"),
    ) as process:
        yield process


def test_two_workers_answer_like_the_runtime(small_server, model):
    client = openai.OpenAI(base_url=small_server.base_url, api_key="unused", max_retries=0, timeout=120)

    def ask(i: int) -> str:
        return (
            client.completions.create(model=small_server.name, prompt=f"Worker {i}", max_tokens=24, seed=i)
            .choices[0]
            .text
        )

    with ThreadPoolExecutor(3) as pool:  # 2 running + 1 queued: the most this server admits
        answers = list(pool.map(ask, range(3)))
    assert answers == [runtime_text(model, f"Worker {i}", i, 24) for i in range(3)]


def test_a_full_queue_answers_429_with_retry_after_and_recovers(small_server):
    url = small_server.url
    long_body = {"model": small_server.name, "prompt": "busy", "max_tokens": 200, **LONG}
    results: list[httpx.Response] = []

    def occupy() -> None:
        results.append(httpx.post(f"{url}/v1/completions", json=long_body, timeout=120))

    refused = None
    for _attempt in range(3):  # the long jobs could, in principle, all end before the probe lands
        workers = [threading.Thread(target=occupy) for _ in range(3)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 30
        while (h := httpx.get(f"{url}/health").json())["running"] < 2 or h["queued"] < 1:
            assert time.monotonic() < deadline, f"the server never filled up: {h}"
            time.sleep(0.005)
        probe = httpx.post(f"{url}/v1/completions", json={"prompt": "probe", "max_tokens": 4}, timeout=120)
        for worker in workers:
            worker.join()
        if probe.status_code == 429:
            refused = probe
            break
    assert refused is not None, "a request beyond 2 running + 1 queued was not refused"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in results[-3:]] == [200, 200, 200], "admitted requests were all served"
    assert all(r.json()["usage"]["completion_tokens"] == 200 for r in results[-3:])
    client = openai.OpenAI(base_url=small_server.base_url, api_key="unused", max_retries=0)
    assert client.completions.create(model=small_server.name, prompt="again", max_tokens=4).choices
