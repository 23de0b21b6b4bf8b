"""The browser's tokenizer (web/js/tokenizer.js, @huggingface/tokenizers) gives the same ids as
`tokenizers` on CPython, for text with unicode, code, whitespace runs and emoji."""

from __future__ import annotations

import pytest

from tests.fixtures.tiny_tokenizer import make_tokenizer
from tests.web.conftest import open_probe, rpc

pytestmark = pytest.mark.browser

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\nand blank lines",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # code\n",
    "Zahlen: 3.14159, 2024-01-31, 1,000,000 and 0x1F",
    "naïve café, Straße, ÅNGSTRÖM, İstanbul",
    "日本語のテキストと中文字符，한국어 텍스트",
    "Ελληνικά και русский текст, עברית, العربية",
    "emoji 😀👍🏽 🇩🇪 👨‍👩‍👧‍👦 and ✨sparkles✨",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "it's we're they'll I'd you've CAN'T",
    "",
]


def browser_ids(browser, web_server, tokenizer_url: str, add_special: bool) -> list[dict]:
    page = open_probe(browser, web_server)
    return rpc(
        page, "tokenize", {"tokenizerUrl": tokenizer_url, "texts": SAMPLES, "addSpecialTokens": add_special}
    )


@pytest.mark.parametrize("style", ["smollm", "qwen2"])
def test_same_ids_as_cpython_tokenizers(browser, web_server, style):
    tokenizer = make_tokenizer(384, style=style)
    path = web_server.data_dir / f"tokenizer-{style}.json"
    tokenizer.save(str(path))
    results = browser_ids(browser, web_server, f"/data/{path.name}", add_special=False)
    for text, result in zip(SAMPLES, results, strict=True):
        assert result["ids"] == tokenizer.encode(text, add_special_tokens=False).ids, text
        assert result["decoded"] == tokenizer.decode(result["ids"], skip_special_tokens=False), text


@pytest.mark.slow
def test_default_model_tokenizer_same_ids(browser, web_server):
    """The real default model's tokenizer (SmolLM2, read from its GGUF by the exporter's reader)."""
    from ruvdllm_export.checkpoints.load import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path

    tokenizer = load_checkpoint(default_gguf_path(progress=False)).tokenizer
    path = web_server.data_dir / "tokenizer-default.json"
    tokenizer.save(str(path))
    results = browser_ids(browser, web_server, f"/data/{path.name}", add_special=False)
    for text, result in zip(SAMPLES, results, strict=True):
        assert result["ids"] == tokenizer.encode(text, add_special_tokens=False).ids, text
        assert result["decoded"] == tokenizer.decode(result["ids"], skip_special_tokens=False), text


def test_sentencepiece_gguf_tokenizer_same_ids(browser, web_server, tmp_path):
    """A SentencePiece vocabulary rebuilt from a GGUF (Llama 2 / Mistral style: Prepend + Replace
    normalizer, byte fallback, ByteFallback/Fuse/Strip decoder), as an exported artifact ships it."""
    pytest.importorskip("sentencepiece")
    from ruvdllm_export.checkpoints.gguf_reader import open_gguf, read_metadata
    from ruvdllm_export.checkpoints.tokenizer import tokenizer_from_gguf
    from tests.fixtures.tiny_models import TinyDims, make_gguf_checkpoint
    from tests.fixtures.tiny_sentencepiece import train_sentencepiece

    gguf_path = make_gguf_checkpoint(
        tmp_path / "spm.gguf",
        "llama",
        "Q4_0",
        dims=TinyDims(vocab_size=448),
        sentencepiece=train_sentencepiece(),
    )
    tokenizer = tokenizer_from_gguf(read_metadata(open_gguf(gguf_path)), str(gguf_path))
    path = web_server.data_dir / "tokenizer-sentencepiece.json"
    tokenizer.save(str(path))
    for add_special in (False, True):
        results = browser_ids(browser, web_server, f"/data/{path.name}", add_special=add_special)
        for text, result in zip(SAMPLES, results, strict=True):
            assert result["ids"] == tokenizer.encode(text, add_special_tokens=add_special).ids, text
            assert result["decoded"] == tokenizer.decode(result["ids"], skip_special_tokens=False), text
