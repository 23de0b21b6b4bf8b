"""Bad input: a one-line RuvdllmError naming the file and what is wrong."""

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from tests.fixtures.tiny_models import make_gguf_checkpoint, make_hf_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf") / "llama", "llama", seed=2)


@pytest.fixture
def hf_copy(hf_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in hf_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def raises(path, *fragments):
    with pytest.raises(RuvdllmError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _edit_config(directory, **changes):
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))


def test_unsupported_hf_architecture(hf_copy):
    _edit_config(hf_copy, architectures=["MistralForCausalLM"])
    raises(hf_copy, "config.json", "'MistralForCausalLM' is not supported", "LlamaForCausalLM")


def test_unsupported_gguf_architecture(tmp_path):
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(path, "phi2")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    raises(path, str(path), "GGUF architecture 'phi2' is not supported")


def test_truncated_safetensors(hf_copy):
    weights = hf_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    raises(hf_copy, str(weights), "truncated or corrupt")


def test_corrupt_safetensors_header(hf_copy):
    weights = hf_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage-garbage-garbage-garbage"[:32]
    weights.write_bytes(bytes(data))
    raises(hf_copy, str(weights), "truncated or corrupt")


def test_missing_tensor_in_safetensors(hf_copy):
    weights = hf_copy / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, weights)
    raises(hf_copy, str(weights), "missing tensor model.layers.1.mlp.down_proj.weight")


def test_config_that_does_not_match_the_weights(hf_copy):
    _edit_config(hf_copy, intermediate_size=256)
    raises(hf_copy, "model.safetensors", "gate_proj.weight has shape [128, 64], the config implies [256, 64]")


def test_tokenizer_larger_than_the_vocabulary(tmp_path):
    directory = make_hf_checkpoint(tmp_path / "hf", "qwen2", tokenizer_vocab_size=448)
    raises(directory, "tokenizer.json", "448 tokens but the model's vocabulary has 384 rows")
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "qwen2", "F32", tokenizer_vocab_size=448)
    raises(path, str(path), "448 tokens")


def test_missing_tensor_in_gguf(tmp_path):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", drop_tensors=("blk.1.ffn_down.weight",))
    raises(path, str(path), "missing tensor blk.1.ffn_down.weight")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.98])
def test_truncated_gguf(tmp_path, keep):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1")
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    raises(path, str(path), "truncated or corrupt")


def test_corrupt_gguf_header(tmp_path):
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1")
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16  # tensor and metadata counts
    path.write_bytes(bytes(data))
    raises(path, str(path), "truncated or corrupt")


def test_not_a_checkpoint(tmp_path):
    raises(tmp_path / "nothing-here", "no such file or directory")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello")
    raises(junk, str(junk), "neither a GGUF file nor a Hugging Face model directory")
    raises(tmp_path, str(tmp_path), "no config.json")


def test_hf_dir_without_tokenizer_json(hf_copy):
    (hf_copy / "tokenizer.json").unlink()
    raises(hf_copy, str(hf_copy), "no tokenizer.json")
