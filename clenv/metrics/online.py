"""Online (prequential) accuracy: per task, averaged over tasks, and over windows of the last tasks.

NeuMoSync Section 3.2: the average online accuracy of task k is the mean accuracy of the minibatches of task k,
each measured before the model trains on it. Tables 2 and 27-33 average it over the last 10/25/50/75/100% of tasks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["WINDOWS", "window_size", "window_accuracy", "task_online_accuracy", "online_metrics"]

#: The windows of the papers' tables: fractions of the last tasks.
WINDOWS = (0.1, 0.25, 0.5, 0.75, 1.0)


def window_size(num_tasks: int, fraction: float) -> int:
    """How many of the last tasks a window of ``fraction`` covers: ceil(T * fraction), at least 1, at most T."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if num_tasks < 1:
        raise ValueError("need at least one task")
    # 1e-9 keeps 0.1 * 30 = 3.0000000000000004 from becoming 4.
    return int(min(num_tasks, max(1, math.ceil(num_tasks * fraction - 1e-9))))


def window_accuracy(task_accuracy: Sequence[float], fraction: float) -> float:
    """Mean of the per-task online accuracies of the last ``fraction`` of tasks."""
    acc = np.asarray(task_accuracy, dtype=np.float64)
    if acc.size == 0:
        return float("nan")
    return float(acc[-window_size(acc.size, fraction):].mean())


def task_online_accuracy(step_reward: np.ndarray, step_task: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Per-task mean of per-step accuracies, tasks in order of appearance (a task recurring later is a new entry,
    as in the loop's :class:`~clenv.loop.TaskTracker`)."""
    r = np.asarray(step_reward, dtype=np.float64)
    t = np.asarray(step_task)
    if r.shape != t.shape:
        raise ValueError(f"step_reward and step_task differ in shape: {r.shape} vs {t.shape}")
    if r.size == 0:
        return [], np.zeros(0)
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    means = np.add.reduceat(r, starts) / np.diff(np.r_[starts, r.size])
    return [int(x) for x in t[starts]], means


def online_metrics(task_accuracy: Sequence[float], windows: Sequence[float] = WINDOWS) -> dict[str, float]:
    """``avg_online_acc`` (mean over tasks), ``online_acc_last{p}`` for each window (p in percent) and
    ``final_task_online_acc``."""
    acc = np.asarray(task_accuracy, dtype=np.float64)
    out = {"avg_online_acc": float(acc.mean()) if acc.size else float("nan")}
    for f in windows:
        out[f"online_acc_last{int(round(f * 100))}"] = window_accuracy(acc, f)
    out["final_task_online_acc"] = float(acc[-1]) if acc.size else float("nan")
    return out
