"""The mask-token rule and the tokenizer / vocabulary check."""

import pytest
from tokenizers import AddedToken, Tokenizer, models

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.checkpoints.tokenizer import check_vocab, choose_mask_token
from tests.fixtures.tiny_models import make_gguf_checkpoint, make_hf_checkpoint

SMOLLM2_SPECIALS = (  # ids 0..16 of SmolLM2's vocabulary
    "<|endoftext|> <|im_start|> <|im_end|> <repo_name> <reponame> <file_sep> <filename> <gh_stars>"
    " <issue_start> <issue_comment> <issue_closed> <jupyter_start> <jupyter_text> <jupyter_code>"
    " <jupyter_output> <jupyter_script> <empty_output>"
).split()
CHATML = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'}}"


def tokenizer_with(specials: list[str], plain: list[str] = ("a", "b", "c")) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(plain)}, unk_token="a"))
    tokenizer.add_special_tokens([AddedToken(s, special=True) for s in specials])
    return tokenizer


def choose(tokenizer, vocab_size=None, used=(0, 1, 2), template=CHATML):
    size = vocab_size or tokenizer.get_vocab_size()
    return tokenizer.id_to_token(choose_mask_token(tokenizer, size, set(used), template, "test"))


@pytest.mark.parametrize("name", ["<|mask|>", "<mask>", "[MASK]", "<|MASK|>", "<|mask_token|>"])
def test_a_token_named_mask_wins(name):
    assert choose(tokenizer_with(["<|endoftext|>", "<|reserved_0|>", name, "<x>"])) == name


def test_then_a_reserved_or_unused_special():
    assert (
        choose(tokenizer_with(["<|endoftext|>", "<|im_start|>", "[unused0]", "<|reserved_special_token_1|>"]))
        == "[unused0]"
    )


def test_smollm2_gets_its_last_unused_special_token():
    tokenizer = tokenizer_with(SMOLLM2_SPECIALS, plain=[])
    assert choose(tokenizer, used=(0, 1, 2)) == "<empty_output>"


def test_specials_in_the_chat_template_or_used_ids_are_skipped():
    tokenizer = tokenizer_with(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], plain=["a"])
    assert choose(tokenizer, used=(2,)) == "<|endoftext|>"  # ids 1..3; <|im_end|> is in the template
    with pytest.raises(RuvdllmError, match="no token can serve as the mask token"):
        choose(tokenizer, used=(1, 2, 3))


def test_a_spare_embedding_row_is_the_last_resort():
    tokenizer = tokenizer_with(["<|im_start|>"], plain=["a", "b"])
    assert choose_mask_token(tokenizer, 8, {2}, CHATML, "test") == 3


def test_tiny_models_without_mask_fall_back_to_reserved(tmp_path):
    hf = load_checkpoint(make_hf_checkpoint(tmp_path / "hf", "qwen3", with_mask=False))
    gg = load_checkpoint(make_gguf_checkpoint(tmp_path / "m.gguf", "qwen3", "F32", with_mask=False))
    assert hf.tokenizer.id_to_token(hf.mask_token_id) == "<|reserved_0|>"
    assert gg.mask_token_id == hf.mask_token_id


def test_vocabulary_check():
    tokenizer = tokenizer_with(["<s>"])
    check_vocab(tokenizer, 4, "t")
    check_vocab(tokenizer, 10, "t")  # models padded beyond the tokenizer are fine
    with pytest.raises(
        RuvdllmError, match="t: the tokenizer has 4 tokens but the model's vocabulary has 3 rows"
    ):
        check_vocab(tokenizer, 3, "t")


PRE_TOKENIZER_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces   ",
    "runs     of      spaces and\ttabs\t\tand\nnewlines\n\n\nand blank lines",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # code\n",
    "Zahlen: 3.14159, 2024-01-31, 1,000,000 and 1234567 and 0x1F",
    "naïve café, Straße, ÅNGSTRÖM, İstanbul",
    "日本語のテキストと中文字符，한국어 텍스트 Ελληνικά русский",
    "emoji 😀👍🏽 and ✨sparkles✨",
    "it's we're they'll I'd you've CAN'T",
    "<|im_start|>user\nHi<|im_end|>\n",
]


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "smollm", "qwen2"])
def test_byte_level_gguf_pre_tokenizers_equal_llama_cpp(tmp_path, pre):
    """A byte-level BPE GGUF under each pre-tokenizer name we rebuild (Llama 3's `llama-bpe` among
    them): the ids equal llama.cpp's own tokenizer on the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from ruvdllm_export.checkpoints.gguf_reader import open_gguf, read_metadata
    from ruvdllm_export.checkpoints.tokenizer import tokenizer_from_gguf

    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "F32", tokenizer_pre=pre)
    ours = tokenizer_from_gguf(read_metadata(open_gguf(path)), str(path))
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in PRE_TOKENIZER_TEXTS:
        expected = reference.tokenize(text.encode(), add_bos=False, special=True)
        assert ours.encode(text, add_special_tokens=False).ids == expected, (pre, text)
