"""Prompt-lookup drafting (Saxena 2023, "prompt lookup decoding"; LLMA, Yang et al. 2023): text
that an answer copies — a name from the prompt, a repeated phrase, a list's pattern — is already
in the committed text, so the tokens that followed the last earlier occurrence of the text's
newest n tokens are a draft that costs no forward. The verified sampler checks such drafts as it
checks the diffusion model's (runtime/verified.py, docs/sampling.md §11).

Pure standard library, so it runs unchanged in the browser.
"""

from __future__ import annotations

from collections.abc import Sequence


def lookup(tokens: Sequence[int], longest: int, shortest: int, count: int) -> list[int]:
    """Up to `count` tokens that followed the most recent earlier occurrence of `tokens`' last n
    tokens, for the largest n from `longest` down to `shortest` that occurs earlier (with at least
    one token after it); [] when none does. The occurrence may overlap the suffix itself (a token
    repeated three times proposes a fourth), and the proposal stops at the end of `tokens`."""
    text = list(tokens)  # once, so each try compares plain list slices without a second copy
    end = len(text)
    for n in range(min(longest, end - 1), max(shortest, 1) - 1, -1):
        suffix = text[end - n :]
        for start in range(end - n - 1, -1, -1):  # most recent first; ends before the suffix does
            if text[start : start + n] == suffix:
                return text[start + n : min(start + n + count, end)]
    return []
