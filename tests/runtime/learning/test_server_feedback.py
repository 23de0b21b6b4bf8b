"""Loop A in `ruvdllm serve`: a real server process records every answer under the id its response
carries, and POST /v1/feedback takes feedback on it, with the server's one error shape."""

import json
import shutil

import httpx
import pytest

from runtime import artifact
from runtime.learning.sqlite_store import SqliteStore
from tests.runtime.server_process import serve
from tests.runtime.tiny_artifact import random_bank

KNOBS = {"max_tokens": 8, "ignore_eos": True, "dgr_strategy": "entropy"}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("banked") / "model"
    shutil.copytree(tiny_model_dir, directory)
    random_bank(artifact.load_config(directory), seed=5).save(directory / "banks")
    artifact.write_manifest(directory)
    return directory


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "trajectories.db"


@pytest.fixture(scope="module")
def server(model_dir, store_path, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "learning.json"
    config.write_text(json.dumps({"loop_a": {"store": str(store_path)}}))
    with serve(
        model_dir, "--learning-config", str(config), cache_dir=tmp_path_factory.mktemp("cache")
    ) as process:
        yield process


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def test_answers_are_recorded_under_their_id_and_take_feedback(http, server, store_path):
    answer = http.post("/completions", json={"prompt": "Hello there", **KNOBS}).json()
    completion_id = answer["id"]
    reply = http.post("/feedback", json={"completion_id": completion_id, "thumbs": "up"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "feedback" and body["completion_id"] == completion_id
    assert body["kind"] == "up" and body["value"] == 1.0
    store = SqliteStore(store_path)
    stored = store.trajectory(completion_id)
    assert stored.answer == answer["choices"][0]["text"] and stored.model == server.name
    assert body["patterns_rescored"] == len(stored.patterns)
    assert [f.kind for f in store.feedback_for(completion_id)] == ["up"]
    assert server.server_errors() == []


def test_streamed_chat_answers_are_recorded_too(http, store_path):
    request = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, **KNOBS}
    with http.stream("POST", "/chat/completions", json=request) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    completion_id = chunks[0]["id"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    reply = http.post("/feedback", json={"completion_id": completion_id, "rating": 4})
    assert reply.status_code == 200 and reply.json()["value"] == 0.5
    assert SqliteStore(store_path).trajectory(completion_id).answer == text


def test_an_unknown_id_is_404(http):
    reply = http.post("/feedback", json={"completion_id": "cmpl-nope", "thumbs": "down"})
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {
            "message": "completion id 'cmpl-nope': no such completion recorded",
            "type": "invalid_request_error",
            "param": "completion_id",
            "code": "completion_not_found",
        }
    }


@pytest.mark.parametrize(
    "body, param",
    [
        ({"completion_id": "cmpl-1", "rating": 7}, "rating"),
        ({"completion_id": "cmpl-1", "rating": 4, "thumbs": "up"}, None),
        ({"completion_id": "cmpl-1"}, None),
        ({"completion_id": "cmpl-1", "thumbs": "sideways"}, "thumbs"),
        ({"completion_id": "", "thumbs": "up"}, "completion_id"),
        ({"thumbs": "up"}, "completion_id"),
        ({"completion_id": "cmpl-1", "thumbs": "up", "stars": 3}, "stars"),
        ({"completion_id": "cmpl-1", "correction": ""}, "correction"),
    ],
)
def test_bad_feedback_is_400_in_the_servers_error_shape(http, body, param):
    """400, as every other invalid request here (OpenAI's convention, not FastAPI's 422)."""
    reply = http.post("/feedback", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and "\n" not in error["message"]


def test_a_server_that_does_not_record_says_so(model_dir, tmp_path):
    with serve(model_dir, "--no-record", cache_dir=tmp_path / "cache") as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            answer = client.post("/completions", json={"prompt": "Hello", **KNOBS})
            assert answer.status_code == 200
            reply = client.post("/feedback", json={"completion_id": answer.json()["id"], "thumbs": "up"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "learning_off"
    assert not (tmp_path / "data").exists()


def test_an_unusable_store_leaves_answers_unharmed_and_feedback_503(model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's directory should be")
    config = tmp_path / "learning.json"
    config.write_text(json.dumps({"loop_a": {"store": str(blocker / "t.db")}}))
    with serve(model_dir, "--learning-config", str(config), cache_dir=tmp_path / "cache") as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            answers = [client.post("/completions", json={"prompt": "Hello", **KNOBS}) for _ in range(2)]
            reply = client.post("/feedback", json={"completion_id": answers[0].json()["id"], "thumbs": "up"})
        warnings = [line for line in server.output if "not recording trajectories" in line]
    assert [a.status_code for a in answers] == [200, 200]
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "store_unavailable"
    assert len(warnings) == 1
