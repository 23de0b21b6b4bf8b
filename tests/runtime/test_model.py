import json

import pytest

from runtime import artifact
from runtime.banks import Bank
from runtime.chat_template import chat_prompt, render_chat
from runtime.cpython_model import open_model
from runtime.dgr import DgrConfig
from runtime.ort_backend import OrtOptions
from runtime.settings import GenerationSettings
from ruvdllm.errors import RuvdllmError
from tests.runtime.tiny_artifact import random_bank

ONE_THREAD = OrtOptions(intra_op_threads=1)


def test_generate_text_and_stream(tiny_model_dir):
    model = open_model(tiny_model_dir, options=ONE_THREAD)
    events = []
    done = model.generate(
        "Hello, world", GenerationSettings(length=8, stop_at_eos=False), on_step=events.append
    )
    assert len(done.tokens) == 8 and isinstance(done.text, str)
    assert done.text == model.decode(done.tokens)
    assert len(events) == done.result.steps == 8
    assert events[0].tokens.count(None) == 3  # block of 4: one committed per step
    assert done.prompt_tokens == len(model.encode("Hello, world"))


def test_chat_template(tiny_model_dir):
    model = open_model(tiny_model_dir, options=ONE_THREAD)
    text = chat_prompt(model, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert model.encode(text)[0] == model.config.bos_token_id  # specials are tokenized as such
    with pytest.raises(RuvdllmError, match="chat template: nope"):
        render_chat("{{ raise_exception('nope') }}", [])


@pytest.mark.parametrize(
    "settings, prompt, message",
    [
        (GenerationSettings(), "   ", "prompt: empty"),
        (GenerationSettings(length=300), "hi", "exceed the model's context"),
        (GenerationSettings(steps=9), "hi", "steps 9: out of range"),
    ],
)
def test_bad_input(tiny_model_dir, settings, prompt, message):
    model = open_model(tiny_model_dir, options=ONE_THREAD)
    with pytest.raises(RuvdllmError, match=message):
        model.generate(prompt, settings)


def test_corrupt_directories(tiny_model_copy, tmp_path):
    with pytest.raises(RuvdllmError, match="no such model directory"):
        open_model(tmp_path / "nowhere")
    (tmp_path / "prompt.txt").write_text("hello")
    with pytest.raises(RuvdllmError, match="prompt.txt: a file, not a model directory"):
        open_model(tmp_path / "prompt.txt")
    with pytest.raises(RuvdllmError, match="not a model directory"):
        open_model(tmp_path)
    graph = tiny_model_copy / artifact.GRAPH_NAME
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(RuvdllmError, match="sha256 does not match"):
        open_model(tiny_model_copy)
    graph.write_bytes(bytes(data[:-10]))
    with pytest.raises(RuvdllmError, match="bytes, the manifest says"):
        open_model(tiny_model_copy)
    graph.unlink()
    with pytest.raises(RuvdllmError, match="missing"):
        open_model(tiny_model_copy)


def test_unparseable_graph_and_tokenizer(tiny_model_copy):
    (tiny_model_copy / artifact.TOKENIZER_NAME).write_text("{}")
    artifact.write_manifest(tiny_model_copy)
    with pytest.raises(RuvdllmError, match="not a tokenizers file"):
        open_model(tiny_model_copy)
    (tiny_model_copy / artifact.GRAPH_NAME).write_bytes(b"not onnx")
    artifact.write_manifest(tiny_model_copy)
    with pytest.raises(RuvdllmError, match="tokenizers|onnxruntime cannot load"):
        open_model(tiny_model_copy)


def test_verification_is_cached_until_a_file_changes(tiny_model_copy, monkeypatch):
    calls = []
    real = artifact.sha256_file
    monkeypatch.setattr(artifact, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    open_model(tiny_model_copy, options=ONE_THREAD)
    assert len(calls) == len(json.loads((tiny_model_copy / artifact.MANIFEST_NAME).read_text())["files"])
    calls.clear()
    open_model(tiny_model_copy, options=ONE_THREAD)
    assert calls == []
    config = tiny_model_copy / artifact.CONFIG_NAME
    config.write_text(config.read_text().replace('"block_size": 4', '"block_size": 5'))
    with pytest.raises(RuvdllmError, match="config.json: sha256"):
        open_model(tiny_model_copy, options=ONE_THREAD)


def test_banks_load_from_the_model_or_a_directory(tiny_model_copy, tmp_path):
    config = artifact.load_config(tiny_model_copy)
    bank = random_bank(config, seed=5)
    bank.save(tiny_model_copy / "banks")
    artifact.write_manifest(tiny_model_copy)
    model = open_model(tiny_model_copy, options=ONE_THREAD)
    assert model.bank is not None and len(model.index) == len(bank.pattern_slots)
    settings = GenerationSettings(length=8, stop_at_eos=False)
    eager = GenerationSettings(
        length=8, stop_at_eos=False, dgr_config=DgrConfig(strategy="entropy", threshold=0.0)
    )
    with_adapters = model.generate("Hello", eager)
    assert any(e.retrieved for e in with_adapters.trace)
    off = model.generate("Hello", GenerationSettings(length=8, stop_at_eos=False, talora=False, dgr=False))
    plain = open_model(tiny_model_copy, bank=_empty_bank(config, tmp_path), options=ONE_THREAD)
    assert off.tokens == plain.generate("Hello", settings).tokens  # adapters off = zero bank = base model

    from dataclasses import replace

    wrong = Bank.for_model(replace(config, hidden_size=128, head_dim=32))
    wrong.save(tmp_path / "wrong")
    with pytest.raises(RuvdllmError, match="hidden_size 128 does not match the model's 64"):
        open_model(tiny_model_copy, bank=tmp_path / "wrong")
    with pytest.raises(RuvdllmError, match="not an adapter bank"):
        open_model(tiny_model_copy, bank=tmp_path)


def _empty_bank(config, tmp_path):
    Bank.for_model(config).save(tmp_path / "empty")
    return tmp_path / "empty"
