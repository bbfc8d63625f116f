"""Continual evaluation and the stability gap.

Inputs: evaluations e = 0..E-1 taken during training. ``acc[e, j]`` is the accuracy on task j's fixed held-out subset
at evaluation e (NaN for tasks not evaluated, e.g. not yet seen); ``block[e]`` is the task being trained when
evaluation e was taken (the task of the last training batch; 0 for an evaluation before any training). An evaluation
right after the last batch of task k belongs to block k, so it holds fin_k.

De Lange, van de Ven & Tuytelaars (ICLR 2023), shared/specs/methods.md 7.3, with tasks 0-based:

- min-ACC at evaluation e in block k = mean over i < k of min{acc[n, i] : n <= e, block[n] > i} (the minimum over
  every evaluation after task i finished); NaN while k = 0.
- WC-ACC at e = (1/(k+1)) acc[e, k] + (1 - 1/(k+1)) min-ACC (= acc[e, 0] in block 0).
- ``min_acc`` / ``wc_acc``: the values at the last evaluation.

Stability gap per transition (the relative drop of the NGM-SGD paper, applied to the task just finished):
SG_{k->k+1} = (fin_k - min{acc[e, k] : block[e] = k+1}) / fin_k with fin_k = acc[last e of block k, k];
``avg_sg`` is their mean.

:func:`ngm_stability` reproduces the NGM-SGD metric script's arithmetic on one accuracy series (spec 1.6).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["continual_eval_metrics", "ngm_stability", "ngm_stability_delta", "min_acc_curve", "windowed_forgetting"]

#: De Lange's window sizes (in evaluations) for windowed forgetting and plasticity.
WF_WINDOWS = (10, 100)


def _check(acc, block):
    acc = np.asarray(acc, dtype=np.float64)
    block = np.asarray(block, dtype=np.int64)
    if acc.ndim != 2 or block.shape != (acc.shape[0],):
        raise ValueError(f"acc must be (evaluations, tasks) and block (evaluations,), got {acc.shape} and "
                         f"{block.shape}")
    if acc.shape[0] == 0:
        raise ValueError("no evaluations")
    if np.any(np.diff(block) < 0) or block.min() < 0:
        raise ValueError("block must be non-decreasing task indices (tasks in stream order)")
    if block.max() >= acc.shape[1]:
        raise ValueError(f"block names task {block.max()} but acc has {acc.shape[1]} task columns")
    return acc, block


def min_acc_curve(acc, block) -> tuple[np.ndarray, np.ndarray]:
    """min-ACC and WC-ACC at every evaluation (arrays of length E)."""
    acc, block = _check(acc, block)
    E, T = acc.shape
    running = np.full(T, np.inf)
    min_acc = np.full(E, np.nan)
    wc = np.full(E, np.nan)
    for e in range(E):
        k = block[e]
        done = np.arange(T) < k  # tasks finished before this evaluation
        # A running minimum per finished task, updated only after the task ended.
        running[done] = np.fmin(running[done], acc[e, done])
        if k > 0:
            min_acc[e] = running[:k].mean()
            wc[e] = acc[e, k] / (k + 1) + (1 - 1 / (k + 1)) * min_acc[e]
        else:
            wc[e] = acc[e, 0]
    return min_acc, wc


def windowed_forgetting(series, w: int) -> tuple[float, float]:
    """De Lange's windowed forgetting and plasticity on one task's evaluation series (NaNs dropped): the largest
    drop ``a_i - a_j`` and the largest rise ``a_j - a_i`` over pairs i < j less than ``w`` evaluations apart.
    NaN when fewer than two evaluations exist."""
    a = np.asarray(series, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size < 2 or w < 2:
        return float("nan"), float("nan")
    drop = rise = -np.inf
    for lag in range(1, min(w, a.size)):
        diff = a[:-lag] - a[lag:]  # earlier minus later
        drop, rise = max(drop, diff.max()), max(rise, (-diff).max())
    return float(drop), float(rise)


def continual_eval_metrics(acc, block, windows=WF_WINDOWS) -> dict[str, float]:
    """``min_acc``, ``wc_acc``, ``avg_sg``, ``sg_{k}to{k+1}`` for each transition seen, and windowed forgetting /
    plasticity ``wf_{w}`` / ``wp_{w}`` (per task, averaged over the tasks with two or more evaluations)."""
    acc, block = _check(acc, block)
    min_acc, wc = min_acc_curve(acc, block)
    out = {"min_acc": float(min_acc[-1]), "wc_acc": float(wc[-1])}
    for w in windows:
        pairs = [windowed_forgetting(acc[:, j], w) for j in range(acc.shape[1])]
        wf = [p[0] for p in pairs if not np.isnan(p[0])]
        wp = [p[1] for p in pairs if not np.isnan(p[1])]
        out[f"wf_{w}"] = float(np.mean(wf)) if wf else float("nan")
        out[f"wp_{w}"] = float(np.mean(wp)) if wp else float("nan")
    sgs = []
    for k in range(int(block.max())):
        in_k, in_next = np.flatnonzero(block == k), np.flatnonzero(block == k + 1)
        if in_k.size == 0 or in_next.size == 0:
            continue
        fin = acc[in_k[-1], k]
        sg = (fin - np.nanmin(acc[in_next, k])) / fin if fin > 0 else float("nan")
        out[f"sg_{k}to{k + 1}"] = float(sg)
        sgs.append(sg)
    out["avg_sg"] = float(np.mean(sgs)) if sgs else float("nan")
    return out


def ngm_stability(acc, block) -> dict[str, float]:
    """The NGM-SGD script's block arithmetic on one accuracy series ``acc[e]`` (the scripts track task-1
    accuracy). Blocks are the K contexts; fin_k / min_k the last / smallest value of block k.

    ``ngm_avg_acc`` = mean_k fin_k; ``ngm_avg_min_acc`` = mean of min_k over the FIRST K-1 blocks (block 0 includes
    the untrained start); ``ngm_wc_acc`` = fin_{K-1}/K + (1 - 1/K) avg-min-ACC; ``ngm_sg_{k}to{k+1}`` =
    (fin_k - min_{k+1}) / fin_k; ``ngm_avg_sg`` their mean. The off-by-one between the minima of avg-min-ACC (blocks
    0..K-2) and of SG (blocks 1..K-1) is the script's and is kept on purpose.
    """
    acc = np.asarray(acc, dtype=np.float64)
    block = np.asarray(block, dtype=np.int64)
    if acc.ndim != 1 or block.shape != acc.shape or acc.size == 0:
        raise ValueError(f"acc and block must be equal-length non-empty 1-D arrays, got {acc.shape}, {block.shape}")
    ids = np.unique(block)
    fin = np.array([acc[block == k][-1] for k in ids])
    mins = np.array([acc[block == k].min() for k in ids])
    K = ids.size
    out = {"ngm_avg_acc": float(fin.mean())}
    out["ngm_avg_min_acc"] = float(mins[:K - 1].mean()) if K > 1 else float("nan")
    out["ngm_wc_acc"] = float(fin[-1] / K + (1 - 1 / K) * out["ngm_avg_min_acc"]) if K > 1 else float(fin[-1])
    sgs = []
    for m in range(K - 1):
        sg = (fin[m] - mins[m + 1]) / fin[m] if fin[m] > 0 else float("nan")
        out[f"ngm_sg_{ids[m]}to{ids[m + 1]}"] = float(sg)
        sgs.append(sg)
    out["ngm_avg_sg"] = float(np.mean(sgs)) if sgs else float("nan")
    return out


def ngm_stability_delta(curves, block) -> dict[str, tuple[float, float]]:
    """:func:`ngm_stability` on the seed-mean curve, with the authors' error bars: the per-iteration std across
    seeds (``curves``: seeds x evaluations) propagated to first order through each ratio, transitions treated as
    independent (our reading of their metric script). Returns ``ngm_avg_acc``, ``ngm_avg_min_acc``, ``ngm_wc_acc``,
    ``ngm_avg_sg`` -> (value, error bar)."""
    curves = np.asarray(curves, dtype=np.float64)
    block = np.asarray(block, dtype=np.int64)
    if curves.ndim != 2 or block.shape != curves.shape[1:] or curves.shape[1] == 0:
        raise ValueError(f"curves must be seeds x evaluations with one block per evaluation, got {curves.shape}, "
                         f"{block.shape}")
    mu, sd = curves.mean(0), curves.std(0, ddof=1) if curves.shape[0] > 1 else np.zeros(curves.shape[1])
    ids = np.unique(block)
    last = [np.flatnonzero(block == k)[-1] for k in ids]
    argmin = [np.flatnonzero(block == k)[np.argmin(mu[block == k])] for k in ids]
    fin, fin_sd = mu[last], sd[last]
    mins, mins_sd = mu[argmin], sd[argmin]
    K = ids.size
    out = {"ngm_avg_acc": (fin.mean(), math.sqrt((fin_sd ** 2).sum()) / K)}
    am, am_sd = mins[:K - 1].mean(), math.sqrt((mins_sd[:K - 1] ** 2).sum()) / (K - 1)
    out["ngm_avg_min_acc"] = (am, am_sd)
    out["ngm_wc_acc"] = (fin[-1] / K + (1 - 1 / K) * am, math.sqrt((fin_sd[-1] / K) ** 2 + ((1 - 1 / K) * am_sd) ** 2))
    sg, var = [], []
    for m in range(K - 1):
        f, mn = fin[m], mins[m + 1]
        sg.append((f - mn) / f)
        var.append((mn / f ** 2 * fin_sd[m]) ** 2 + (mins_sd[m + 1] / f) ** 2)
    out["ngm_avg_sg"] = (float(np.mean(sg)), math.sqrt(sum(var)) / (K - 1))
    return out
