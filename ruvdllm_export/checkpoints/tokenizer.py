"""Tokenizers from tokenizer.json or from GGUF metadata, the vocabulary check, and the mask token.

GGUF files written by llama.cpp's converter with `tokenizer.ggml.model = "gpt2"` carry a byte-level
BPE: the token strings (already in GPT-2's byte-to-unicode alphabet), the merges in rank order, a
token type per id, and `tokenizer.ggml.pre` naming the pre-tokenizer split. We rebuild the same
`tokenizers` pipeline Hugging Face's tokenizer.json holds for those models; PRE_TOKENIZERS is the
table of known splits (llama.cpp's llama-vocab.cpp lists the same names).

The mask token (DESIGN.md: the diffusion model's [MASK]) is chosen by this rule, first match wins:
  1. a token named mask: <|mask|>, <mask>, [MASK], <|mask_token|> (any case);
  2. the lowest-id special token named reserved / unused (<|reserved_special_token_0|>, [unused0]);
  3. the highest-id special token that is not bos / eos / pad / unk and does not appear in the chat
     template: a control token the instruct model never emits in chat. For SmolLM2 this is
     <empty_output> (id 16), a StarCoder-style code-data marker;
  4. the first embedding row beyond the tokenizer's vocabulary (models padded to a round size);
  5. a SentencePiece byte-fallback piece for a byte that never occurs in UTF-8 (<0xFF> first, then
     <0xFE> … <0xF5>, <0xC1>, <0xC0>): the tokenizer can never emit it. Llama 2 / Mistral vocabularies
     have no spare row and no unused special token; this is the row their text never reaches.
The conversion then teaches the model what this token means; it only has to be a row chat never uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints.gguf_sentencepiece import sentencepiece_from_gguf

GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values of added tokens

_QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# llama.cpp's split for `default` (a BPE GGUF without a known pre-tokenizer): four regexes, each
# splitting the pieces of the one before (llama-vocab.cpp), not GPT-2's single regex
_LLAMA_CPP_DEFAULT = (
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)


def _byte_level(use_regex: bool):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def _split_then_bytes(*patterns: str):
    """Each regex splits the pieces of the one before (matches and the text between them kept),
    then the bytes are mapped: llama.cpp's unicode_regex_split over a list of expressions."""
    splits = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in patterns]
    return pre_tokenizers.Sequence([*splits, _byte_level(False)])


# tokenizer.ggml.pre -> (normalizer or None, pre-tokenizer factory, ignore_merges)
PRE_TOKENIZERS = {
    "default": (None, lambda: _split_then_bytes(*_LLAMA_CPP_DEFAULT), False),
    "gpt-2": (None, lambda: _byte_level(True), False),  # GPT-2's own regex
    "gpt2": (None, lambda: _byte_level(True), False),  # the same, as some writers spell it
    "smollm": (  # SmolLM / StarCoder: every digit alone, then GPT-2's split
        None,
        lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level(True)]),
        False,
    ),
    "qwen2": (normalizers.NFC, lambda: _split_then_bytes(_QWEN2), False),
    "llama-bpe": (None, lambda: _split_then_bytes(_LLAMA3), True),  # LLaMA 3
}


def load_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception for bad JSON / unknown models
        raise RuvdllmError(f"{path}: not a readable tokenizer.json ({str(exc).splitlines()[0]})") from None


def tokenizer_from_gguf(meta: dict, where: str) -> Tokenizer:
    """Rebuild the tokenizer from tokenizer.ggml.* metadata: a GPT-2-style byte-level BPE ('gpt2')
    or a SentencePiece vocabulary ('llama', checkpoints/gguf_sentencepiece.py)."""
    model = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise RuvdllmError(f"{where}: no tokenizer.ggml.tokens (the file carries no vocabulary)")
    if model == "llama":
        return sentencepiece_from_gguf(meta, where)
    if model != "gpt2":
        raise RuvdllmError(
            f"{where}: tokenizer model {model!r} is not supported (supported: byte-level BPE 'gpt2', "
            "SentencePiece 'llama'); pass a directory with tokenizer.json instead"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise RuvdllmError(
            f"{where}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))})"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = []
    for merge in meta.get("tokenizer.ggml.merges", []):
        left, sep, right = merge.partition(" ")
        if not sep:
            raise RuvdllmError(f"{where}: malformed merge {merge!r} in tokenizer.ggml.merges")
        merges.append((left, right))
    normalizer, pre_tokenizer, ignore_merges = PRE_TOKENIZERS[pre]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    if normalizer is not None:
        tokenizer.normalizer = normalizer()
    tokenizer.pre_tokenizer = pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    specials = [i for i, kind in enumerate(types) if kind in (GGUF_CONTROL, GGUF_USER_DEFINED)]
    tokenizer.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in specials])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A",
            pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)],
        )
    return tokenizer


def check_vocab(tokenizer: Tokenizer, vocab_size: int, where: str) -> None:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise RuvdllmError(
            f"{where}: the tokenizer has {size} tokens but the model's vocabulary has {vocab_size} rows "
            "(tokenizer from a different model?)"
        )


_MASK_NAME = re.compile(r"^[<\[]\|?(mask|mask_token)\|?[>\]]$", re.IGNORECASE)
_RESERVED_NAME = re.compile(r"reserved|unused", re.IGNORECASE)


def choose_mask_token(
    tokenizer: Tokenizer, vocab_size: int, used_ids: set[int], chat_template: str | None, where: str
) -> int:
    """The module docstring's rule. `used_ids`: bos / eos / pad / unk ids."""
    specials = sorted(
        (i, t.content)
        for i, t in tokenizer.get_added_tokens_decoder().items()
        if t.special and i < vocab_size
    )
    for i, content in specials:
        if _MASK_NAME.match(content):
            return i
    for i, content in specials:
        if _RESERVED_NAME.search(content) and i not in used_ids:
            return i
    template = chat_template or ""
    for i, content in reversed(specials):
        if i not in used_ids and content not in template:
            return i
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size < vocab_size:
        return size
    for byte in [*range(0xFF, 0xF4, -1), 0xC1, 0xC0]:
        i = tokenizer.token_to_id(f"<0x{byte:02X}>")
        if i is not None and i < vocab_size and i not in used_ids:
            return i
    raise RuvdllmError(
        f"{where}: no token can serve as the mask token (no <|mask|>, no reserved or unused special token, "
        "no spare embedding row)"
    )


def chat_template_of(directory: Path) -> str | None:
    """tokenizer_config.json's chat_template, or the chat_template.jinja newer transformers write."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text()).get("chat_template")
    except ValueError as exc:
        raise RuvdllmError(f"{config}: not valid JSON ({exc})") from None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template
