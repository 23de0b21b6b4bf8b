"""The DGR pattern index: nearest stored patterns (hidden-state keys, each pointing at a DGR
adapter slot) by cosine similarity.

On CPython it is hnswlib (HNSW graph, M = 16, ef_construction = 200, ef_search = 50; saved next to
the bank). Pyodide has no hnswlib wheel, so a standard-library exact search stands in there: fine
for the few hundred patterns a browser bank holds, O(N · d) per query in pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class HnswParams:
    m: int = 16  # graph degree: hnswlib's recommended middle ground for d in the hundreds
    ef_construction: int = 200  # build-time beam: near-exact recall at 10k patterns
    ef_search: int = 50  # query-time beam: recall ~0.99 at well under 0.1 ms


class PatternIndex(Protocol):
    dim: int

    def add(self, vectors: Sequence[Sequence[float]], slots: Sequence[int]) -> None: ...

    def search(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        """Up to k (slot, cosine similarity) pairs, most similar first."""
        ...

    # Optional (ExactIndex and HnswIndex have it): the same search naming the patterns themselves
    # (their insertion order in the bank), so that feedback can score the patterns a step used.
    # def search_patterns(self, vector, k) -> list[tuple[int, float]]: (pattern, similarity) pairs

    def __len__(self) -> int: ...


def _normalised(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class ExactIndex:
    """Standard-library exact cosine search (Pyodide, tests, tiny banks)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.vectors: list[list[float]] = []
        self.slots: list[int] = []

    def add(self, vectors: Sequence[Sequence[float]], slots: Sequence[int]) -> None:
        for vector, slot in zip(vectors, slots, strict=True):
            if len(vector) != self.dim:
                raise ValueError(f"pattern of size {len(vector)}, index dimension {self.dim}")
            self.vectors.append(_normalised(vector))
            self.slots.append(int(slot))

    def search(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        return [(self.slots[label], sim) for label, sim in self.search_patterns(vector, k)]

    def search_patterns(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        """Up to k (pattern, cosine similarity) pairs, most similar first (ties: earlier pattern)."""
        query = _normalised(vector)
        sims = [
            (sum(a * b for a, b in zip(query, v, strict=True)), label) for label, v in enumerate(self.vectors)
        ]
        sims.sort(key=lambda p: (-p[0], p[1]))
        return [(label, sim) for sim, label in sims[:k]]

    def __len__(self) -> int:
        return len(self.slots)


class HnswIndex:
    """hnswlib in cosine space; labels are insertion order, mapped to slots here."""

    def __init__(
        self, dim: int, params: HnswParams = HnswParams(), capacity: int = 1024, _empty: bool = True
    ):
        import hnswlib  # CPython only: imported here so the module loads in Pyodide

        self.dim = dim
        self.params = params
        self.slots: list[int] = []
        self._index = hnswlib.Index(space="cosine", dim=dim)
        if _empty:
            self._index.init_index(max_elements=capacity, ef_construction=params.ef_construction, M=params.m)
            self._index.set_ef(params.ef_search)

    def add(self, vectors: Sequence[Sequence[float]], slots: Sequence[int]) -> None:
        if len(vectors) == 0:
            return
        needed = len(self.slots) + len(vectors)
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, 2 * self._index.get_max_elements()))
        labels = list(range(len(self.slots), needed))
        self._index.add_items(vectors, labels)
        self.slots.extend(int(s) for s in slots)

    def search(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        return [(self.slots[label], sim) for label, sim in self.search_patterns(vector, k)]

    def search_patterns(self, vector: Sequence[float], k: int) -> list[tuple[int, float]]:
        """Up to k (pattern, cosine similarity) pairs, most similar first; hnswlib labels are
        the patterns' insertion order."""
        k = min(k, len(self.slots))
        if k == 0:
            return []
        labels, distances = self._index.knn_query(vector, k=k)
        return [(int(label), 1.0 - float(d)) for label, d in zip(labels[0], distances[0], strict=True)]

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, slots: Sequence[int], params: HnswParams = HnswParams()) -> HnswIndex:
        index = cls(dim, params, _empty=False)
        index._index.load_index(str(path), max_elements=max(len(slots), 1))
        index._index.set_ef(params.ef_search)
        if index._index.get_current_count() != len(slots):
            raise ValueError(
                f"{path}: {index._index.get_current_count()} patterns, the bank lists {len(slots)}"
            )
        index.slots = [int(s) for s in slots]
        return index

    def __len__(self) -> int:
        return len(self.slots)


def hnswlib_available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


def make_index(dim: int, exact: bool = False) -> PatternIndex:
    """hnswlib where it is installed, the exact standard-library search otherwise (or if asked)."""
    if not exact and hnswlib_available():
        return HnswIndex(dim)
    return ExactIndex(dim)
