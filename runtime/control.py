"""Per-generation adapter control: turns TALoRA's weights for the step's t and DGR's retrievals
per position into the graph's `adapter_weights` rows (docs/sampling.md §7-8).

Slots [0, G) are TALoRA groups, [G, K) DGR adapters. Rows of committed tokens get the TALoRA
weights of t = 0 (clean text); span rows get those of the step's t plus the DGR weights retrieved
for that position.
"""

from __future__ import annotations

from runtime import dgr as dgr_math
from runtime.backend import StepOutput
from runtime.dgr import DgrConfig
from runtime.index import PatternIndex
from runtime.talora import TaloraConfig, talora_weights


class AdapterControl:
    """Mutable state of one generation (DGR's per-position weights and adaptive threshold);
    create one per generation or call `start()`."""

    def __init__(
        self,
        slots: int,
        groups: int,
        vocab_size: int,
        talora: TaloraConfig | None = None,
        dgr: DgrConfig | None = None,
        index: PatternIndex | None = None,
    ):
        if talora is not None and talora.groups != groups:
            raise ValueError(f"TALoRA has {talora.groups} groups, the slots reserve {groups}")
        self.slots = slots
        self.groups = min(groups, slots)
        self.vocab_size = vocab_size
        self.talora = talora
        self.dgr = (
            dgr if (dgr is not None and index is not None and len(index) > 0 and slots > groups) else None
        )
        self.index = index
        self.start()

    def start(self) -> None:
        self.theta = self.dgr.threshold if self.dgr else 0.0
        self.start_span()

    def start_span(self) -> None:
        self.retrieved: dict[int, list[float]] = {}  # span position -> DGR slot weights

    def _talora(self, t: float) -> list[float]:
        if self.talora is None:
            return [0.0] * self.groups
        return talora_weights(t, self.talora)[: self.groups]

    def rows(self, context_rows: int, span_length: int, t: float) -> list[list[float]]:
        """adapter_weights [context_rows + span_length][slots] for one chunk."""
        no_dgr = [0.0] * (self.slots - self.groups)
        clean = self._talora(0.0) + no_dgr
        noisy = self._talora(t)
        return [clean] * context_rows + [noisy + self.retrieved.get(i, no_dgr) for i in range(span_length)]

    def after_step(self, output: StepOutput, masked: list[int], t: float, step: int) -> list[int]:
        """Score the still-masked span positions (row i = position i), retrieve for the chosen
        ones; returns them."""
        config = self.dgr
        if config is None or not masked:
            return []
        scores = []
        for i in masked:
            entropy_u = dgr_math.normalised_entropy(output.entropy[i], self.vocab_size)
            gap_u = dgr_math.confidence_gap(output.topk_logits[i], output.logsumexp[i])
            raw = dgr_math.position_score(config.strategy, entropy_u, gap_u)
            scores.append((i, dgr_math.timestep_normalise(raw, t, config.floor)))
        bar = dgr_math.step_bar(config, step, self.theta)
        chosen = dgr_math.select_positions(scores, bar, config.budget)
        for i in chosen:
            neighbours = self.index.search(output.query(i), config.neighbours)
            self.retrieved[i] = dgr_math.vote(neighbours, config, self.groups, self.slots)
        self.theta = dgr_math.next_theta(config, self.theta, len(chosen), len(masked))
        return chosen
