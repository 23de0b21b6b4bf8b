"""Per-step adapter weights for the reference sampler (docs/sampling.md §7-8), in torch: TALoRA
group weights by timestep and DGR retrieval for uncertain positions, by exact cosine search over
the bank's patterns.

    slots  [0, G)       TALoRA groups: talora_weights(t) on span rows, talora_weights(0) on
                        committed rows (clean text; keeps cached keys/values step-independent)
           [G, slots)   DGR: per span position, the softmax vote of its nearest patterns,
                        refreshed whenever the position is retrieved again; 0 until then
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from runtime import artifact
from runtime.dgr import DgrConfig
from runtime.talora import TaloraConfig, talora_weights
from ruvdllm_export.reference.model import AdapterBank


@dataclass(frozen=True)
class Adapters:
    """An adapter bank in the graph's layout and how to weigh its slots."""

    bank: AdapterBank  # target -> (a [layers, in, slots·rank], b [layers, slots·rank, out])
    slots: int
    groups: int = 3  # TALoRA slots reserved (config.timestep_groups − 1), used or not
    talora: TaloraConfig | None = field(default_factory=TaloraConfig)  # None: TALoRA weights all 0
    dgr: DgrConfig | None = None  # None: no retrieval
    patterns: torch.Tensor | None = None  # [N, hidden] DGR keys
    pattern_slots: torch.Tensor | None = None  # [N] the DGR slot each pattern votes for

    @classmethod
    def from_bank(cls, bank, dgr: DgrConfig | None = None) -> Adapters:
        """A runtime bank (runtime/banks.py, as the runtime loads it from a model's banks/) in
        the graph's layout: the reference sampler then composes exactly what the runtime does."""
        assembled = {}
        for target, (fan_in, fan_out) in bank.targets.items():
            a, b = bank.assemble(target)
            k_r = bank.slots * bank.rank
            assembled[target] = (
                torch.tensor(a, dtype=torch.float32).view(bank.layers, fan_in, k_r),
                torch.tensor(b, dtype=torch.float32).view(bank.layers, k_r, fan_out),
            )
        patterns = None
        if bank.pattern_slots:
            flat = torch.tensor(bank.pattern_vectors, dtype=torch.float32)
            patterns = flat.view(len(bank.pattern_slots), bank.hidden_size)
        return cls(
            bank=assembled,
            slots=bank.slots,
            groups=bank.groups,
            talora=bank.talora_config(),
            dgr=dgr,
            patterns=patterns,
            pattern_slots=torch.tensor(bank.pattern_slots) if bank.pattern_slots else None,
        )

    def slot_weights(self, row_t: torch.Tensor) -> torch.Tensor:
        """[B, S] timesteps -> [B, S, slots] (the training and held-out scoring path)."""
        return timestep_slot_weights(row_t, self.talora, self.groups, self.slots)


def timestep_slot_weights(
    row_t: torch.Tensor, talora: TaloraConfig | None, groups: int, slots: int
) -> torch.Tensor:
    """[B, S] per-row timesteps -> [B, S, slots]: the runtime's TALoRA group weights in slots
    [0, groups) (all 0 without TALoRA), the DGR slots after them 0. t is rounded to 6 places
    (float32 rows hold k / b inexactly); each distinct t is weighed once."""
    values, inverse = torch.unique(row_t, return_inverse=True)
    rows = [
        (talora_weights(round(t, 6), talora)[:groups] if talora else [0.0] * groups)
        + [0.0] * (slots - groups)
        for t in values.tolist()
    ]
    return torch.tensor(rows, dtype=torch.float32).view(-1, slots)[inverse]


class AdapterState:
    """One generation's adapter rows: DGR's retrieved weights per span position and the adaptive
    threshold."""

    def __init__(self, adapters: Adapters | None, vocab_size: int):
        self.adapters = adapters
        self.vocab_size = vocab_size
        a = adapters
        self.groups = 0 if a is None else min(a.groups, a.slots)
        has_patterns = a is not None and a.patterns is not None and len(a.patterns) > 0
        self.dgr = a.dgr if has_patterns and a.slots > self.groups else None
        if self.dgr is not None:
            self.keys = torch.nn.functional.normalize(a.patterns.double(), dim=-1)
        self.theta = self.dgr.threshold if self.dgr else 0.0
        self.start_span()

    def start_span(self) -> None:
        self.retrieved: dict[int, torch.Tensor] = {}  # span position -> DGR slot weights

    def _talora(self, t: float) -> torch.Tensor:
        a = self.adapters
        weights = [0.0] * self.groups if a.talora is None else talora_weights(t, a.talora)[: self.groups]
        return torch.tensor(weights, dtype=torch.float64)

    def inputs(self, context_rows: int, span_length: int, t: float) -> dict:
        """The forward's adapter arguments for a chunk of committed rows then the span."""
        if self.adapters is None:
            return {}
        none = torch.zeros(self.adapters.slots - self.groups, dtype=torch.float64)
        clean = torch.cat([self._talora(0.0), none])
        noisy = self._talora(t)
        rows = [clean] * context_rows + [
            torch.cat([noisy, self.retrieved.get(i, none)]) for i in range(span_length)
        ]
        weights = torch.stack(rows).float()[None]  # [1, S, slots]
        return {"adapter_weights": weights, "adapter_bank": self.adapters.bank}

    def after_step(
        self, out: dict[str, torch.Tensor], still_masked: list[int], t: float, step: int
    ) -> list[int]:
        """Score the positions still masked (row i = span position i); retrieve for those above
        the step's bar, at most `budget`, most uncertain first. Returns them."""
        config = self.dgr
        if config is None or not still_masked:
            return []
        rows = torch.tensor(still_masked)
        lse = out[artifact.LOGSUMEXP][0, rows].double()
        entropy_u = (out[artifact.ENTROPY][0, rows].double() / math.log(self.vocab_size)).clamp(0, 1)
        top = torch.exp(out[artifact.TOPK_LOGITS][0, rows, :2].double() - lse[:, None])
        second = top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0])
        gap_u = (1.0 - (top[:, 0] - second)).clamp(0, 1)
        raw = {"entropy": entropy_u, "confidence-gap": gap_u}.get(config.strategy, (entropy_u + gap_u) / 2)
        score = raw / (config.floor + (1.0 - config.floor) * t)
        bar = self._bar(step)
        order = torch.sort(-score, stable=True).indices  # ties: the lower position first
        chosen = [still_masked[j] for j in order.tolist() if score[j] > bar][: config.budget]
        queries = out[artifact.QUERY][0]
        for position in chosen:
            self.retrieved[position] = self._vote(queries[position])
        if config.strategy == "adaptive":
            rate = len(chosen) / len(still_masked)
            self.theta = min(max(self.theta + config.adapt_rate * (rate - config.target_rate), 0.0), 2.0)
        return chosen

    def _bar(self, step: int) -> float:
        config = self.dgr
        if config.strategy == "hybrid":
            return config.threshold if step % config.interval == 0 else config.spike
        if config.strategy == "adaptive":
            return self.theta
        return config.threshold

    def _vote(self, query: torch.Tensor) -> torch.Tensor:
        """DGR slot weights: softmax(similarity / temperature) over the nearest patterns at or
        above min_similarity, summed per slot, times strength."""
        config, slots = self.dgr, self.adapters.slots
        similarity = self.keys @ torch.nn.functional.normalize(query.double(), dim=-1)
        nearest = torch.sort(-similarity, stable=True).indices[: config.neighbours]
        pattern_slots = self.adapters.pattern_slots[nearest]
        kept = (
            (similarity[nearest] >= config.min_similarity)
            & (pattern_slots >= self.groups)
            & (pattern_slots < slots)
        )
        weights = torch.zeros(slots - self.groups, dtype=torch.float64)
        if kept.any():
            sims = similarity[nearest][kept]
            votes = torch.softmax(sims / config.vote_temperature, dim=0) * config.strength
            weights.index_add_(0, pattern_slots[kept] - self.groups, votes)
        return weights
