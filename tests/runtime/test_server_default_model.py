"""`ruvdllm serve` on the real default model (SmolLM2-135M-Instruct, GGUF Q4_1 exported here):
the `openai` client gets a correct answer, streamed and not. Slow: the 98 MB checkpoint is
fetched into the cache on first use and the export takes a while on CPU."""

from __future__ import annotations

import openai
import pytest

from tests.runtime.server_process import serve

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
AR = {"block_size": 1}  # one token per block: the exported AR weights decode as they were trained


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.export import export_model

    scratch = tmp_path_factory.mktemp("default")
    # Float activations (level 0): the checkpoint's own greedy answer. At the cpu default, int8
    # activations as llama.cpp's, this question gets llama.cpp's answer, "L'Étoile, la Cité, …".
    model = export_model(
        default_gguf_path(progress=False), scratch / "smollm2", validate=False, log=None, accuracy_level=0
    )
    with serve(model, cache_dir=scratch / "cache", timeout=300) as process:
        yield process


def test_the_default_model_answers_through_the_openai_client(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
    whole = client.chat.completions.create(model=server.name, messages=QUESTION, max_tokens=16, extra_body=AR)
    assert "Paris" in whole.choices[0].message.content
    stream = client.chat.completions.create(
        model=server.name, messages=QUESTION, max_tokens=16, stream=True, extra_body=AR
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == whole.choices[0].message.content
    assert whole.usage.prompt_tokens > len(
        "What is the capital of France?".split()
    )  # the template's system turn
