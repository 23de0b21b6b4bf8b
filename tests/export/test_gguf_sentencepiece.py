"""SentencePiece GGUF vocabularies (`tokenizer.ggml.model = llama`): the rebuilt `tokenizers`
pipeline gives SentencePiece's own ids on a broad text sample and llama.cpp's (added tokens
included), decodes back, and a model with such a vocabulary exports and generates end to end."""

from __future__ import annotations

import functools

import pytest

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.checkpoints.gguf_reader import open_gguf, read_metadata
from ruvdllm_export.checkpoints.gguf_sentencepiece import merges_from_scores
from ruvdllm_export.checkpoints.tokenizer import tokenizer_from_gguf
from tests.fixtures.tiny_models import TinyDims, make_gguf_checkpoint
from tests.fixtures.tiny_sentencepiece import processor, train_sentencepiece

spm = pytest.importorskip("sentencepiece")
DIMS = TinyDims(vocab_size=448)  # the trained pieces (~400) padded with [PAD] rows, as llama.cpp pads

SAMPLES = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "runs     of      spaces and\ttabs\t\tand\nnewlines\n\n\nand blank lines",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # code\n",
    "Zahlen: 3.14159, 2024-01-31, 1,000,000 and 0x1F",
    "naïve café, Straße, ÅNGSTRÖM, İstanbul, Größe über schön",
    "日本語のテキストと中文字符，한국어 텍스트",
    "Ελληνικά και русский текст, עברית, العربية",
    "emoji 😀👍🏽 🇩🇪 👨‍👩‍👧‍👦 and ✨sparkles✨",
    "a <tool> call and <tool><tool> twice",
    "it's we're they'll I'd you've CAN'T",
    " ",
    "\u2581 already a meta space",
    "x",
    "",
]


@functools.cache
def _model() -> bytes:
    return train_sentencepiece()


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "tiny-llama-spm.gguf"
    return make_gguf_checkpoint(path, "llama", "Q4_0", seed=3, dims=DIMS, sentencepiece=_model())


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return tokenizer_from_gguf(read_metadata(open_gguf(gguf_path)), str(gguf_path))


ADDED = ("<tool>", "<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize("text", [t for t in SAMPLES if not any(a in t for a in ADDED)])
def test_ids_equal_sentencepiece(tokenizer, text):
    sp = processor(_model())
    expected = sp.encode(text)
    assert tokenizer.encode(text, add_special_tokens=False).ids == expected
    assert tokenizer.encode(text).ids == [sp.bos_id(), *expected]  # llama.cpp adds BOS to SentencePiece
    assert tokenizer.decode(expected) == sp.decode(expected)


def test_ids_equal_llama_cpp(gguf_path, tokenizer):
    """llama.cpp's own tokenizer on the same file, added tokens included: around them it starts each
    stretch of text with the prefix space (SentencePiece itself has no added tokens to compare)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    reference = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    for text in [*SAMPLES, "<|im_start|>user\nHi<|im_end|>\n", "a <tool> call"]:
        expected = reference.tokenize(text.encode(), add_bos=True, special=True)
        assert tokenizer.encode(text).ids == expected, text


def test_sample_exercises_byte_fallback_and_whitespace_pieces(tokenizer):
    """The sample is broad where it matters: bytes, runs of spaces, multi-character merges."""
    sp = processor(_model())
    pieces = [sp.id_to_piece(i) for text in SAMPLES for i in sp.encode(text)]
    assert any(p.startswith("<0x") for p in pieces)  # byte fallback
    assert any(set(p) == {"\u2581"} and len(p) > 1 for p in pieces)  # whitespace-only pieces
    assert sum(len(p) > 3 for p in pieces) > 20  # real merges


def test_control_tokens_map_to_their_ids(tokenizer):
    sp = processor(_model())
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == sp.piece_to_id("<|im_start|>") and ids[-1] == sp.piece_to_id("<|im_end|>")
    assert tokenizer.decode(ids) == "user\nHi"  # specials skipped, as the runtime decodes


def test_merges_from_scores_orders_by_merged_score():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0]
    assert merges_from_scores(tokens, scores) == [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]


def test_checkpoint_loads_with_a_mask_token_the_tokenizer_never_emits(gguf_path):
    loaded = load_checkpoint(gguf_path)
    sp = processor(_model())
    assert loaded.tokenizer.get_vocab_size() == DIMS.vocab_size
    # no spare row, the chat markers are in the template, bos/eos/unk are used: the byte 0xFF,
    # which no UTF-8 text contains, so the tokenizer never emits it
    assert loaded.tokenizer.id_to_token(loaded.mask_token_id) == "<0xFF>"
    assert loaded.mask_token_id == sp.piece_to_id("<0xFF>")


def test_mismatched_lengths_are_one_line_errors(gguf_path):
    meta = dict(read_metadata(open_gguf(gguf_path)))
    meta["tokenizer.ggml.scores"] = meta["tokenizer.ggml.scores"][:-1]
    with pytest.raises(RuvdllmError, match="scores") as error:
        tokenizer_from_gguf(meta, "m.gguf")
    assert "\n" not in str(error.value) and "m.gguf" in str(error.value)
    meta = dict(read_metadata(open_gguf(gguf_path)), **{"tokenizer.ggml.model": "bert"})
    with pytest.raises(RuvdllmError, match="'bert'"):
        tokenizer_from_gguf(meta, "m.gguf")


def test_export_and_generate_end_to_end(gguf_path, tokenizer, tmp_path):
    """A SentencePiece GGUF through export (validated graph, tokenizer.json in the artifact) and the
    CPython runtime: the artifact's tokenizer is the same pipeline, and a few tokens come out."""
    from runtime.cpython_model import open_model
    from runtime.settings import GenerationSettings
    from ruvdllm_export.export import export_model

    lines = []
    out = export_model(
        gguf_path, tmp_path / "model", log=lambda *parts: lines.append(" ".join(map(str, parts)))
    )
    assert "peak memory" in lines[-1]  # the report names the export's peak resident memory
    model = open_model(out)
    for text in [*SAMPLES, "<|im_start|>user\nHi<|im_end|>\n"]:
        assert model.encode(text) == tokenizer.encode(text, add_special_tokens=False).ids, text
        assert model.decode(model.encode(text)) == tokenizer.decode(model.encode(text)), text
    result = model.generate("Hello world", GenerationSettings(length=8, block_size=4), seed=0)
    assert len(result.tokens) >= 1 and isinstance(result.text, str)
