"""Bad input to `ruvdllm serve` (runtime/server/errors.py, jobs.py, schemas.py, limits.py): every
malformed or out-of-range request gets a 4xx with an OpenAI-style JSON error naming the field —
never a 500 — and the server keeps serving. Raw httpx against a real uvicorn process, plus the
official client's typed exceptions."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.runtime.server_process import serve

MAX_BYTES = 65536  # the server's --max-request-bytes here: small, so 413 costs little to provoke
OK = {"role": "user", "content": "hello"}


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(
        tiny_model_dir, "--max-request-bytes", str(MAX_BYTES), cache_dir=tmp_path_factory.mktemp("cache")
    ) as process:
        yield process


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def assert_openai_error(
    response: httpx.Response, status: int, param: str | None, code: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"]
    assert error["type"] == ("invalid_request_error" if status < 429 else "rate_limit_error")
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# (request body, expected param, expected code)
COMPLETION_CASES = {
    "empty prompt": ({"prompt": ""}, "prompt", None),
    "blank prompt": ({"prompt": "  \n "}, "prompt", None),
    "empty list": ({"prompt": []}, "prompt", None),
    "batch of prompts": ({"prompt": ["a", "b"]}, "prompt", None),
    "batch of token lists": ({"prompt": [[1, 2]]}, "prompt", None),
    "token beyond the vocabulary": ({"prompt": [5, 99999]}, "prompt", None),
    "negative token": ({"prompt": [-1]}, "prompt", None),
    "prompt of wrong type": ({"prompt": 5}, "prompt", None),
    "no prompt": ({}, "prompt", None),
    "prompt beyond the context": ({"prompt": "hello " * 400}, "prompt", "context_length_exceeded"),
    "length beyond the context": ({"prompt": "x", "max_tokens": 10000}, "prompt", "context_length_exceeded"),
    "max_tokens 0": ({"prompt": "x", "max_tokens": 0}, "max_tokens", None),
    "max_tokens string": ({"prompt": "x", "max_tokens": "5"}, "max_tokens", None),
    "max_tokens float": ({"prompt": "x", "max_tokens": 5.5}, "max_tokens", None),
    "max_tokens bool": ({"prompt": "x", "max_tokens": True}, "max_tokens", None),
    "steps 0": ({"prompt": "x", "steps": 0}, "steps", None),
    "steps beyond the block": ({"prompt": "x", "steps": 9, "max_tokens": 8}, "steps", None),
    "steps beyond the length": (
        {"prompt": "x", "sampler": "mdlm", "steps": 9, "max_tokens": 8},
        "steps",
        None,
    ),
    "block size 0": ({"prompt": "x", "block_size": 0}, "block_size", None),
    "block size beyond the context": ({"prompt": "x", "block_size": 100000}, "block_size", None),
    "unknown sampler": ({"prompt": "x", "sampler": "autoregressive"}, "sampler", None),
    "unknown decoding": ({"prompt": "x", "decoding": "greedy"}, "decoding", None),
    "unknown schedule": ({"prompt": "x", "schedule": "square"}, "schedule", None),
    "threshold 0": ({"prompt": "x", "threshold": 0}, "threshold", None),
    "threshold above 1": ({"prompt": "x", "threshold": 1.5}, "threshold", None),
    "negative entropy bound": ({"prompt": "x", "entropy_bound": -0.5}, "entropy_bound", None),
    "entropy bound string": ({"prompt": "x", "entropy_bound": "high"}, "entropy_bound", None),
    "unknown order": ({"prompt": "x", "order": "random"}, "order", None),
    "negative temperature": ({"prompt": "x", "temperature": -1}, "temperature", None),
    "temperature string": ({"prompt": "x", "temperature": "hot"}, "temperature", None),
    "top_p 0": ({"prompt": "x", "top_p": 0}, "top_p", None),
    "negative top_k": ({"prompt": "x", "top_k": -1}, "top_k", None),
    "n 2": ({"prompt": "x", "n": 2}, "n", None),
    "logprobs": ({"prompt": "x", "logprobs": 5}, "logprobs", None),
    "best_of": ({"prompt": "x", "best_of": 3}, "best_of", None),
    "suffix": ({"prompt": "x", "suffix": "y"}, "suffix", None),
    "presence penalty": ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", None),
    "logit bias": ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias", None),
    "five stop sequences": ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", None),
    "empty stop sequence": ({"prompt": "x", "stop": ""}, "stop", None),
    "stream string": ({"prompt": "x", "stream": "yes"}, "stream", None),
    "stream options": (
        {"prompt": "x", "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        None,
    ),
    "seed string": ({"prompt": "x", "seed": "abc"}, "seed", None),
    "unknown DGR strategy": ({"prompt": "x", "dgr_strategy": "always"}, "dgr_strategy", None),
    "unknown acceptance": ({"prompt": "x", "acceptance": "loose"}, "acceptance", None),
    "acceptance for a diffusion sampler": (
        {"prompt": "x", "sampler": "bd3lm", "acceptance": "lenient"},
        "acceptance",
        None,
    ),
    "misspelt knob": ({"prompt": "x", "stepz": 4}, "stepz", None),
    "a chat field": ({"prompt": "x", "tools": None}, "tools", None),
    "decoding under ar": ({"prompt": "x", "sampler": "ar", "decoding": "threshold"}, "decoding", None),
    "block size under ar": ({"prompt": "x", "sampler": "ar", "block_size": 4}, "block_size", None),
    "schedule under verified": (
        {"prompt": "x", "sampler": "verified", "schedule": "cosine"},
        "schedule",
        None,
    ),
}

CHAT_CASES = {
    "no messages": ({"messages": []}, "messages", None),
    "messages string": ({"messages": "hi"}, "messages", None),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role", None),
    "no role": ({"messages": [{"content": "x"}]}, "messages.0.role", None),
    "image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages.0.content",
        None,
    ),
    "content number": ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", None),
    "empty content": ({"messages": [{"role": "user", "content": ""}]}, "messages", None),
    "tools": ({"messages": [OK], "tools": [{"type": "function"}]}, "tools", None),
    "json mode": ({"messages": [OK], "response_format": {"type": "json_object"}}, "response_format", None),
    "two lengths": ({"messages": [OK], "max_tokens": 5, "max_completion_tokens": 6}, None, None),
    "beyond the context": (
        {"messages": [{"role": "user", "content": "hello " * 400}]},
        "messages",
        "context_length_exceeded",
    ),
    "steps beyond the block": ({"messages": [OK], "steps": 99}, "steps", None),
}


@pytest.mark.parametrize("body, param, code", COMPLETION_CASES.values(), ids=COMPLETION_CASES)
def test_bad_completion_requests_are_400s_naming_the_field(http, server, body, param, code):
    assert_openai_error(http.post("/completions", json={"model": server.name, **body}), 400, param, code)


@pytest.mark.parametrize("body, param, code", CHAT_CASES.values(), ids=CHAT_CASES)
def test_bad_chat_requests_are_400s_naming_the_field(http, server, body, param, code):
    assert_openai_error(http.post("/chat/completions", json={"model": server.name, **body}), 400, param, code)


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": ', b"[1, 2]", b'"text"', b"", b"\xff\xfe", b"null", b"{'prompt': 'x'}"],
    ids=["truncated", "array", "string", "empty", "binary", "null", "single quotes"],
)
def test_malformed_json_is_a_400(http, path, raw):
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400, None)


# Each holds a lone UTF-16 surrogate, which JSON's \\ud800 escape can carry but no UTF-8 encoder
# (the tokenizer, a JSON reply) takes: a 400 naming the field, never the 500 it was.
SURROGATE = "\ud800"
SURROGATE_CASES = {
    "prompt": ("/completions", {"prompt": SURROGATE}, "prompt"),
    "prompt list": ("/completions", {"prompt": [f"a{SURROGATE}"]}, "prompt"),
    "stop": ("/completions", {"prompt": "x", "stop": ["ok", SURROGATE]}, "stop"),
    "model": ("/completions", {"prompt": "x", "model": SURROGATE}, "model"),
    "user": ("/completions", {"prompt": "x", "user": SURROGATE}, "user"),
    "chat content": (
        "/chat/completions",
        {"messages": [{"role": "user", "content": SURROGATE}]},
        "messages.0.content",
    ),
    "system message": (
        "/chat/completions",
        {"messages": [{"role": "system", "content": f"be {SURROGATE}"}, OK]},
        "messages.0.content",
    ),
    "text part": (
        "/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": SURROGATE}]}]},
        "messages.0.content",
    ),
    "chat stop": ("/chat/completions", {"messages": [OK], "stop": SURROGATE}, "stop"),
}


@pytest.mark.parametrize("path, body, param", SURROGATE_CASES.values(), ids=SURROGATE_CASES)
def test_a_lone_surrogate_is_a_400_naming_the_field(http, path, body, param):
    raw = json.dumps({"max_tokens": 2, **body}).encode()  # ASCII: the surrogate as its escape
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert "lone UTF-16 surrogate" in assert_openai_error(response, 400, param)["message"]
    # the keep-alive connection is still good (a 500 here used to reset it)
    assert http.post("/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_null_is_the_default_for_every_optional_field(http):
    """The official clients send null for a field not given."""
    nulls = dict.fromkeys(
        "n stream stream_options stop seed user presence_penalty frequency_penalty logit_bias "
        "temperature top_p max_tokens ignore_eos sampler steps block_size".split()
    )
    completion = http.post("/completions", json={"prompt": "x", **nulls, "echo": None, "logprobs": None})
    assert completion.status_code == 200, completion.text
    assert completion.json()["object"] == "text_completion"
    chat_nulls = {"tools": None, "tool_choice": None, "top_logprobs": None, "response_format": None}
    chat = http.post("/chat/completions", json={"messages": [OK], **nulls, **chat_nulls})
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion"


def test_a_field_of_the_other_endpoint_is_unrecognized_not_unsupported(http):
    for field in ("tools", "top_logprobs"):
        error = assert_openai_error(http.post("/completions", json={"prompt": "x", field: None}), 400, field)
        assert "unrecognized request argument" in error["message"]


@pytest.mark.parametrize("field", ["temperature", "top_p", "threshold"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_a_number_that_is_not_finite_is_said_to_be(http, field, value):
    raw = f'{{"prompt": "x", "{field}": {value}}}'.encode()  # what Python's JSON parser takes
    response = http.post("/completions", content=raw, headers={"content-type": "application/json"})
    assert "finite number" in assert_openai_error(response, 400, field)["message"]


@pytest.mark.parametrize("path", ["/completions", "/chat/completions"])
def test_a_body_that_is_not_utf8_is_malformed_json(http, path):
    raw = b'{"prompt": "caf\xe9"}'  # Latin-1
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, None, "invalid_json")
    assert error["message"] == "request body: malformed JSON (not UTF-8: byte 0xe9 at position 15)"


def test_a_body_that_is_not_json_is_a_400(http):
    response = http.post("/completions", content=b"prompt=hello", headers={"content-type": "text/plain"})
    assert "JSON object" in assert_openai_error(response, 400, None)["message"]


def test_an_unknown_model_is_a_404(http):
    error = assert_openai_error(
        http.post("/completions", json={"model": "gpt-4o", "prompt": "x"}), 404, "model"
    )
    assert error["code"] == "model_not_found"


def test_unknown_paths_and_methods_are_json_errors(http):
    assert_openai_error(http.post("/embeddings", json={"input": "x"}), 404, None)
    assert_openai_error(http.get("/completions"), 405, None)


def test_a_body_over_the_limit_is_a_413(http, server):
    big = {"model": server.name, "prompt": "x" * (MAX_BYTES + 1)}
    assert_openai_error(http.post("/completions", json=big), 413, None, "request_too_large")

    def chunks():  # no Content-Length: counted as it arrives
        data = json.dumps(big).encode()
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    response = http.post("/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, None, "request_too_large")


def test_the_openai_client_raises_its_typed_errors(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="steps 99: out of range"):
        client.completions.create(model=server.name, prompt="x", max_tokens=8, extra_body={"steps": 99})
    with pytest.raises(openai.BadRequestError, match="sampler"):
        client.chat.completions.create(model=server.name, messages=[OK], extra_body={"sampler": "gibbs"})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci", prompt="x")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=server.name, prompt="hello " * 400)
    with pytest.raises(openai.BadRequestError, match="steps"):  # before the stream starts
        client.completions.create(model=server.name, prompt="x", stream=True, extra_body={"steps": 99})


def test_after_all_that_the_server_still_serves(http, server):
    """Runs last in this module: no error above was a crash or a 500."""
    response = http.post("/completions", json={"model": server.name, "prompt": "still fine", "max_tokens": 4})
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in (
        "stop",
        "length",
    )
    assert http.get(f"{server.url}/health").json()["status"] == "ok"
    assert server.alive()
    assert server.server_errors() == []
