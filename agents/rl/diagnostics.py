"""Plasticity diagnostics of an RL agent's networks at every task end, in the supervised probe's record format.

:class:`RLDiagnostics` is a :class:`clenv.Callback`: at the end of each task it runs
:func:`clenv.metrics.plasticity.network_diagnostics` (dormant ratio, dead fraction, feature rank, weight magnitude,
per layer and pooled) on the agent's Q network (DQN) or actor and critic (PPO), fed the last ``samples``
observations the agent stored (``agent.recent_observations(samples)``: its replay or rollout buffer; with
``samples`` at most ``steps_per_task`` they are the ending task's) (the states the network was just trained on). Results go
to ``result.records["diagnostics"]`` as ``{"task", "step", "network", ...}`` rows, as the supervised
``PlasticityDiagnostics`` probe writes them, so ``clenv report`` reads both.
"""

from __future__ import annotations

import numpy as np
import torch

from clenv.loop import Callback
from clenv.metrics.plasticity import network_diagnostics

__all__ = ["RLDiagnostics", "SUMMARY"]

#: The pooled diagnostics a run's metrics get (from the last task).
SUMMARY = ("dormant_ratio", "dead_fraction", "feature_rank", "weight_magnitude")


class RLDiagnostics(Callback):
    """Diagnostics of ``agent.network`` (and ``agent.critic_network`` when present) at every task end.

    Args:
        samples: the most recent observations of the ending task (from ``agent.buffer``) to compute them on.
        tau: ReDo's dormancy threshold.
        delta: the srank threshold.
    """

    def __init__(self, samples: int = 1000, tau: float = 0.1, delta: float = 0.01):
        if int(samples) < 2:
            raise ValueError(f"samples must be >= 2 (a rank needs several rows), got {samples}")
        self.samples, self.tau, self.delta = int(samples), float(tau), float(delta)
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]

    def on_run_start(self, env, agent, result) -> None:
        self.rows = []

    def _observations(self, agent) -> torch.Tensor | None:
        # The newest transitions: the agent just trained on them, and (samples <= steps_per_task) all belong to
        # the ending task. Agents say which through recent_observations(n) (tianshou and SB3 buffers differ).
        recent = getattr(agent, "recent_observations", None)
        x = recent(self.samples) if callable(recent) else None
        if x is None or len(x) < 2:
            return None
        return torch.as_tensor(np.asarray(x), dtype=torch.float32)

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        nets = {"q" if hasattr(agent, "q_values") else "actor": getattr(agent, "network", None),
                "critic": getattr(agent, "critic_network", None)}
        x = self._observations(agent)
        if x is None:
            return
        for name, net in nets.items():
            if net is None or not hasattr(net, "capture"):
                continue
            d = network_diagnostics(net, x.to(next(net.parameters()).device), tau=self.tau, delta=self.delta)
            self.rows.append({"task": int(task_id), "step": int(result.steps), "network": name, **d})

    def on_run_end(self, env, agent, result) -> None:
        result.records["diagnostics"] = [dict(r) for r in self.rows]
        first = self.rows[-1]["network"] if self.rows else None
        last = next((r for r in reversed(self.rows) if r["network"] == first), None) if first else None
        if last is not None:
            result.metrics.update({k: float(last[k]) for k in SUMMARY if k in last})
