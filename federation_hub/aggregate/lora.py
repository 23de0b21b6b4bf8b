"""Exact sums of LoRA deltas.

A LoRA delta for one linear is the product `B @ A` with A [rank, in] and B [out, rank] (the static
layout every part shares, docs/artifact.md "Shapes"). The
mean of products is not the product of means, so A and B are never averaged separately.
Instead the weighted sum is kept exactly, either as stacked factors

    Σ_i w_i B_i A_i  =  [w_1 B_1 | … | w_n B_n]  @  [A_1; …; A_n]
                        (out × n·r)                  (n·r × in)

while that is smaller than the dense `out × in` matrix, or as that dense matrix once the
stacked rank outgrows it. A release is then the best rank-k factorisation of the exact sum
(Eckart–Young, by SVD), with the relative Frobenius residual it leaves out reported.

Precision of the dense sum: the products are formed in float32 — one GEMM per at most
`flush_rank` stacked columns, half the bytes and FLOPs of float64 — and each GEMM's result is
added to a float64 accumulator, so rounding does not grow with the number of contributions.
Every entry is then within

    (flush_rank + 3) · 2⁻²⁴ · Σ_i |w_i| (|B_i| |A_i|)        (|·| elementwise)

of the float64 sum (a float32 dot product of k terms errs by at most k·2⁻²⁴ of the sum of its
terms' magnitudes; +3 for rounding w, w·B and A to float32), and a release of rank k is within
2·||that bound||_F of the exact sum's best rank-k approximation (tests/federation_hub/aggregate/
test_lora.py). For rank-8 updates that is ~10⁻⁵ of the terms' size: far below the release's own
truncation residual and the float32 factors it is published in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoraPair:
    """One adapted linear's delta `b @ a`."""

    a: np.ndarray  # [rank, in]
    b: np.ndarray  # [out, rank]

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def product(self) -> np.ndarray:
        return self.b.astype(np.float64) @ self.a.astype(np.float64)  # [out, in]


def frobenius_norm_sq(pair: LoraPair) -> float:
    """||B A||_F² computed on rank×rank matrices: tr((BᵀB)(AAᵀ)), exact, without the product."""
    b = pair.b.astype(np.float64)
    a = pair.a.astype(np.float64)
    return float(max(np.sum((b.T @ b) * (a @ a.T)), 0.0))


def update_norm(pairs: dict[str, LoraPair]) -> float:
    """Frobenius norm of a whole update: all its linears' deltas concatenated."""
    return float(np.sqrt(sum(frobenius_norm_sq(p) for p in pairs.values())))


def scale_pair(pair: LoraPair, factor: float) -> LoraPair:
    """factor · (B A), carried on B."""
    return LoraPair(a=pair.a, b=(pair.b.astype(np.float64) * factor).astype(pair.b.dtype))


@dataclass(frozen=True)
class Factorized:
    """A rank-k factorisation of an aggregated delta and what it leaves out."""

    pair: LoraPair  # a [k, in], b [out, k]; only b @ a is defined, not how the scale splits between them
    residual: float  # ||exact - b a||_F / ||exact||_F (0 when nothing was truncated)


FOLD_DTYPE = np.float32  # products of the dense sum; accumulated in float64 (module docstring)


def fold_error_bound(terms: Iterable[tuple[LoraPair, float]], flush_rank: int = 128) -> np.ndarray:
    """The most, entry by entry, by which a dense LowRankSum of `terms` (pair, weight) can differ
    from their float64 sum: (flush_rank + 3)·2⁻²⁴·Σ|w|·|B||A|, 1 % on top for γ_k's 1/(1 − k·u)
    and the float64 additions. The tolerance the tests hold the fold to."""
    magnitude = sum(
        abs(w) * (np.abs(p.b.astype(np.float64)) @ np.abs(p.a.astype(np.float64))) for p, w in terms
    )
    return 1.01 * (flush_rank + 3) * 2.0**-24 * np.asarray(magnitude, dtype=np.float64)


class LowRankSum:
    """The exact weighted sum Σ w_i B_i A_i for one linear.

    Contributions are kept as stacked factors while those are smaller than the dense matrix;
    after that, in a dense float64 accumulator, fed one float32 GEMM per `flush_rank` columns
    (one big GEMM is far faster than many rank-r ones) from two buffers allocated once, which
    each contribution is cast and weighted into in place — no per-contribution copies to stack.
    """

    def __init__(self, out_features: int, in_features: int, flush_rank: int = 128):
        self.out_features = out_features
        self.in_features = in_features
        self.flush_rank = flush_rank
        self._a: list[np.ndarray] = []  # stacked mode
        self._b: list[np.ndarray] = []
        self._pending_rank = 0
        self._dense: np.ndarray | None = None
        self._a_buf: np.ndarray | None = None  # dense mode: [flush_rank, in] and [out, flush_rank]
        self._b_buf: np.ndarray | None = None
        self._fill = 0

    @property
    def is_dense(self) -> bool:
        return self._dense is not None

    def add(self, pair: LoraPair, weight: float = 1.0) -> None:
        if pair.a.shape[1] != self.in_features or pair.b.shape[0] != self.out_features:
            raise ValueError(
                f"delta of shape b{pair.b.shape} a{pair.a.shape} does not fit [{self.out_features}, {self.in_features}]"
            )
        if weight == 0.0 or pair.rank == 0:
            return
        if self._dense is not None:
            self._buffer(pair.a, pair.b, weight)
            return
        self._a.append(pair.a.astype(np.float64))
        self._b.append(pair.b.astype(np.float64) * weight)
        self._pending_rank += pair.rank
        if self._pending_rank * (self.in_features + self.out_features) > self.in_features * self.out_features:
            self._go_dense()

    def _go_dense(self) -> None:
        stacked_a, stacked_b = self._a, self._b
        self._a, self._b, self._pending_rank = [], [], 0
        self._dense = np.zeros((self.out_features, self.in_features))
        self._a_buf = np.empty((self.flush_rank, self.in_features), dtype=FOLD_DTYPE)
        self._b_buf = np.empty((self.out_features, self.flush_rank), dtype=FOLD_DTYPE)
        for a, b in zip(stacked_a, stacked_b, strict=True):  # weighted already
            self._buffer(a, b, 1.0)

    def _buffer(self, a: np.ndarray, b: np.ndarray, weight: float) -> None:
        """w·B A into the buffers, `flush_rank` columns at most per GEMM (a merged sum can be
        wider: it is fed in slices, so every GEMM stays within the precision bound)."""
        for start in range(0, a.shape[0], self.flush_rank):
            width = min(self.flush_rank, a.shape[0] - start)
            if self._fill + width > self.flush_rank:
                self._flush()
            end = self._fill + width
            self._a_buf[self._fill : end] = a[start : start + width]
            # w·B in float64, rounded once to float32 — not in B's own dtype: a Python float does
            # not widen float16 factors, and w·B in float16 would keep 11 bits
            np.multiply(
                b[:, start : start + width],
                weight,
                out=self._b_buf[:, self._fill : end],
                dtype=np.float64,
                casting="same_kind",
            )
            self._fill = end

    def _flush(self) -> None:
        if self._fill:
            self._dense += (
                self._b_buf[:, : self._fill] @ self._a_buf[: self._fill]
            )  # float32 GEMM, float64 sum
            self._fill = 0

    def stacked(self) -> LoraPair | None:
        """The exact sum as stacked factors, or None once it has gone dense."""
        if self._dense is not None:
            return None
        if not self._a:
            return LoraPair(a=np.zeros((0, self.in_features)), b=np.zeros((self.out_features, 0)))
        return LoraPair(a=np.vstack(self._a), b=np.hstack(self._b))

    def dense(self) -> np.ndarray:
        """The exact sum as a dense [out, in] float64 matrix (folds the buffers in)."""
        if self._dense is None:
            self._go_dense()
        self._flush()
        return self._dense

    def add_dense(self, matrix: np.ndarray) -> None:
        """Add a dense [out, in] term (differential-privacy noise, another sum gone dense)."""
        self.dense()
        self._dense += matrix

    def scale(self, factor: float) -> None:
        """Multiply the whole sum by `factor` (carried on B and the dense part)."""
        self._b = [b * factor for b in self._b]
        if self._dense is not None:
            self._flush()
            self._dense *= factor

    def merge(self, other: LowRankSum, weight: float = 1.0) -> None:
        """Add `weight` × another sum of the same shape, exactly (stacked stays stacked); a dense
        `other` is scaled in place, so it is consumed."""
        stacked = other.stacked()
        if stacked is None:
            other.scale(weight)
            self.add_dense(other.dense())
        elif stacked.rank:
            self.add(stacked, weight)

    def factorize(self, rank: int | None) -> Factorized:
        """Best rank-`rank` factorisation of the sum; rank None keeps the numerical rank (exact).
        A rank below `rank` is padded with zeros (a release fits its bank slots), but never past
        min(out, in): the sum has no more, and the padding would be all there is to the rest."""
        if rank is not None:
            rank = min(rank, self.out_features, self.in_features)
        stacked = self.stacked()
        if stacked is not None:
            u, s, vt = _svd_of_stacked(stacked)
        elif rank is not None and rank < min(self.out_features, self.in_features) // 4:
            return _top_subspace(self.dense(), rank)
        else:
            u, s, vt = np.linalg.svd(self.dense(), full_matrices=False)
        return _truncate(u, s, vt, rank, self.out_features, self.in_features)


def _top_subspace(dense: np.ndarray, rank: int) -> Factorized:
    """Best rank-k factorisation of a dense matrix from the top-k eigenvectors of its smaller Gram
    matrix: 4-5× faster than a full SVD when k is small, and exact for the subspace it keeps.
    With V the top-k right singular vectors, A = Vᵀ and B = M V give B A = M V Vᵀ (Eckart–Young);
    transposed when the left side is the smaller one."""
    from scipy.linalg import eigh

    out_features, in_features = dense.shape
    matrix = dense if in_features <= out_features else dense.T
    n = matrix.shape[1]
    _, vectors = eigh(matrix.T @ matrix, subset_by_index=[n - rank, n - 1])
    vectors = vectors[:, ::-1]  # largest first
    projected = matrix @ vectors  # [m, k]
    total = float(np.sum(dense**2))
    kept = float(np.sum(projected**2))
    residual = float(np.sqrt(max(total - kept, 0.0) / total)) if total > 0 else 0.0
    if in_features <= out_features:
        pair = LoraPair(a=vectors.T.astype(np.float32), b=projected.astype(np.float32))
    else:
        pair = LoraPair(a=projected.T.astype(np.float32), b=vectors.astype(np.float32))
    return Factorized(pair=pair, residual=residual)


def _svd_of_stacked(pair: LoraPair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of B A from its factors in O((in+out)·m²), m the stacked rank: B = Q_b R_b,
    Aᵀ = Q_a R_a, so B A = Q_b (R_b R_aᵀ) Q_aᵀ and only the m×m core is decomposed."""
    if pair.rank == 0:
        return (np.zeros((pair.b.shape[0], 0)), np.zeros(0), np.zeros((0, pair.a.shape[1])))
    q_b, r_b = np.linalg.qr(pair.b)  # [out, m'], [m', m]
    q_a, r_a = np.linalg.qr(pair.a.T)  # [in, m''], [m'', m]
    u_core, s, vt_core = np.linalg.svd(r_b @ r_a.T, full_matrices=False)
    return q_b @ u_core, s, (q_a @ vt_core.T).T


def _truncate(u, s, vt, rank: int | None, out_features: int, in_features: int) -> Factorized:
    total = float(np.sum(s**2))
    if rank is None:
        # numerical rank: singular values below float32 resolution of the largest carry nothing
        keep = int(np.sum(s > (s[0] if s.size else 0.0) * 1e-7)) if s.size else 0
    else:
        keep = min(rank, s.size)
    kept = float(np.sum(s[:keep] ** 2))
    residual = float(np.sqrt(max(total - kept, 0.0) / total)) if total > 0 else 0.0
    b = np.zeros((out_features, rank if rank is not None else keep), dtype=np.float32)
    a = np.zeros((rank if rank is not None else keep, in_features), dtype=np.float32)
    b[:, :keep] = u[:, :keep] * s[:keep]
    a[:keep] = vt[:keep]
    return Factorized(pair=LoraPair(a=a, b=b), residual=residual)
