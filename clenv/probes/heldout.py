"""Held-out accuracy after each task, and the full accuracy matrix R behind the forgetting metrics."""

from __future__ import annotations

import numpy as np

from clenv.metrics.forgetting import forgetting_metrics
from clenv.probes.base import Probe, accuracy

__all__ = ["HeldOutAccuracy"]


class HeldOutAccuracy(Probe):
    """Held-out test accuracy of each task right after it was trained (``test_acc``, NeuMoSync Figure 7;
    ``records["test_accuracy"]``) and, with ``forgetting=True``, every task's accuracy after every task: the
    matrix R (``records["accuracy_matrix"]``, rows: after task i) with the random-init accuracies
    (``records["random_init_accuracy"]``) and ``acc``, ``af_chaudhry``, ``af_neumosync``, ``bwt``, ``fwt``, ``fm``
    (:mod:`clenv.metrics.forgetting`).

    Args:
        forgetting: measure all tasks after each task (T x T evaluations), not only the task just trained.
        samples: held-out samples per task (the first ``samples`` of its test split; on a joint stream, of the
            task's own context).
    """

    OPTIONS = ("forgetting", "samples")

    def __init__(self, *, forgetting: bool = False, samples: int = 500):
        super().__init__()
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.forgetting = bool(forgetting)
        self.samples = int(samples)

    def start(self, env, agent, fresh: bool) -> None:
        T = self.num_tasks
        self.R = np.full((T, T), np.nan)
        self.random_init = np.full(T, np.nan)
        if self.forgetting and fresh:
            with self.timed():
                self.random_init[:] = [self._acc(agent, j) for j in range(T)]

    def _acc(self, agent, task: int) -> float:
        return accuracy(agent, self.subset(task, "test", self.samples, context=True))

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        i = int(task_id)
        self.scalars = {}
        if not 0 <= i < self.num_tasks:
            return
        with self.timed():
            for j in (range(self.num_tasks) if self.forgetting else [i]):
                self.R[i, j] = self._acc(agent, j)
        self.scalars = {"test_acc": float(self.R[i, i])}

    def on_run_end(self, env, agent, result) -> None:
        seen = self.seen_tasks(result)
        if seen:
            test = np.array([self.R[t, t] for t in seen])
            result.records["test_accuracy"] = test
            result.metrics["test_acc"] = float(np.nanmean(test))
            if self.forgetting:
                R = self.R[np.ix_(seen, seen)]
                result.records["accuracy_matrix"], result.records["random_init_accuracy"] = R, self.random_init[seen]
                result.metrics.update(forgetting_metrics(R, self.random_init[seen]))
        super().on_run_end(env, agent, result)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "R": self.R.copy(), "random_init": self.random_init.copy()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.R, self.random_init = np.array(state["R"]), np.array(state["random_init"])
