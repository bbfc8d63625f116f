"""Fast-adaptation metrics from probe learning curves (NeuMoSync Section 3.3 and Appendix B.1).

``A^i_{b,k}``: accuracy on task k after a copy of the model, snapshotted when training finished on task i, has
trained b batches on task k. ``A^0_{b,k}`` is measured from a freshly initialised model instead (the paper's
"trained on tasks 0..i-1" indexing makes i = 0 the random initialisation).

Inputs, each an array (tasks x points) over the same grid of b values (b = 0 first, gamma last):

- ``forward[m]``  = A^{k-1}_{., k} for k = m + 1 (tasks 1..T-1, the snapshot after the previous task);
- ``backward[m]`` = A^{T-1}_{., k} for k = m     (tasks 0..T-2, the final model);
- ``scratch[k]``  = A^0_{., k}   for k = 0..T-1  (a fresh model).

Metrics:

- LCA_F = mean_b mean_{k=1..T-1} A^{k-1}_{b,k};  LCA_B = mean_b mean_{k=0..T-2} A^{T-1}_{b,k};
- LCA_0 = mean_b mean_{k=1..T-1} A^0_{b,k} (the forward task set); ``lca_0_b`` is the same over tasks 0..T-2: the
  paper notes that LCA_0 "is slightly distinct between the two proofs", so each identity gets its own;
- FKT_b = mean_{k=1..T-1} (A^{k-1}_{b,k} - A^0_{b,k}); BKT_b = mean_{k=0..T-2} (A^{T-1}_{b,k} - A^0_{b,k});
- ``fkt`` / ``bkt``: mean over b (the "mean" columns of Table 1), and FKT / BKT at b = gamma/2 and b = gamma.

Identities (B.1, exact up to floating-point rounding): LCA_F = LCA_0 + fkt and LCA_B = LCA_0_B + bkt.
With a grid coarser than every b the LCA is the mean over the grid points (an approximation of the area); the
identities still hold exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lca", "adaptation_metrics"]


def lca(curves) -> float:
    """Learning-curve area of curves (tasks x points): (1/(P)) sum_b (1/n) sum_k A_{b,k}."""
    c = np.asarray(curves, dtype=np.float64)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"curves must be a non-empty (tasks, points) array, got shape {c.shape}")
    return float(c.mean(axis=0).mean())


def _point(b_points: np.ndarray, b: int) -> int:
    """Index of the largest grid point <= b."""
    idx = int(np.searchsorted(b_points, b, side="right")) - 1
    if idx < 0:
        raise ValueError(f"no probe point at or below b={b}")
    return idx


def adaptation_metrics(forward=None, backward=None, scratch=None, b_points=None) -> dict[str, float]:
    """LCA / FKT / BKT from whichever probe curves are given (see the module docstring for shapes).

    ``b_points`` (increasing, first 0) are the numbers of training batches at which the curves were measured; gamma is
    the last. FKT / BKT at gamma/2 use the largest point <= gamma // 2.
    """
    out: dict[str, float] = {}
    f = None if forward is None else np.asarray(forward, np.float64)
    bk = None if backward is None else np.asarray(backward, np.float64)
    s = None if scratch is None else np.asarray(scratch, np.float64)
    arrays = [a for a in (f, bk, s) if a is not None]
    if not arrays:
        return out
    P = arrays[0].shape[1]
    if any(a.ndim != 2 or a.shape[1] != P for a in arrays):
        raise ValueError("forward, backward and scratch curves must be (tasks, points) on one grid")
    bp = np.arange(P) if b_points is None else np.asarray(b_points)
    if bp.shape != (P,) or (P > 1 and np.any(np.diff(bp) <= 0)):
        raise ValueError(f"b_points must be {P} increasing values, got {bp}")
    gamma = int(bp[-1])
    half, last = _point(bp, gamma // 2), P - 1
    out["gamma"] = float(gamma)
    if f is not None and f.shape[0]:
        out["lca_f"] = lca(f)
    if bk is not None and bk.shape[0]:
        out["lca_b"] = lca(bk)
    if s is None:
        return out
    T = s.shape[0]
    if T >= 2:
        out["lca_0"] = lca(s[1:])
        out["lca_0_b"] = lca(s[:-1])
    if f is not None and f.shape[0]:
        if f.shape[0] != T - 1:
            raise ValueError(f"forward has {f.shape[0]} tasks; with {T} scratch curves it needs {T - 1}")
        fkt_b = (f - s[1:]).mean(axis=0)
        out.update(fkt=float(fkt_b.mean()), fkt_gamma_half=float(fkt_b[half]), fkt_gamma=float(fkt_b[last]))
    if bk is not None and bk.shape[0]:
        if bk.shape[0] != T - 1:
            raise ValueError(f"backward has {bk.shape[0]} tasks; with {T} scratch curves it needs {T - 1}")
        bkt_b = (bk - s[:-1]).mean(axis=0)
        out.update(bkt=float(bkt_b.mean()), bkt_gamma_half=float(bkt_b[half]), bkt_gamma=float(bkt_b[last]))
    return out
