"""SentencePiece vocabularies in GGUF files (`tokenizer.ggml.model = "llama"`: Llama 2, TinyLlama,
Mistral) rebuilt as a `tokenizers` BPE, the pipeline Hugging Face's tokenizer.json holds for them.

llama.cpp's converter stores the SentencePiece model as three parallel lists: the pieces
(`▁` for a space), their scores and their types (1 normal, 2 unknown, 3 control, 4 user-defined,
5 unused, 6 byte). SentencePiece BPE merges the adjacent pair whose merged piece scores highest, so
the merge list a `tokenizers` BPE needs is every split of every piece into two pieces of the
vocabulary, ranked by the merged piece's score (files that carry `tokenizer.ggml.merges` give it).

    text ─ Prepend(▁), Replace(space→▁) ─ BPE(byte_fallback: <0xNN>)  (no pre-tokenizer: one word)
    ids  ─ Replace(▁→space) ─ ByteFallback ─ Fuse ─ Strip(one leading space)  (the decoder)

Control pieces (<s>, </s>, chat markers) are added as special tokens so a chat template's markers
map to their ids; user-defined pieces are matched whole, as SentencePiece does.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from ruvdllm.errors import RuvdllmError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # SentencePiece's visible space


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every (left, right) split of a piece into two vocabulary pieces, best merged score first;
    ties: longer left piece first (the order Hugging Face's converters produce)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores, strict=True):
        local = [
            (piece[:cut], piece[cut:], score)
            for cut in range(1, len(piece))
            if piece[:cut] in vocab and piece[cut:] in vocab
        ]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _merges(meta: dict, tokens: list[str], scores: list[float], where: str) -> list[tuple[str, str]]:
    listed = meta.get("tokenizer.ggml.merges")
    if not listed:
        return merges_from_scores(tokens, scores)
    merges = []
    for merge in listed:
        left, sep, right = merge.partition(" ")
        if not sep:
            raise RuvdllmError(f"{where}: malformed merge {merge!r} in tokenizer.ggml.merges")
        merges.append((left, right))
    return merges


def sentencepiece_from_gguf(meta: dict, where: str) -> Tokenizer:
    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = [float(s) for s in meta.get("tokenizer.ggml.scores") or []]
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise RuvdllmError(
            f"{where}: SentencePiece vocabulary of {len(tokens)} tokens has {len(scores)} scores and "
            f"{len(types)} token types (they must match)"
        )
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    if unk_id is None:
        unk_id = next((i for i, kind in enumerate(types) if kind == UNKNOWN), None)
    unk = tokens[unk_id] if unk_id is not None else None
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuvdllmError(f"{where}: the SentencePiece vocabulary repeats a token")
    bpe = models.BPE(
        vocab=vocab,
        merges=_merges(meta, tokens, scores, where),
        unk_token=unk,
        fuse_unk=True,  # SentencePiece emits one <unk> for a run of unknown characters
        byte_fallback=any(kind == BYTE for kind in types),
    )
    tokenizer = Tokenizer(bpe)
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)  # llama.cpp's default for SentencePiece
    # A normalizer, not Metaspace: SentencePiece prepends its space even to text that starts with one
    # ("  hi" -> ▁▁▁hi), which Metaspace skips; and like llama.cpp each stretch of text after an added
    # token gets the prefix too (the normalizer runs per stretch).
    steps = [normalizers.Replace(" ", SPACE)]
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), *steps] if prefix else steps)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, k in enumerate(types) if k == CONTROL]
    )
    tokenizer.add_tokens(
        [
            AddedToken(tokens[i], special=False, normalized=False)
            for i, k in enumerate(types)
            if k == USER_DEFINED
        ]
    )
    _set_post_processor(tokenizer, meta, tokens)
    return tokenizer


def _set_post_processor(tokenizer: Tokenizer, meta: dict, tokens: list[str]) -> None:
    """bos (and eos where the file asks) around each sequence. llama.cpp adds BOS to a SentencePiece
    vocabulary whose file does not say otherwise."""
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bos is not None and meta.get("tokenizer.ggml.add_bos_token", True)
    add_eos = eos is not None and meta.get("tokenizer.ggml.add_eos_token", False)
    if not (add_bos or add_eos):
        return
    head = [tokens[bos]] if add_bos else []
    tail = [tokens[eos]] if add_eos else []
    single = " ".join([*head, "$A", *tail])
    pair = " ".join([*head, "$A", *tail, *head, "$B:1", *tail])
    specials = [(tokens[i], i) for i in dict.fromkeys([bos] * add_bos + [eos] * add_eos)]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=specials
    )
