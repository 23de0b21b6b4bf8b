"""The torch reference sampler: MDLM and BD3LM exactly as docs/sampling.md specifies them, run on
the torch diffusion model. It is written apart from the runtime's sampler (sharing only the pure
schedule and TALoRA weight functions and the DGR settings) so that the golden test compares two
implementations of one specification, not one implementation with itself.

Per step (§4), vectorised over the masked positions of the span:

    rows of the span ─ drop the mask token ─ choose a token (greedy, or temperature/top-k/top-p
    with one rng draw per masked position, ascending) ─ confidence p(token) ─ rank (most confident
    first, or left to right) ─ commit the leading n_s (low-confidence remasking), those above a
    threshold (Fast-dLLM) or those within an entropy bound (EB-sampler)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from runtime import artifact
from runtime.schedules import make_schedule, unmask_counts
from ruvdllm_export.reference.control import Adapters, AdapterState
from ruvdllm_export.reference.model import DiffusionLM, Past

ALGORITHMS = ("mdlm", "bd3lm")
DECODINGS = ("low-confidence", "threshold", "entropy-bounded")
ORDERS = ("confidence", "left-to-right")


@dataclass(frozen=True)
class SamplingConfig:
    algorithm: str = "bd3lm"  # small blocks keep most of the AR model's ability (DESIGN.md)
    length: int = 64  # new tokens
    block_size: int = artifact.ArtifactConfig.block_size  # BD3LM span; the artifact's default block
    steps: int | None = None  # per span; None = one token per step (the span length)
    decoding: str = "low-confidence"  # LLaDA's remasking; "threshold" is Fast-dLLM's parallel decoding
    threshold: float = 0.9  # Fast-dLLM's default confidence bar
    entropy_bound: float = 0.5  # nats; "entropy-bounded" (EB-sampler) commits within it
    order: str = "left-to-right"  # which masked positions lead (the runtime's default); or "confidence"
    temperature: float = 0.0  # greedy: the reference is compared token for token
    top_k: int = 0  # 0 = all of the graph's candidates
    top_p: float = 1.0  # 1 = no nucleus cut
    schedule: str = "linear"  # LLaDA's: the same number of tokens every step

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r}: not one of {ALGORITHMS}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding {self.decoding!r}: not one of {DECODINGS}")
        if self.order not in ORDERS:
            raise ValueError(f"order {self.order!r}: not one of {ORDERS}")
        if self.length < 1 or self.block_size < 1:
            raise ValueError("length and block_size must be >= 1")


@dataclass(frozen=True)
class Step:
    """What one denoising step did (docs/sampling.md §9)."""

    span: int
    step: int
    t: float
    committed: list[int]  # span positions committed this step, ascending
    tokens: list[int | None]  # the whole generated region so far, None where masked
    retrieved: list[int]  # span positions DGR retrieved adapters for after this step


@dataclass
class Result:
    tokens: list[int]  # generated tokens, cut before the first EOS
    steps: list[Step]


def choose(
    ids: torch.Tensor,
    logits: torch.Tensor,
    logsumexp: torch.Tensor,
    mask_token_id: int,
    config: SamplingConfig,
    rng: random.Random,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For n masked rows' candidates (ids, logits [n, K] descending; logsumexp [n]) the chosen
    tokens [n] and their temperature-1 confidences [n] (float64), per §4-5. The rng is drawn once
    per row, in row order, and only when temperature > 0."""
    valid = ids != mask_token_id  # the mask token is never emitted
    first = valid.int().argmax(-1)  # the best valid candidate (logits are descending)
    logits64 = logits.double()
    if config.temperature <= 0.0:
        pick = first
    else:
        rank = valid.cumsum(-1) - 1  # position among the valid candidates
        kept = valid & (rank < config.top_k) if config.top_k > 0 else valid
        best = logits64.gather(-1, first[:, None])
        weights = torch.where(kept, torch.exp((logits64 - best) / config.temperature), 0.0)
        probs = weights / weights.cumsum(-1)[:, -1:]
        if config.top_p < 1.0:
            cumulative = probs.cumsum(-1)
            before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
            kept = kept & (before < config.top_p)  # the smallest prefix reaching top_p, never empty
            probs = torch.where(kept, probs, 0.0)
            probs = probs / probs.cumsum(-1)[:, -1:]
        u = torch.tensor([rng.random() for _ in range(ids.shape[0])], dtype=torch.float64)
        above = kept & (u[:, None] < probs.cumsum(-1))
        last_kept = (kept.int() * torch.arange(ids.shape[1])).argmax(-1)  # when rounding leaves none above u
        pick = torch.where(above.any(-1), above.int().argmax(-1), last_kept)
    tokens = ids.gather(-1, pick[:, None])[:, 0]
    confidence = torch.exp(logits64.gather(-1, pick[:, None])[:, 0] - logsumexp.double())
    return tokens, confidence


def select(
    confidence: torch.Tensor, entropy: torch.Tensor, count: int | None, config: SamplingConfig
) -> torch.Tensor:
    """Indices (into the masked rows, which are ascending by position) to commit: the leading
    rows of the ranking — by confidence (a stable sort on -confidence: ties to the lower
    position) or left to right — `count` of them (low-confidence), those at or above the
    threshold, or the longest prefix whose summed entropy minus its largest is within the bound
    (EB-sampler); the threshold and the bound always admit the first."""
    if config.order == "left-to-right":
        order = torch.arange(len(confidence))
    else:
        order = torch.sort(-confidence, stable=True).indices
    if config.decoding == "threshold":
        count = max(1, int((confidence[order] >= config.threshold).int().cumprod(0).sum()))
    elif config.decoding == "entropy-bounded":
        h = entropy[order].double()
        excess = h.cumsum(0) - h.cummax(0).values  # nondecreasing along the prefix; 0 for the first
        count = int((excess <= config.entropy_bound).sum())
    return order[:count].sort().values


def denoise_span(
    forward: Callable[[list[int | None], float], dict[str, torch.Tensor]],
    span_length: int,
    mask_token_id: int,
    config: SamplingConfig,
    rng: random.Random,
    adapters: AdapterState,
    span_index: int = 0,
    generated: list[int] | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> list[int]:
    """Unmask one span that follows the `generated` tokens: forward, choose, commit, retrieve
    until nothing is masked. `forward(span, t)` returns the graph outputs whose row r predicts
    span position r (rows past the span are ignored)."""
    span: list[int | None] = [None] * span_length
    steps = min(config.steps or span_length, span_length)
    counts = None
    if config.decoding == "low-confidence":
        counts = unmask_counts(span_length, steps, make_schedule(config.schedule))
    adapters.start_span()
    step = 0
    while any(token is None for token in span):
        masked = torch.tensor([i for i, token in enumerate(span) if token is None])
        t = len(masked) / span_length  # this step's input noise level
        out = forward(span, t)
        tokens, confidence = choose(
            out[artifact.TOPK_IDS][0, masked],
            out[artifact.TOPK_LOGITS][0, masked],
            out[artifact.LOGSUMEXP][0, masked],
            mask_token_id,
            config,
            rng,
        )
        entropy = out[artifact.ENTROPY][0, masked]
        chosen = select(confidence, entropy, counts[step] if counts else None, config)
        for index in chosen.tolist():
            span[masked[index]] = int(tokens[index])
        still_masked = [i for i, token in enumerate(span) if token is None]
        retrieved = adapters.after_step(out, still_masked, t, step)
        if on_step is not None:
            committed = masked[chosen].tolist()
            on_step(Step(span_index, step, t, committed, (generated or []) + span, retrieved))
        step += 1
    return [int(token) for token in span]


def _chunk(span: list[int | None], mask: int) -> list[int]:
    return [mask if token is None else token for token in span]


@torch.no_grad()
def generate(
    model: DiffusionLM,
    prompt: list[int],
    config: SamplingConfig,
    rng: random.Random,
    adapters: Adapters | None = None,
    eos_token_ids: tuple[int, ...] = (),
) -> Result:
    """Generate `config.length` tokens after `prompt` with MDLM (one span, no cache, §2) or BD3LM
    (blocks after a cache of committed tokens, §3); `adapters` adds the TALoRA/DGR bank path."""
    if not prompt:
        raise ValueError("the prompt must hold at least one token (the shift predicts from it)")
    state = AdapterState(adapters, model.spec.vocab_size)
    trace: list[Step] = []
    sampler = _mdlm if config.algorithm == "mdlm" else _bd3lm
    generated = sampler(model, prompt, config, rng, state, eos_token_ids, trace.append)
    cut = next((i for i, token in enumerate(generated) if token in eos_token_ids), len(generated))
    return Result(generated[:cut], trace)


def _mdlm(model, prompt, config, rng, adapters, eos_token_ids, on_step) -> list[int]:
    n, size = len(prompt), len(prompt) + config.length

    def forward(span: list[int | None], t: float) -> dict[str, torch.Tensor]:
        return model(
            torch.tensor([prompt + _chunk(span, model.mask_token_id)]),
            torch.arange(size)[None],
            torch.zeros(1, size, dtype=torch.long),  # bidirectional: the prompt sees the span too
            output_offset=n - 1,
            **adapters.inputs(n, config.length, t),
        )

    return denoise_span(forward, config.length, model.mask_token_id, config, rng, adapters, 0, [], on_step)


class _CommittedCache:
    """BD3LM's state (§3): the committed tokens and the keys/values of all but the last."""

    def __init__(self, model: DiffusionLM, prompt: list[int], adapters: AdapterState):
        self.model = model
        self.adapters = adapters
        self.tokens = list(prompt)  # committed: prompt, then finished blocks
        self.past: Past | None = None
        self.cached = 0  # leading committed tokens whose keys/values are in `past`

    def forward(self, span: list[int | None], t: float) -> dict[str, torch.Tensor]:
        """One step over the committed tokens not yet cached and the block; then caches all
        committed tokens but the last (it leads the next chunk, for the shift)."""
        model, n, size = self.model, len(self.tokens), len(span)
        fresh = n - self.cached
        out = model(
            torch.tensor([self.tokens[self.cached :] + _chunk(span, model.mask_token_id)]),
            torch.arange(self.cached, n + size)[None],
            torch.tensor([list(range(fresh)) + [fresh] * size]),  # causal prefix, one bidirectional block
            output_offset=fresh - 1,
            past=self.past,
            **self.adapters.inputs(fresh, size, t),
        )
        if self.cached < n - 1:
            self.past = [
                (out[artifact.present_key(i)][:, :, : n - 1], out[artifact.present_value(i)][:, :, : n - 1])
                for i in range(model.spec.num_layers)
            ]
            self.cached = n - 1
        return out


def _bd3lm(model, prompt, config, rng, adapters, eos_token_ids, on_step) -> list[int]:
    state = _CommittedCache(model, prompt, adapters)
    span_index = 0
    while (done := len(state.tokens) - len(prompt)) < config.length:
        size = min(config.block_size, config.length - done)
        generated = state.tokens[len(prompt) :]
        mask = model.mask_token_id
        block = denoise_span(state.forward, size, mask, config, rng, adapters, span_index, generated, on_step)
        state.tokens += block
        span_index += 1
        if any(token in eos_token_ids for token in block):
            break
    return state.tokens[len(prompt) :]
