"""Continual evaluation: every task seen so far, every k steps, for the stability gap (De Lange et al.; NGM-SGD)."""

from __future__ import annotations

import numpy as np

from clenv.metrics.stability import continual_eval_metrics, min_acc_curve, ngm_stability
from clenv.probes.base import Probe, accuracy

__all__ = ["ContinualEvaluation"]


class ContinualEvaluation(Probe):
    """Evaluate every task seen so far every ``every`` steps and at every task end: ``min_acc``, ``wc_acc``,
    ``avg_sg``, ``sg_{k}to{k+1}``, windowed forgetting / plasticity ``wf_{10,100}`` / ``wp_{10,100}``; with
    ``ngm_compat=True`` also ``ngm_avg_acc``, ``ngm_avg_min_acc``, ``ngm_wc_acc``, ``ngm_avg_sg``,
    ``ngm_sg_{k}to{k+1}`` on task 0's accuracy (:mod:`clenv.metrics.stability`); the curves in
    ``records["stability_step"|"stability_block"|"stability_acc"|"stability_min_acc"|"stability_wc_acc"]``.

    The first evaluation is before any training (block 0: its minimum includes the untrained start, as in NGM). On a
    joint stream each task is evaluated on its own context's held-out set, not the union's.

    Args:
        every: steps between evaluations.
        samples: held-out samples per task.
        ngm_compat: add the NGM-SGD script's metrics.
    """

    OPTIONS = ("every", "samples", "ngm_compat")

    def __init__(self, every: int = 10, *, samples: int = 256, ngm_compat: bool = False):
        super().__init__()
        if isinstance(every, bool) or int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.every, self.samples, self.ngm_compat = int(every), int(samples), bool(ngm_compat)

    def start(self, env, agent, fresh: bool) -> None:
        self.steps: list[int] = []
        self.blocks: list[int] = []
        self.acc: list[np.ndarray] = []
        self.seen: list[int] = []
        self.step = 0
        if fresh:
            self._evaluate(agent, 0, 0)

    def on_step(self, env, agent, step: dict) -> None:
        n, task = int(step["step"]), int(step["task_id"])
        self.step = n
        if not self.seen or self.seen[-1] != task:
            self.seen.append(task)
            if self.steps == [0] and self.blocks[0] != task:
                self.blocks[0] = task  # a run started on a later task (reset option task_id)
        info = step.get("info", {}) or {}
        task_end = bool(info.get("task_switch", False)) or bool(step.get("terminated", False))
        if n % self.every == 0 or task_end:
            self._evaluate(agent, n, task)

    def on_run_end(self, env, agent, result) -> None:
        if self.step and self.steps[-1] != self.step:
            self._evaluate(agent, self.step, self.seen[-1] if self.seen else 0)
        if self.acc:
            acc, block = np.stack(self.acc), np.array(self.blocks)
            rec = result.records
            rec["stability_step"], rec["stability_block"], rec["stability_acc"] = np.array(self.steps), block, acc
            cols = max(int(block.max()) + 1, 1)
            rec["stability_min_acc"], rec["stability_wc_acc"] = min_acc_curve(acc[:, :cols], block)
            result.metrics.update(continual_eval_metrics(acc[:, :cols], block))
            if self.ngm_compat:
                result.metrics.update(ngm_stability(acc[:, 0], block))
        super().on_run_end(env, agent, result)

    def _evaluate(self, agent, step: int, block: int) -> None:
        with self.timed():
            row = np.full(self.num_tasks, np.nan)
            for j in sorted(t for t in set(self.seen) | {block} if 0 <= t < self.num_tasks):
                row[j] = accuracy(agent, self.subset(j, "test", self.samples, context=True))
        self.steps.append(int(step))
        self.blocks.append(int(block))
        self.acc.append(row)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": list(self.steps), "blocks": list(self.blocks),
                "acc": [a.copy() for a in self.acc], "seen": list(self.seen), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps, self.blocks = list(state["steps"]), list(state["blocks"])
        self.acc, self.seen, self.step = [np.array(a) for a in state["acc"]], list(state["seen"]), int(state["step"])
