"""Loop C's math: fold MicroLoRAs into a group adapter of fixed rank without erasing what the
adapter already knows (EWC, Kirkpatrick et al. 2017; the online Fisher of EWC++, Chaudhry et al.
2018). Pure numpy over one adapted linear at a time: no I/O, no model.

The parameters. A group adapter's delta on one linear is D = a b (bank layout: a [in, r], b [r, out];
runtime/banks.py). Its factors are not identifiable (a G, G⁻¹ b is the same adapter), so a Fisher
over factor entries would depend on an arbitrary gauge. Its singular components are: D = Σ_k s_k
u_k v_kᵀ, and the parameters EWC protects are the strengths s_k along the adapter's own directions
u_k v_kᵀ, r per layer and target. Their Fisher is measured exactly, one finite difference per
component (consolidate.py), which random-direction SPSA cannot do: (g·z_i)² = g² for every i, the
same number for every coordinate.

The merge. The MicroLoRAs' sum M (their deltas, weighted by `weight`) is written in a joint basis:
Q_in = [U, U₂] (the adapter's input directions, then what M adds), Q_out = [V, V₂] likewise, so

    C_old = diag(s) (zero-padded),   C_new = C_old + Q_inᵀ (weight · M) Q_out     (the plain merge)

Each coordinate gets the quadratic penalty of EWC toward the old value with importance F̃_ij, where
1 + λF̃_ij = ω_i ω_j and ω_k = √(1 + λF_k) on the old directions (1 on the new ones): on an old
component's own coordinate (k, k) that is exactly λF_k; a coordinate that couples two old
directions gets their geometric mean, one that touches only new directions is free. The merge is

    X = argmin_{rank X ≤ r}  Σ_ij (X_ij − C_new_ij)² + λF̃_ij (X_ij − C_old_ij)²
      = argmin_{rank X ≤ r}  Σ_ij ω_i ω_j (X_ij − C*_ij)²,   C*_ij = (C_new_ij + λF̃_ij C_old_ij) / (1 + λF̃_ij)

(C* is the per-parameter closed form: a weighted average of old and new by the Fisher). Because the
weights factor as ω_i ω_j = √ω_i √ω_j · √ω_i √ω_j, the weighted error is ‖diag(√ω)(X − C*)diag(√ω)‖²
and the rank-r minimiser is exact: the truncated SVD of diag(√ω) C* diag(√ω), scaled back by
diag(1/√ω) on both sides — the plain merge's SVD cut (federate's, ruvdllm/federate/bank_pairs.py) in
the Fisher's metric. λ = 0 is the
plain merge; as λ → ∞ every component with F_k > 0 is kept as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-9  # relative: directions M adds that are this small are numerical noise


@dataclass(frozen=True)
class Components:
    """D = u diag(s) vᵀ for one linear: u [in, r], s [r] descending, v [out, r], orthonormal columns."""

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(a [in, rank], b [rank, out]) with a b = D, split √s on each side, zero-padded."""
        k = min(rank, self.s.size)
        root = np.sqrt(self.s[:k])
        a = np.zeros((self.u.shape[0], rank))
        b = np.zeros((rank, self.v.shape[0]))
        a[:, :k] = self.u[:, :k] * root
        b[:k] = (self.v[:, :k] * root).T
        return a, b

    def delta(self) -> np.ndarray:
        return (self.u * self.s) @ self.v.T


def components(a: np.ndarray, b: np.ndarray) -> Components:
    """The singular components of a b (a [in, r], b [r, out]) from r×r work: QR of each factor,
    then the SVD of the small core. r components, zeros included."""
    qa, ra = np.linalg.qr(np.asarray(a, np.float64))  # [in, r], [r, r]
    qb, rb = np.linalg.qr(np.asarray(b, np.float64).T)  # [out, r], [r, r]
    p, s, rt = np.linalg.svd(ra @ rb.T)
    return Components(qa @ p, s, qb @ rt.T)


def complement(basis: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning what `extra` [n, m] adds to `basis` [n, r] (orthonormal)."""
    rest = extra - basis @ (basis.T @ extra)
    if rest.size == 0:
        return np.zeros((basis.shape[0], 0))
    q, sv, _ = np.linalg.svd(rest, full_matrices=False)
    scale = max(1.0, float(np.abs(extra).max(initial=0.0)))
    return q[:, sv > TOLERANCE * scale]


def ewc_average(
    old: np.ndarray, new: np.ndarray, fisher: np.ndarray, lam: float, weight: float = 1.0
) -> np.ndarray:
    """Per parameter, the minimiser of weight·(θ − new)² + (1 − weight)·(θ − old)² + λF(θ − old)²:
    (weight·new + (1 − weight + λF)·old) / (1 + λF). λ = 0: the plain weighted average; λF → ∞: old."""
    penalty = lam * np.asarray(fisher, np.float64)
    return (weight * new + (1.0 - weight + penalty) * old) / (1.0 + penalty)


def ewc_merge(
    old: Components,
    additions: list[tuple[np.ndarray, np.ndarray]],
    fisher: np.ndarray,
    lam: float,
    rank: int,
    weight: float = 1.0,
) -> Components:
    """The group adapter after folding in `additions` (MicroLoRA factors a [in, m], b [m, out]) at
    `weight`, with importance `fisher` [r] of old's components and strength `lam` (module
    docstring); at most `rank` components."""
    a_add = np.concatenate([np.asarray(a, np.float64) for a, _ in additions], axis=1)  # [in, Σm]
    b_add = weight * np.concatenate([np.asarray(b, np.float64) for _, b in additions], axis=0)  # [Σm, out]
    q_in = np.concatenate([old.u, complement(old.u, a_add)], axis=1)  # [in, p]
    q_out = np.concatenate([old.v, complement(old.v, b_add.T)], axis=1)  # [out, q]
    r = old.s.size
    c_old = np.zeros((q_in.shape[1], q_out.shape[1]))
    c_old[np.arange(r), np.arange(r)] = old.s
    c_new = c_old + (q_in.T @ a_add) @ (b_add @ q_out)  # the plain merge in the joint basis
    f = np.maximum(np.asarray(fisher, np.float64), 0.0)
    w_in = np.ones(q_in.shape[1])  # ω_i
    w_out = np.ones(q_out.shape[1])
    w_in[:r] = w_out[:r] = np.sqrt(1.0 + lam * f)
    weights = np.outer(w_in, w_out)  # ω_i ω_j = 1 + λF̃_ij
    c_star = (c_new + (weights - 1.0) * c_old) / weights  # per parameter: the closed form
    root_in, root_out = np.sqrt(w_in), np.sqrt(w_out)
    p, sv, rt = np.linalg.svd(root_in[:, None] * c_star * root_out, full_matrices=False)
    k = min(rank, sv.size)
    a = (q_in / root_in) @ (p[:, :k] * np.sqrt(sv[:k]))  # back through diag(1/√ω), into the model's space
    b = (np.sqrt(sv[:k])[:, None] * rt[:k]) @ (q_out / root_out).T
    return components(*_pad(a, b, rank))


def _pad(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    pa = np.zeros((a.shape[0], rank))
    pb = np.zeros((rank, b.shape[1]))
    pa[:, : a.shape[1]], pb[: b.shape[0]] = a, b
    return pa, pb


# --- the online Fisher (EWC++) ------------------------------------------------------------------


def carry_fisher(old: Components, fisher: np.ndarray, new: Components) -> np.ndarray:
    """The old Fisher as a diagonal over `new`'s components: the old penalty Σ_k F_k (u_kᵀ ΔD v_k)²
    evaluated along each new direction u'_j v'_jᵀ, i.e. Σ_k F_k (u_kᵀ u'_j)² (v_kᵀ v'_j)². Unchanged
    when the directions are; never more in total than before (the overlaps are at most 1)."""
    overlap = (old.u.T @ new.u) ** 2 * (old.v.T @ new.v) ** 2  # [r_old, r_new]
    return np.asarray(fisher, np.float64) @ overlap


def ema_fisher(previous: np.ndarray | None, measured: np.ndarray, decay: float) -> np.ndarray:
    """EWC++'s running Fisher: decay·previous + (1 − decay)·measured; the first measurement as is
    (no history to average with)."""
    measured = np.asarray(measured, np.float64)
    if previous is None:
        return measured
    return decay * np.asarray(previous, np.float64) + (1.0 - decay) * measured
