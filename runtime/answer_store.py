"""The answer store: drafts from what the model has answered before (retrieval-based speculative
decoding, REST: He et al. 2024). Prompt lookup (runtime/lookup.py) copies from the text at hand;
this copies from a corpus of the AR model's own answers (the distillation answers, docs/conversion.md),
so the phrases the model habitually writes — "is a type of", "refers to the", the way it opens an
answer — are drafted before the model is run. The verified sampler checks these drafts like any
other, so they change how many tokens a forward commits, never which tokens (docs/sampling.md §11).

What is kept is a table per n-gram length n: the n tokens before a position of an answer →
the token that most often followed them there, and that token's share of all that followed
(`ratio`, how sure the draft is). A draft is chained: the next token of the longest n-gram found,
appended, looked up again, until a token's ratio falls under the floor or none is found. The
tables of the SmolLM2 default model's ~20k answers hold a few hundred thousand n-grams once those
seen only once are dropped: a few MB, searched by bisection.

Keys are the n tokens packed into one 64-bit integer (`bits` per token, the vocabulary's bit
length), so n is at most 64 // bits: 4 for a vocabulary under 65,536 tokens, 3 up to 2^21.

File (little-endian): b"RVAS", uint32 header length, a JSON header {format, bits, tables: [{n,
entries}], ...}, then the body, zlib-compressed (format 2; format 1, still read, stored it as it
is): per table in order keys uint64[entries], next tokens [entries], ratios uint8[entries] (share ·
255, rounded down); tokens are uint16 when `bits` <= 16, else uint32. Compressed, the default
model's store is 3.5 MB instead of 7.6 (the browser's model files have a 120 MB goal; inflating it
takes ~60 ms on CPython).

Standard library only: it runs in the browser, and it is built on the device from its own answers.
"""

from __future__ import annotations

import json
import operator
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice
from pathlib import Path

from runtime.artifact import ANSWER_STORE_NAME
from ruvdllm.errors import RuvdllmError

MAGIC = b"RVAS"
FORMAT = 2  # the body zlib-compressed
READABLE_FORMATS = (1, 2)  # 1: the body as it is
ZLIB_LEVEL = 6  # level 9 takes 5x as long to write the default store for 1% fewer bytes
LONGEST = 4  # the longest context a draft is keyed by (fewer when the vocabulary needs more bits)
SHORTEST = 2  # unigram contexts propose too often and too wrongly (runtime/drafting.py)
MIN_COUNT = 2  # an n-gram followed by its best token fewer times than this is not kept


def token_bits(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


@dataclass
class NgramTable:
    """One n: sorted packed keys, and per key the most frequent next token and its share."""

    n: int
    bits: int
    keys: array = field(default_factory=lambda: array("Q"))
    tokens: array = field(init=False)
    ratios: array = field(default_factory=lambda: array("B"))

    def __post_init__(self) -> None:
        self.tokens = array("H" if self.bits <= 16 else "I")

    def find(self, key: int) -> int:
        """The entry of `key`, or -1."""
        i = bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else -1


class AnswerStore:
    def __init__(self, bits: int, tables: list[NgramTable], meta: dict | None = None):
        self.bits = bits
        self.tables = sorted(tables, key=lambda t: -t.n)  # longest context first
        self.meta = dict(meta or {})

    @property
    def entries(self) -> int:
        return sum(len(t.keys) for t in self.tables)

    def check_model(self, vocab_size: int, where: str) -> None:
        """Refuse a store built for another vocabulary (its keys would pack other tokens)."""
        largest = max((max(t.tokens, default=0) for t in self.tables), default=0)
        if self.bits != token_bits(vocab_size) or largest >= vocab_size:
            raise RuvdllmError(
                f"{where}: an answer store for another vocabulary ({self.bits}-bit tokens, the largest "
                f"{largest}; the model has {vocab_size} tokens)"
            )

    def pack(self, context: Sequence[int]) -> int:
        key = 0
        for token in context:
            key = (key << self.bits) | token
        return key

    def next_token(self, tokens: Sequence[int]) -> tuple[int, float] | None:
        """(token, share) that most often followed the longest kept n-gram ending `tokens`."""
        for table in self.tables:
            if len(tokens) < table.n:
                continue
            i = table.find(self.pack(tokens[len(tokens) - table.n :]))
            if i >= 0:
                return table.tokens[i], table.ratios[i] / 255.0
        return None

    def draft(self, tokens: Sequence[int], count: int, floor: float = 0.0) -> list[int]:
        """Up to `count` tokens after `tokens`, chained (each drafted token joins the context of
        the next); stops at the first whose share is under `floor` or whose context is unknown."""
        longest = self.tables[0].n if self.tables else 0
        context = list(tokens[max(0, len(tokens) - longest) :]) if longest else []
        drafted: list[int] = []
        while len(drafted) < count:
            found = self.next_token(context)
            if found is None or found[1] < floor:
                break
            drafted.append(found[0])
            context = [*context, found[0]][-longest:]
        return drafted

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        sequences: Iterable[tuple[Sequence[int], Sequence[int]]],
        vocab_size: int,
        longest: int = LONGEST,
        shortest: int = SHORTEST,
        min_count: int = MIN_COUNT,
        meta: dict | None = None,
    ) -> AnswerStore:
        """From (lead, answer) pairs: `lead` the tokens before the answer (the end of its prompt,
        at least longest - 1 of them so that the answer's first tokens have contexts), `answer`
        its tokens (ending with EOS where the answer stopped). Only answer tokens are predicted.

        Written by hand, not with a library: a counting pass over packed integers (sort, then runs)
        is all it needs, in the standard library, so the device can rebuild its store itself."""
        bits = token_bits(vocab_size)
        longest = min(longest, 64 // bits)
        if not 1 <= shortest <= longest:
            raise ValueError(f"n-gram lengths {shortest}..{longest}: need 1 <= shortest <= longest")
        rows: list[tuple[array, int]] = []  # (lead's last tokens + answer, where the answer starts)
        tokens_seen = 0
        for lead, answer in sequences:
            ids = array("I", [*lead[max(0, len(lead) - (longest - 1)) :], *answer])
            if any(token >= vocab_size for token in ids):  # array("I") already refused negatives
                raise ValueError(f"a token outside the vocabulary of {vocab_size}")
            rows.append((ids, len(ids) - len(answer)))
            tokens_seen += len(answer)
        # One n at a time, so only one length's pairs are held at once.
        tables = [_count(n, bits, _pairs(rows, n, bits), min_count) for n in range(shortest, longest + 1)]
        info = {"answers": len(rows), "answer_tokens": tokens_seen, "min_count": min_count, **(meta or {})}
        return cls(bits, tables, info)

    # --- file ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        header = {
            "format": FORMAT,
            "bits": self.bits,
            "tables": [{"n": t.n, "entries": len(t.keys)} for t in self.tables],
            "meta": self.meta,
        }
        raw = json.dumps(header, sort_keys=True).encode()
        body = b"".join(
            _little(values).tobytes() for t in self.tables for values in (t.keys, t.tokens, t.ratios)
        )
        return b"".join([MAGIC, struct.pack("<I", len(raw)), raw, zlib.compress(body, ZLIB_LEVEL)])

    def write(self, path: Path) -> None:
        """Atomically: a crash leaves the old file or the new one, never half of one."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(self.to_bytes())
        os.replace(partial, path)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "answer store") -> AnswerStore:
        if data[:4] != MAGIC or len(data) < 8:
            raise RuvdllmError(f"{where}: not an answer store (no {MAGIC.decode()} header)")
        (size,) = struct.unpack_from("<I", data, 4)
        try:
            header = json.loads(data[8 : 8 + size])
            bits, specs = int(header["bits"]), header["tables"]
            if header.get("format") not in READABLE_FORMATS:
                raise ValueError(
                    f"format {header.get('format')}, this runtime reads {', '.join(map(str, READABLE_FORMATS))}"
                )
        except (ValueError, KeyError, TypeError) as exc:
            raise RuvdllmError(f"{where}: unreadable header ({exc})") from None
        data, offset = data[8 + size :], 0
        if header["format"] == 2:
            data = _inflate(data, where)
        tables = []
        for spec in specs:
            n, entries = int(spec["n"]), int(spec["entries"])
            if not 1 <= n or n * bits > 64 or entries < 0:
                raise RuvdllmError(f"{where}: a table of {n}-grams at {bits} bits cannot be packed")
            table = NgramTable(n, bits)
            for values in (table.keys, table.tokens, table.ratios):
                width = values.itemsize
                end = offset + entries * width
                if end > len(data):
                    raise RuvdllmError(f"{where}: truncated ({len(data)} bytes, the header needs more)")
                values.frombytes(data[offset:end])
                if sys.byteorder == "big":
                    values.byteswap()
                offset = end
            # pairwise in C (map over operator.lt), no copy of the keys: ~30% less than a generator
            if not all(map(operator.lt, table.keys, islice(table.keys, 1, None))):
                raise RuvdllmError(f"{where}: the {n}-gram keys are not sorted")
            tables.append(table)
        if offset != len(data):
            raise RuvdllmError(f"{where}: {len(data) - offset} bytes after the last table")
        return cls(bits, tables, header.get("meta"))

    @classmethod
    def read(cls, path: Path) -> AnswerStore:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RuvdllmError(f"{path}: cannot read the answer store ({exc.strerror})") from None
        return cls.from_bytes(data, str(path))


def model_answer_store(directory: Path, vocab_size: int) -> AnswerStore | None:
    """The model directory's answer store (answers.ngrams), checked against its vocabulary; None
    when it has none. CPython and the browser open models through this."""
    path = Path(directory) / ANSWER_STORE_NAME
    if not path.is_file():
        return None
    store = AnswerStore.read(path)
    store.check_model(vocab_size, str(path))
    return store


def _inflate(body: bytes, where: str) -> bytes:
    """A format-2 body, decompressed; damage named as the format-1 reader names it."""
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body)
    except zlib.error as exc:
        raise RuvdllmError(f"{where}: corrupt body ({exc})") from None
    if not inflater.eof:
        raise RuvdllmError(f"{where}: truncated (the compressed body ends early)")
    if inflater.unused_data:
        raise RuvdllmError(f"{where}: {len(inflater.unused_data)} bytes after the last table")
    return data


def _pairs(rows: list[tuple[array, int]], n: int, bits: int) -> list[int]:
    """Every answer position j with n tokens before it, as one integer: (those n tokens, token j)."""
    mask = (1 << (bits * n)) - 1
    out = []
    for ids, first in rows:
        key = 0
        for j, token in enumerate(ids):
            if j >= n and j >= first:
                out.append((key << bits) | token)
            key = ((key << bits) | token) & mask
    return out


def _count(n: int, bits: int, pairs: list[int], min_count: int) -> NgramTable:
    """Sorted (context, next) pairs → per context its most frequent next token and its share;
    contexts whose best token was seen fewer than `min_count` times are dropped."""
    pairs.sort()
    runs = ((pair, sum(1 for _ in same)) for pair, same in groupby(pairs))  # identical pairs
    table = NgramTable(n, bits)
    token_mask = (1 << bits) - 1
    for key, followers in groupby(runs, key=lambda run: run[0] >> bits):
        counted = list(followers)
        pair, best = max(counted, key=lambda run: run[1])  # the first (smallest token) of a tie
        if best >= min_count:
            table.keys.append(key)
            table.tokens.append(pair & token_mask)
            table.ratios.append(best * 255 // sum(run for _, run in counted))
    return table


def _little(values: array) -> array:
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values
