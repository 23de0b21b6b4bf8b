"""Text deltas from a diffusion generation, for streaming.

A diffusion sampler commits tokens out of order: after a step the generated region is a list of
tokens with holes (None where still masked). Committed tokens are final, but text can only be
sent as a growing prefix, so each update decodes the contiguous committed prefix (up to the first
hole, cut before an end-of-sequence token) and sends what is new.

Two things are held back until more text arrives: trailing U+FFFD (a multi-byte UTF-8
character split across tokens decodes as a replacement character until its last byte is in),
and a tail that could be the start of a stop sequence. A stop sequence ends the text before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


def committed_prefix(tokens: Sequence[int | None], eos: frozenset[int]) -> tuple[list[int], bool]:
    """The committed tokens before the first hole; True when an end-of-sequence token ended it."""
    prefix = []
    for token in tokens:
        if token is None:
            return prefix, False
        if token in eos:
            return prefix, True
        prefix.append(token)
    return prefix, False


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop sequence starts in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of `text` must wait: the longest tail that is a proper
    prefix of a stop sequence, or a run of replacement characters (an unfinished UTF-8 char)."""
    hold = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return hold


class TextStream:
    """Feed it each step's generated region; it returns the text to send now.

    `done` becomes True once an end-of-sequence token or a stop sequence has ended the text
    (`finish_reason` "stop") or `finish` was called: nothing after that is ever sent.
    """

    def __init__(self, decode: Callable[[list[int]], str], eos: Sequence[int], stops: Sequence[str] = ()):
        self._decode = decode
        self._eos = frozenset(eos)
        self._stops = tuple(stops)
        self._prefix_len = -1  # tokens decoded last time: skip decoding when nothing new
        self.text = ""  # everything sent so far
        self.tokens: list[int] = []  # the tokens behind the text (up to the stop point)
        self.done = False
        self.finish_reason: str | None = None

    def update(self, tokens: Sequence[int | None]) -> str:
        """The next delta, given the generated region so far (None where masked)."""
        if self.done:
            return ""
        prefix, hit_eos = committed_prefix(tokens, self._eos)
        if len(prefix) == self._prefix_len and not hit_eos:
            return ""
        self._prefix_len = len(prefix)
        return self._take(prefix, "stop" if hit_eos else None)

    def finish(self, tokens: Sequence[int], reason: str) -> str:
        """The last delta once generation has ended with every token committed: `reason` is
        why it ended ("stop" or "length"); held-back text is flushed."""
        if self.done:
            return ""
        prefix, hit_eos = committed_prefix(tokens, self._eos)
        return self._take(prefix, "stop" if hit_eos else reason)

    def end(self, reason: str) -> None:
        """End the stream now, sending nothing more (e.g. "cancelled")."""
        self.done, self.finish_reason = True, reason

    def _take(self, prefix: list[int], ended: str | None) -> str:
        text = self._decode(prefix)
        stop_at = find_stop(text, self._stops)
        if stop_at >= 0:
            text, ended = text[:stop_at], "stop"
        elif ended is None:
            text = text[: len(text) - held_back(text, self._stops)]
        if ended is not None:
            self.end(ended)
        self.tokens = prefix
        return self._advance(text)

    def _advance(self, text: str) -> str:
        # Byte-level BPE decodes a longer prefix to a longer string with the same start. Should a
        # decoder ever rewrite earlier text, what was sent cannot be taken back: send only the
        # characters past it.
        if len(text) <= len(self.text):
            return ""
        delta = text[len(self.text) :]
        self.text += delta
        return delta
