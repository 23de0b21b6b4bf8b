"""An answer store (runtime/answer_store.py) from the distillation answers (`ruvdllm distill
answers`): each answer tokenized as the runtime generates it — after the chat template's opening
of the assistant turn, ending with EOS where the model stopped — with the checkpoint's own
tokenizer, so the store's n-grams are the token sequences the verified sampler will see.

Only the `train` split is read: the held-out prompts are what the quality benchmark asks, and a
store that had seen their answers would draft them from memory.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from runtime.answer_store import AnswerStore
from runtime.chat_template import render_chat, special_tokens
from ruvdllm.errors import RuvdllmError

SPLIT = "train"


def read_answer_records(path: Path) -> Iterator[dict]:
    """The JSON lines of an answers file (gzipped when it ends in .gz); a bad line is an error
    naming the file and line."""
    try:
        opened = (
            gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
        )
    except OSError as exc:
        raise RuvdllmError(f"{path}: cannot read the answers ({exc.strerror})") from None
    with opened as lines:
        try:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record.get("prompt"), str) or not isinstance(
                        record.get("response"), str
                    ):
                        raise ValueError("needs string fields prompt and response")
                except (ValueError, AttributeError) as exc:
                    raise RuvdllmError(f"{path}:{number}: not an answer record ({exc})") from None
                yield record
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise RuvdllmError(f"{path}: cannot read the answers ({exc})") from None


def build_answer_store(paths: list[Path], checkpoint, min_count: int, log=None) -> AnswerStore:
    """The store of every train-split answer in `paths`, tokenized by `checkpoint` (a loaded
    checkpoint: its tokenizer and chat template)."""
    spec, tokenizer = checkpoint.spec, checkpoint.tokenizer
    eos = spec.eos_token_ids[0]
    specials = special_tokens(tokenizer.id_to_token, spec.bos_token_id, spec.eos_token_ids)

    def pairs() -> Iterator[tuple[list[int], list[int]]]:
        for path in paths:
            for record in read_answer_records(path):
                if record.get("split", SPLIT) != SPLIT:
                    continue
                rendered = render_chat(
                    spec.chat_template, [{"role": "user", "content": record["prompt"]}], True, **specials
                )
                lead = tokenizer.encode(rendered, add_special_tokens=False).ids
                answer = tokenizer.encode(record["response"], add_special_tokens=False).ids
                if record.get("finish") == "stop":
                    answer.append(eos)
                yield lead, answer

    try:
        store = AnswerStore.build(
            pairs(), spec.vocab_size, min_count=min_count, meta={"sources": [p.name for p in paths]}
        )
    except ValueError as exc:
        raise RuvdllmError(f"answer store: {exc}") from None
    if not store.meta["answers"]:  # an empty store drafts nothing: a wrong file, not a store to ship
        names = ", ".join(map(str, paths))
        raise RuvdllmError(f"{names}: no {SPLIT}-split answers (is it `ruvdllm distill answers` output?)")
    if log is not None:
        sizes = ", ".join(f"{len(t.keys)} {t.n}-grams" for t in store.tables)
        log(f"answer store: {store.meta['answers']} answers, {store.meta['answer_tokens']} tokens -> {sizes}")
    return store
