"""Readers: Hugging Face and GGUF copies of the same tiny model give the same model."""

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.checkpoints.gguf_names import gguf_name
from ruvdllm_export.checkpoints.gguf_reader import unpermute_rows
from ruvdllm_export.quant.q4 import Q4Tensor, dequantize_q4
from ruvdllm_export.spec import expected_shapes
from tests.fixtures.tiny_models import (
    ARCHS,
    KQUANT_DIMS,
    make_gguf_checkpoint,
    make_hf_checkpoint,
    tiny_weights,
)

CASES = [(arch, tied) for arch in ARCHS for tied in (False, True)]
TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Errors should never pass silently: 12345 + 0.5 = ?\n\n  indented\tline",
    "<|im_start|>user\nWhat is JSON?<|im_end|>\n<|im_start|>assistant\n",
    "unicode: café naïve 日本語 🙂",
]


def as_float(weight) -> np.ndarray:
    return dequantize_q4(weight) if isinstance(weight, Q4Tensor) else weight


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        case: load_checkpoint(make_hf_checkpoint(root / f"{case[0]}-{case[1]}", *case, seed=7))
        for case in CASES
    }


@pytest.mark.parametrize("arch,tied", CASES)
def test_hf_reader_returns_the_saved_weights_and_config(hf_models, arch, tied):
    model = hf_models[arch, tied]
    expected = tiny_weights(arch, tied, seed=7)
    assert set(model.weights) == set(expected) == set(expected_shapes(model.spec))
    for name, array in expected.items():
        np.testing.assert_array_equal(model.weights[name], array, err_msg=name)
    spec = model.spec
    assert (spec.architecture, spec.tie_word_embeddings, spec.vocab_size) == (arch, tied, 384)
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.num_layers) == (4, 2, 16, 2)
    assert spec.attention_bias == (arch == "qwen2") and spec.qk_norm == (arch == "qwen3")
    assert spec.rope_theta == ARCHS[arch].rope_theta and spec.rms_norm_eps == 1e-6
    assert spec.eos_token_ids == (2,) and "<|im_start|>" in spec.chat_template
    assert set(model.exactness.values()) == {"float"}
    assert model.source["format"] == "huggingface" and len(model.source["files"]["model.safetensors"]) == 64
    assert model.tokenizer.id_to_token(model.mask_token_id) == "<|mask|>"


@pytest.mark.parametrize("arch,tied", CASES)
def test_gguf_f32_equals_hf_exactly(tmp_path, hf_models, arch, tied):
    """Same weights through llama.cpp's layout (and its q/k permutation for LLaMA) come back unchanged."""
    hf = hf_models[arch, tied]
    model = load_checkpoint(make_gguf_checkpoint(tmp_path / "m.gguf", arch, "F32", tied, seed=7))
    assert model.spec == hf.spec
    assert set(model.weights) == set(hf.weights)
    for name, array in hf.weights.items():
        np.testing.assert_array_equal(model.weights[name], array, err_msg=name)
    assert model.mask_token_id == hf.mask_token_id
    for text in TEXTS:  # the tokenizer rebuilt from GGUF metadata = the tokenizer.json
        assert model.tokenizer.encode(text).ids == hf.tokenizer.encode(text).ids, text
        assert model.tokenizer.decode(hf.tokenizer.encode(text).ids) == hf.tokenizer.decode(
            hf.tokenizer.encode(text).ids
        )


def _file_tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _gguf_reference(model, name, tensors):
    """gguf's own dequantization of the file's tensor, with the LLaMA permutation undone."""
    tensor = tensors[gguf_name(name)]
    values = dequantize(tensor.data, tensor.tensor_type)
    spec = model.spec
    if spec.architecture == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = spec.num_heads if "q_proj" in name else spec.num_kv_heads
        values = values[unpermute_rows(values.shape[0], heads)]
    return values


QTYPES = {  # qtype -> (the 2-D tensors' label, is Q4Tensor)
    "F16": ("float from F16", False),
    "BF16": ("float from BF16", False),
    "Q8_0": ("float from Q8_0", False),
    "Q4_0": ("exact q4 from Q4_0", True),
    "Q4_1": ("exact q4 from Q4_1", True),
    "Q4_K": ("exact q4 from Q4_K", True),
    "Q5_K": ("lossy: Q5_K dequantized; will be requantized", False),
    "Q6_K": ("lossy: Q6_K dequantized; will be requantized", False),
}


@pytest.mark.parametrize("qtype", list(QTYPES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_gguf_types_map_exactly_or_are_marked_lossy(tmp_path, arch, qtype):
    label, is_q4 = QTYPES[qtype]
    path = make_gguf_checkpoint(tmp_path / "m.gguf", arch, qtype, tied=(arch == "qwen3"), seed=3)
    model = load_checkpoint(path)
    tensors = _file_tensors(path)
    for name, weight in model.weights.items():
        is_matrix = len(weight.shape) == 2
        assert model.exactness[name] == (label if is_matrix else "float"), name
        assert isinstance(weight, Q4Tensor) == (is_q4 and is_matrix), name
        np.testing.assert_array_equal(as_float(weight), _gguf_reference(model, name, tensors), err_msg=name)
    assert model.lossy == (
        [n for n in model.weights if len(model.weights[n].shape) == 2] if "lossy" in label else []
    )
    assert model.source["tensor_types"][qtype] > 0 and len(model.source["sha256"]) == 64


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_quantized_stays_close_to_hf(tmp_path, hf_models, qtype):
    hf = hf_models["llama", False]
    model = load_checkpoint(make_gguf_checkpoint(tmp_path / "m.gguf", "llama", qtype, seed=7))
    tolerance = {"F16": 2e-3, "BF16": 2e-2, "Q8_0": 2e-2, "Q4_0": 0.4, "Q4_1": 0.3}[qtype]
    for name, array in hf.weights.items():
        err = np.abs(as_float(model.weights[name]) - array).max()
        assert err <= tolerance * max(1.0, np.abs(array).max()), (name, err)


def test_mixed_file_keeps_each_tensors_type(tmp_path):
    """Like SmolLM2's Q4_1 file: Q8_0 embedding (tied head), Q4_1 linears."""
    model = load_checkpoint(
        make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, embed_qtype="Q8_0")
    )
    assert model.exactness["model.embed_tokens.weight"] == "float from Q8_0"
    assert model.exactness["model.layers.1.mlp.down_proj.weight"] == "exact q4 from Q4_1"
    assert model.spec.tie_word_embeddings and "lm_head.weight" not in model.weights


def test_kquant_model_dims(tmp_path):
    model = load_checkpoint(make_gguf_checkpoint(tmp_path / "m.gguf", "qwen2", "Q4_K"))
    assert model.spec.hidden_size == KQUANT_DIMS.hidden_size
    q = model.weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.n_blocks == KQUANT_DIMS.hidden_size // 32 and q.mins is not None


def test_sharded_safetensors_and_bf16(tmp_path):
    """A sharded bf16 checkpoint (how most released models ship) reads back exactly."""
    import torch
    import transformers

    from ruvdllm_export.checkpoints.hf import read_hf_dir

    source = make_hf_checkpoint(tmp_path / "fp32", "qwen2", tied=False, seed=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", max_shard_size="100KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    spec, weights, exactness, files = read_hf_dir(tmp_path / "bf16")
    assert len(files) > 1 and set(exactness.values()) == {"float from BF16"}
    for name, tensor in model.state_dict().items():
        if name in weights:
            np.testing.assert_array_equal(weights[name], tensor.float().numpy(), err_msg=name)
