"""Per-generation adapter control: turns TALoRA's weights for the step's t and DGR's retrievals
per position into the graph's `adapter_weights` rows (docs/sampling.md §7-8).

Slots [0, G) are TALoRA groups, [G, K) DGR adapters. Rows of committed tokens get the TALoRA
weights of t = 0 (clean text); span rows get those of the step's t plus the DGR weights retrieved
for that position.

For the learning loops (runtime/learning/) it also keeps what a trajectory records: the DGR
patterns each step retrieved (`step_patterns`) and, when `record_query` is set, the first span
row's query vector (`embedding`: the hidden state of the first generated position, which attends
to the whole prompt — the prompt's key in the DGR pattern space). With `scores` (usefulness of
each pattern learnt from feedback, runtime/learning/scores.py) retrieval re-ranks near neighbours.
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
        scores=None,
    ):
        """`scores`: anything with `active()` and `rerank(found, k)` over (pattern, slot,
        similarity) triples (runtime.learning.scores.PatternScores); None ranks by similarity."""
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
        self.scores = scores
        self.record_query = False  # set by a recorder: keep `embedding` (one lazy row fetch)
        self.start()

    def start(self) -> None:
        self.theta = self.dgr.threshold if self.dgr else 0.0
        self.embedding = None  # the first span row's query vector, when record_query
        self.step_patterns: tuple[tuple[int, float], ...] = ()  # (pattern, similarity) of the last step
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
        if self.record_query and self.embedding is None:
            self.embedding = output.query(0)
        self.step_patterns = ()
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
        used: dict[int, float] = {}
        for i in chosen:
            found = self._neighbours(output.query(i), config.neighbours)
            self.retrieved[i] = dgr_math.vote(
                [(slot, sim) for _, slot, sim in found], config, self.groups, self.slots
            )
            for pattern, _, sim in found:
                if pattern is not None and sim >= config.min_similarity:
                    used[pattern] = max(sim, used.get(pattern, sim))
        self.step_patterns = tuple(sorted(used.items()))
        self.theta = dgr_math.next_theta(config, self.theta, len(chosen), len(masked))
        return chosen

    def _neighbours(self, vector, k: int) -> list[tuple[int | None, int, float]]:
        """(pattern, slot, similarity) of the k nearest patterns; pattern None where the index
        cannot name them (the browser's). Learnt usefulness re-ranks only once feedback exists,
        so without it retrieval is exactly the similarity search."""
        search_patterns = getattr(self.index, "search_patterns", None)
        if search_patterns is None:
            return [(None, slot, sim) for slot, sim in self.index.search(vector, k)]
        slots = self.index.slots
        if self.scores is None or not self.scores.active():
            return [(p, slots[p], sim) for p, sim in search_patterns(vector, k)]
        found = search_patterns(vector, k + self.scores.extra)
        return self.scores.rerank([(p, slots[p], sim) for p, sim in found], k)
