"""Fast adaptation: accuracy after b training batches on a task, for the LCA / FKT / BKT metrics."""

from __future__ import annotations

import numpy as np
import torch

from clenv.metrics.adaptation import adaptation_metrics
from clenv.probes.base import Probe, accuracy, agent_inputs
from clenv.protocols import probe_gamma

__all__ = ["FastAdaptation"]


class FastAdaptation(Probe):
    """LCA / FKT / BKT probes (:mod:`clenv.metrics.adaptation`): ``lca_f``, ``lca_b``, ``lca_0``, ``lca_0_b``,
    ``fkt``, ``bkt``, ``fkt_gamma_half``, ``fkt_gamma``, ``bkt_gamma_half``, ``bkt_gamma``, ``gamma``; the curves
    in ``records["probe_b"|"probe_forward"|"probe_backward"|"probe_scratch"]``.

    At the end of task i a copy of the agent (``agent.clone()``) trains ``gamma`` batches on task i + 1 (forward
    transfer); at the end of the run copies train on every earlier task (backward) and fresh agents
    (``agent.fresh()``) on every task (from scratch). Batches come from ``env.unwrapped.eval_env()`` replaying the
    task; a copy trains with ``learn(x, y)`` when the agent has it, else through ``act`` / ``observe``, after
    ``on_task_switch(k)``.

    Args:
        gamma: the budget in batches (default: :func:`clenv.protocols.probe_gamma`, Table 5 or 20% of a task).
        every: measure accuracy at every ``every``-th batch (plus gamma/2 and gamma).
        samples: samples of the task's ``split`` split the accuracy is measured on (the paper's A_{b,k} is a
            training accuracy).
    """

    OPTIONS = ("gamma", "every", "samples", "split")

    def __init__(self, *, gamma: int | None = None, every: int = 1, samples: int = 256, split: str = "train"):
        super().__init__()
        if gamma is not None and int(gamma) < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        if int(every) < 1 or int(samples) < 1:
            raise ValueError("every and samples must be >= 1")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.gamma = None if gamma is None else int(gamma)
        self.every, self.samples, self.split = int(every), int(samples), split

    def start(self, env, agent, fresh: bool) -> None:
        for name in ("clone", "fresh"):
            if not callable(getattr(agent, name, None)):
                raise TypeError(f"adaptation probes need agent.{name}(); {type(agent).__name__} has none")
        if not hasattr(self.env, "eval_env"):
            raise TypeError("adaptation probes need env.unwrapped.eval_env() to replay tasks")
        self.budget, self.budget_source = (self.gamma, "given") if self.gamma is not None else probe_gamma(env)
        g = self.budget
        self.points = np.array(sorted(set(range(0, g + 1, self.every)) | {g // 2, g}), dtype=np.int64)
        self.forward: dict[int, np.ndarray] = {}
        self._eval_env = None

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        nxt = int(task_id) + 1
        if nxt < self.num_tasks and nxt not in self.forward:
            with self.timed():
                self.forward[nxt] = self._curve(agent.clone(), nxt)

    def on_run_end(self, env, agent, result) -> None:
        seen = self.seen_tasks(result)
        if seen:
            with self.timed():
                backward = np.stack([self._curve(agent.clone(), k) for k in seen[:-1]]) if len(seen) > 1 else None
                scratch = np.stack([self._curve(agent.fresh(), k) for k in seen])
            P = self.points.size
            forward = np.stack([self.forward[k] for k in seen[1:]]) if len(seen) > 1 else np.zeros((0, P))
            rec = result.records
            rec["probe_b"], rec["probe_scratch"], rec["probe_forward"] = self.points.copy(), scratch, forward
            rec["probe_backward"] = backward if backward is not None else np.zeros((0, P))
            result.metrics.update(adaptation_metrics(forward if len(seen) > 1 else None, backward, scratch,
                                                     self.points))
        result.records["probe_gamma_source"] = self.budget_source
        self._eval_env = None
        super().on_run_end(env, agent, result)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "forward": {k: v.copy() for k, v in self.forward.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.forward = {int(k): np.array(v) for k, v in state["forward"].items()}

    # ------------------------------------------------------------------ the probe
    def _batches(self, task: int):
        """(obs, info) of task ``task`` from the evaluation env, replaying the task when it runs out."""
        if self._eval_env is None:
            self._eval_env = self.env.eval_env()
        ev = self._eval_env
        dummy = np.zeros(ev.action_space.shape, dtype=ev.action_space.dtype)  # the probe only needs the labels
        obs, info = ev.reset(options={"task_id": task})
        while True:
            nxt, _, term, trunc, info = ev.step(dummy)
            yield obs, info
            obs = ev.reset(options={"task_id": task})[0] if (term or trunc) else nxt

    @staticmethod
    def _train(agent, obs, info) -> None:
        learn = getattr(agent, "learn", None)
        if callable(learn) and callable(getattr(agent, "preprocess", None)):
            x = agent_inputs(agent, obs)
            labels = info["labels"]  # numpy, or a tensor on the env's device (output="torch"): not via the host
            learn(x, torch.as_tensor(labels if isinstance(labels, torch.Tensor) else np.asarray(labels),
                                     dtype=torch.int64, device=x.device))
        else:
            action = agent.act(obs, info)
            agent.observe(obs, action, 0.0, obs, False, False, info)

    def _curve(self, probe_agent, task: int) -> np.ndarray:
        """Accuracy of ``probe_agent`` on task ``task`` after b training batches, for every b of the grid."""
        switch = getattr(probe_agent, "on_task_switch", None)
        if callable(switch):
            switch(task)
        data = self.subset(task, self.split, self.samples)
        points = set(int(b) for b in self.points)
        curve = [accuracy(probe_agent, data)] if 0 in points else []
        batches = self._batches(task)
        for b in range(1, self.budget + 1):
            self._train(probe_agent, *next(batches))
            if b in points:
                curve.append(accuracy(probe_agent, data))
        batches.close()
        return np.asarray(curve, dtype=np.float64)
