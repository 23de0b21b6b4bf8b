"""What a sampler needs from an inference engine: one forward over a chunk, and a key/value
cache it can commit to. Small on purpose — the browser implements it as a thin bridge to
onnxruntime-web, the CPython runtime with onnxruntime (runtime/ort_backend.py), the tests and
the torch reference with whatever computes the graph's outputs.

Per call only O(S · slots) numbers cross in and O(S' · top_k) come back; the DGR query vector of a
row is fetched lazily, only for the few positions that retrieve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from runtime.artifact import ArtifactConfig


@dataclass(frozen=True)
class Chunk:
    """One forward's inputs (docs/artifact.md "Graph inputs"), as plain lists."""

    input_ids: list[int]  # [S]
    position_ids: list[int]  # [S] absolute positions
    block_ids: list[int]  # [S] key j visible to query i iff block_ids[j] <= block_ids[i]
    output_offset: int  # outputs cover chunk rows output_offset .. S-1
    adapter_weights: list[list[float]]  # [S][slots]
    # [S] per row: 1 = the conversion adapter on (the diffusion model), 0 = off (the base AR model,
    # for the verified sampler's verifier rows); None = on everywhere. Needs config.adapter_gate.
    adapter_gate: list[float] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class StepOutput:
    """One forward's small outputs for rows output_offset .. S-1 (row r predicts chunk position
    output_offset + r + 1)."""

    topk_ids: Sequence[Sequence[int]]  # [S'][top_k], descending logits
    topk_logits: Sequence[Sequence[float]]  # [S'][top_k]
    logsumexp: Sequence[float]  # [S'] over the whole vocabulary
    entropy: Sequence[float]  # [S'] nats, whole vocabulary
    query: Callable[[int], Sequence[float]]  # row -> L2-normalised hidden state [hidden]


def rows_from(output: StepOutput, first: int) -> StepOutput:
    """`output` from row `first` on (row r is output's row first + r): a chunk's tail read as if
    its outputs started there."""
    return StepOutput(
        output.topk_ids[first:],
        output.topk_logits[first:],
        output.logsumexp[first:],
        output.entropy[first:],
        lambda row: output.query(first + row),
    )


class Backend(Protocol):
    """An inference engine holding one sequence's key/value cache. Not thread-safe: one
    generation at a time per backend (servers serialise with a lock or keep one per worker)."""

    config: ArtifactConfig

    def forward(self, chunk: Chunk) -> StepOutput:
        """Run the graph on `chunk` after the cached positions; keep its present keys/values
        until the next forward so that `commit` can adopt them. The cache itself is unchanged."""
        ...

    def commit(self, keep: int) -> None:
        """The cache becomes the last forward's present keys/values, first `keep` positions
        (cached + chunk positions, in order)."""
        ...

    def reset(self) -> None:
        """Empty the cache (a new sequence)."""
        ...

    def cached(self) -> int:
        """Positions currently in the cache."""
        ...
