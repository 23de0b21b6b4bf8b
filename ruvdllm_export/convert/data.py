"""Training text: plain-text and JSONL files -> documents -> packed token sequences, with a
held-out split by document that training never sees.

    plain text (.txt, .md, .rst, anything not .jsonl)   one document per file
    JSONL (.jsonl)   one document per line: {"text": ...}, or {"prompt": ..., "response": ...}
                     (self-distillation, rendered with the chat template), or {"messages": [...]}

Packing concatenates the documents' tokens, each followed by EOS, and cuts fixed-length rows:
no padding, every position carries a loss (the usual pretraining layout).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.chat_template import render_chat, special_tokens
from ruvdllm.errors import RuvdllmError

TEXT_KEYS = ("text", "content")


@dataclass(frozen=True)
class Document:
    text: str
    source: str  # file (and line) it came from, for the manifest and error messages


def _jsonl_document(
    raw: dict, where: str, chat_template: str | None, specials: Mapping[str, str]
) -> Document:
    for key in TEXT_KEYS:
        if isinstance(raw.get(key), str):
            return Document(raw[key], where)
    messages = raw.get("messages")
    if isinstance(raw.get("prompt"), str) and isinstance(raw.get("response"), str):
        messages = [
            {"role": "user", "content": raw["prompt"]},
            {"role": "assistant", "content": raw["response"]},
        ]
    if isinstance(messages, list):
        # the runtime's renderer: training text is what the model is prompted with
        return Document(render_chat(chat_template, messages, add_generation_prompt=False, **specials), where)
    raise RuvdllmError(f"{where}: a JSONL record needs 'text', 'prompt'+'response' or 'messages'")


def read_documents(
    paths: list[Path], chat_template: str | None = None, specials: Mapping[str, str] | None = None
) -> list[Document]:
    """Every document of every file, in order; chat records rendered with `chat_template` (the
    fallback when None: runtime/chat_template.py) and the `specials` bos_token / eos_token.
    Missing, unreadable or empty files are errors: silently training on less data than asked for
    is worse than stopping."""
    specials = specials or {}
    if not paths:
        raise RuvdllmError("no training data given (--data FILE ...)")
    documents: list[Document] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            if not files:
                raise RuvdllmError(f"{path}: the data directory holds no files")
            documents += read_documents(files, chat_template, specials)
            continue
        if not path.is_file():
            raise RuvdllmError(f"{path}: no such data file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuvdllmError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
        if not text.strip():
            raise RuvdllmError(f"{path}: the data file is empty")
        if path.suffix == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RuvdllmError(f"{where}: not valid JSON ({exc.msg})") from None
                if not isinstance(raw, dict):
                    raise RuvdllmError(f"{where}: a JSONL record must be an object")
                documents.append(_jsonl_document(raw, where, chat_template, specials))
        else:
            documents.append(Document(text, str(path)))
    return documents


HELD_OUT = 0.1  # the fraction of documents every split holds out: the corpus manifest records this split


def is_held_out(document: Document, fraction: float, seed: int) -> bool:
    """A stable split by a hash of the document's text (not its path): the same document is held
    out on every run and every machine, wherever its file lies and whatever else the data holds."""
    digest = hashlib.sha256(f"{seed}\0{document.text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def split_documents(
    documents: list[Document], fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(train, held_out); at least one document on each side when there are two or more."""
    held = [d for d in documents if is_held_out(d, fraction, seed)]
    train = [d for d in documents if not is_held_out(d, fraction, seed)]
    if fraction > 0 and not held and len(train) > 1:
        held, train = train[-1:], train[:-1]
    if not train and len(held) > 1:
        held, train = held[:1], held[1:]
    return train, held


def pack(token_lists: list[list[int]], seq_len: int, eos_token_id: int) -> torch.Tensor:
    """Concatenate documents (each followed by EOS) and cut [N, seq_len] rows; the tail shorter
    than a row is dropped."""
    stream = [token for tokens in token_lists for token in [*tokens, eos_token_id]]
    rows = len(stream) // seq_len
    if rows == 0:
        raise RuvdllmError(
            f"the data holds {len(stream)} tokens, fewer than one sequence of {seq_len}: add text or lower --seq-len"
        )
    return torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def tokenize(documents: list[Document], tokenizer) -> list[list[int]]:
    return [
        encoding.ids
        for encoding in tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
    ]


def read_training_documents(
    paths: list[Path],
    tokenizer,
    eos_token_id: int,
    chat_template: str | None = None,
    bos_token_id: int | None = None,
) -> list[Document]:
    """Every document of the data files, chat records rendered as `build_sequences` trains on
    them. Cheap next to loading a model: the convert command reads its data first, so a missing or
    malformed file stops it before any long work starts."""
    specials = special_tokens(tokenizer.id_to_token, bos_token_id, [eos_token_id])
    return read_documents(paths, chat_template, specials)


def build_sequences(
    data: list[Path] | list[Document],
    tokenizer,
    seq_len: int,
    eos_token_id: int,
    held_out: float,
    seed: int,
    chat_template: str | None = None,
    bos_token_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(train [N, seq_len], held-out [M, seq_len] or None) from data files, or from the documents
    `read_training_documents` read from them. `bos_token_id` names the template's bos_token (its
    eos_token is `eos_token_id`'s)."""
    if data and all(isinstance(d, Document) for d in data):
        documents = list(data)
    else:
        documents = read_training_documents(data, tokenizer, eos_token_id, chat_template, bos_token_id)
    train, held = split_documents(documents, held_out, seed)
    train_rows = pack(tokenize(train, tokenizer), seq_len, eos_token_id)
    held_rows = None
    if held:
        tokens = tokenize(held, tokenizer)
        if sum(len(t) + 1 for t in tokens) >= seq_len:
            held_rows = pack(tokens, seq_len, eos_token_id)
    return train_rows, held_rows
