"""How many tokens the verified sampler drafts per forward (runtime/verified.py).

A block of b masks drafts b - 1 tokens: its first mask sits where the AR row's own next token
goes, so it drafts the token after that one, and the last mask's row predicts past the block.
Every mask is a row the forward pays for, and every draft is a verifier row in the next forward;
on two CPU cores a forward of 9-10 rows costs about 2.5x a one-row forward, 3-4 rows about 1.4x.
With the default model's drafter (the first draft kept about 27% of the time, later ones about
12%, greedy on held-out prompts), a full block of 8 masks buys ~0.16 kept drafts per forward for
that doubled cost. So the block follows what recent forwards kept: one draft more than the mean
kept over the last few forwards that checked any, within 1 .. b - 1. A drafter that keeps whole
blocks grows back to the full block one draft at a time.

Drafts also stop at the first drafter row whose top candidate is less likely than
`min_confidence`: a doubtful draft costs a verifier row, and when rejected it also throws away
the block drafted after it. The rule reads only the drafter's rows, never the AR model's or the
drawn tokens, so the output stays exactly the AR model's (docs/sampling.md §11).

Prompt lookup (runtime/lookup.py) is the second drafter: `lookup` says when a forward checks
copied drafts instead of the diffusion model's. Copied drafts need no mask rows, only verifier
rows, and say nothing about the diffusion drafter, so the block's running mean leaves them out.
A forward that checks drafts, copied or the diffusion model's, drafts no mask block
(`block_beside_drafts`): the block is drafted by the forwards that check nothing.
The model's answer store (runtime/answer_store.py), when it has one, is the third: where lookup
finds nothing in the text, it drafts what the model's past answers most often went on with, up
to the first token that followed its context less often than `answers_floor` of the time.

Pure standard library, so it runs unchanged in the browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Drafting:
    # size the block by recent acceptance; False drafts the full block every forward
    adaptive: bool = True
    window: int = 4  # forwards (that checked drafts) the running mean covers: reacts within a sentence
    # a draft needs its row's top candidate at least this likely; 0 drafts every row of the block
    min_confidence: float = 0.0
    # Below this mean kept per checking forward, drafting costs more than it commits (on two CPU
    # cores one draft adds ~50-70% to two forwards for the fraction of a token it keeps), so the
    # sampler drafts no mask block (one-row AR forwards, with copied drafts where there are some)
    # except one probe every `probe_every` forwards, which lets a drafter that turns good win its
    # block back. 0: never pause. 0.5 by measurement, once the answer store drafts most forwards:
    # 0.99-1.02x the `ar` sampler's tokens/s against 0.85-0.89x unpaused (benchmarks/README.md)
    pause_below: float = 0.5
    probe_every: int = 4
    # A forward that checks drafts drafts no mask block beside them; only a forward that checks
    # none does. Beside copied drafts the block is kept only if every copied draft holds, and even
    # then the next forward checks copied drafts again wherever lookup or the answer store finds a
    # match ("first"); beside diffusion drafts it is kept only if all of them hold (~18% of the
    # time for the default model). Either way its rows were mostly paid for nothing: on 32 held-out
    # prompts (greedy, two threads) lenient acceptance went from 1.00x to 1.2-1.3x the `ar`
    # sampler's tokens/s at 2.01 -> 2.03 tokens per forward, exact from 1.02x to 1.07-1.15x at 1.55
    # (benchmarks/README.md, "No mask block beside drafts").
    block_beside_drafts: bool = False
    # Prompt lookup (runtime/lookup.py): drafts copied from the committed text after the last
    # earlier occurrence of its newest `lookup_longest` .. `lookup_shortest` tokens. They see the
    # newest token, which the mask block cannot, and cost verifier rows only. One of LOOKUP_MODES.
    # "first": on 64 held-out prompts (greedy, block 8) 1.27 tokens per forward against 1.18 with
    # lookup off, 0.82x the `ar` sampler's tokens/s against 0.77x (benchmarks/README.md)
    lookup: str = "first"
    # Replayed on 64 held-out AR answers a unigram match's first draft is kept 26% of the time (no
    # better than the diffusion drafter's), a bigram's 62%, a trigram's 75%; the verified sampler
    # commits more per forward from bigrams up than from unigrams up (benchmarks/README.md)
    lookup_longest: int = 3
    lookup_shortest: int = 2
    lookup_drafts: int = 4  # the most copied tokens one forward checks: 2 committed ~1% less
    # The answer store (runtime/answer_store.py) drafts, as lookup's fallback, when the model has
    # one. A chained draft stops at a token that followed its context less than `answers_floor`
    # of the time: a doubtful draft costs a verifier row for little (benchmarks/README.md).
    answers: bool = True
    answers_floor: float = 0.35
    # Which drafts a forward keeps (one of ACCEPTANCES). "exact": those the AR model would have
    # produced itself (its greedy token; its distribution when sampling), so the output is the AR
    # model's. "lenient" also keeps a draft the AR model finds nearly as likely as its own choice:
    # p_AR(draft) >= lenient_ratio · max p_AR, at its row, in context. Lossy, and bounded by the
    # verifier's own judgement: a kept draft is never far from a near-tie for the AR model. Two
    # kinds of draft are still checked exactly, since a lenient check would feed repetition:
    # prompt lookup's copies of the text, and any draft that repeats a bigram of the answer so far
    # (lenient_check). Measured on 64 held-out prompts (benchmarks/README.md, "Decoding quality"),
    # greedy: ratio 0.2 gave 2.04 tokens per forward at 1.11x the AR perplexity, against Medusa's
    # typical acceptance (Cai et al. 2024), which at 2.05 tokens per forward lost twice the
    # distinct-2 (common phrases of the answer store kept at the AR model's uncertain rows).
    acceptance: str = "exact"
    lenient_ratio: float = 0.2


# When a forward checks copied drafts instead of the diffusion model's: never; "fallback" when no
# diffusion drafts are pending (after a rejection, or a block that drafted nothing); "first" whenever
# the lookup finds a match, the diffusion drafts otherwise. A forward's drafts come from one drafter.
LOOKUP_MODES = ("off", "fallback", "first")
ACCEPTANCES = ("exact", "lenient")

# the sampler before adaptive sizing and prompt lookup: b - 1 diffusion drafts every forward
FULL_BLOCK = Drafting(adaptive=False, lookup="off", block_beside_drafts=True)
# Lenient acceptance as measured (benchmarks/README.md, "Decoding quality"): with drafts kept
# more often the mask block pays for itself (no pause), and deeper copied drafts are worth checking.
LENIENT = Drafting(acceptance="lenient", pause_below=0.0, lookup_drafts=6, answers_floor=0.2)

# `ruvdllm generate --acceptance`: "auto" is lenient when greedy — the one configuration that meets
# the parallel-decoding goal (>= 2 tokens per forward at <= 1.5x the AR perplexity, distinct-2
# within 0.05) at temperature 0, as fast as the exact rule there — and exact when sampling, where
# lenient acceptance lost 0.09 of distinct-2 (benchmarks/README.md, "Decoding quality").
ACCEPTANCE_CHOICES = ("auto", *ACCEPTANCES)


def drafting_for(acceptance: str, temperature: float) -> Drafting:
    """The verified sampler's drafting rule for an `--acceptance` choice (one of
    ACCEPTANCE_CHOICES) at `temperature`."""
    lenient = acceptance == "lenient" or (acceptance == "auto" and temperature <= 0.0)
    return LENIENT if lenient else Drafting()


def draft_count(
    recent_kept: Sequence[int], block: int, drafting: Drafting, idle: int = 0, checking: int = 0
) -> int:
    """Drafts to propose next from a block of at most `block` masks: block - 1 when not adaptive
    or before any forward checked a draft, else floor(mean of `recent_kept`'s last
    `drafting.window`) + 1, within 1 .. block - 1 (0 when block < 2: no mask drafts anything).
    Paused — 0 — when that mean is below `drafting.pause_below` and fewer than
    `drafting.probe_every` forwards (`idle`) have passed since the last one that drafted. 0 in a
    forward that checks `checking` > 0 drafts, unless `drafting.block_beside_drafts`."""
    most = block - 1
    if most < 1 or (checking and not drafting.block_beside_drafts):
        return 0
    recent = list(recent_kept)[-drafting.window :]
    if not drafting.adaptive or not recent:
        return most
    mean = sum(recent) / len(recent)
    if mean < drafting.pause_below and idle < drafting.probe_every:
        return 0
    return max(1, min(most, math.floor(mean) + 1))


def confident_prefix(confidences: Sequence[float], floor: float) -> int:
    """How many leading drafter rows are at least `floor` sure of their top candidate."""
    for i, confidence in enumerate(confidences):
        if confidence < floor:
            return i
    return len(confidences)


def row_confidence(ids: Sequence[int], logits: Sequence[float], logsumexp: float, mask_id: int) -> float:
    """The drafter's probability of its most likely token other than the mask (over the whole
    vocabulary: `logsumexp` is the row's); 0 when the graph's candidates hold only the mask."""
    for token, logit in zip(ids, logits, strict=True):
        if token != mask_id:
            return math.exp(min(0.0, logit - logsumexp))
    return 0.0
