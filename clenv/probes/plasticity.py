"""Plasticity diagnostics of the agent's network at every task end (dormant units, rank, weight norm, ...)."""

from __future__ import annotations

import torch

from clenv.metrics.plasticity import network_diagnostics
from clenv.probes.base import Probe, agent_inputs

__all__ = ["PlasticityDiagnostics"]

SUMMARY = ("dormant_ratio", "dead_fraction", "feature_rank", "weight_magnitude", "zero_grad_fraction")


class PlasticityDiagnostics(Probe):
    """Per-layer diagnostics (:mod:`clenv.metrics.plasticity`) at every task end on ``samples`` training samples
    of that task: every task's values in ``records["diagnostics"]``, the last task's pooled ``dormant_ratio``,
    ``dead_fraction``, ``feature_rank``, ``weight_magnitude``, ``zero_grad_fraction`` in the metrics.

    Needs ``agent.network`` with ``unit_layers`` and ``capture()`` (``agents.backbones.Backbone``) and optionally
    ``agent.forward(x)``; other agents are skipped.

    Args:
        samples: training samples of the task the diagnostics are computed on.
        tau: ReDo's dormancy threshold.
        delta: the srank threshold.
    """

    OPTIONS = ("samples", "tau", "delta")

    def __init__(self, *, samples: int = 500, tau: float = 0.1, delta: float = 0.01):
        super().__init__()
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples, self.tau, self.delta = int(samples), float(tau), float(delta)

    def start(self, env, agent, fresh: bool) -> None:
        self.diagnostics: list[dict] = []

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        self.scalars = {}
        net = getattr(agent, "network", None)
        if net is None or not hasattr(net, "capture"):
            return
        with self.timed():
            data = self.subset(int(task_id), "train", self.samples)
            x = torch.cat([agent_inputs(agent, xb) for xb, _ in data])
            y = torch.cat([yb for _, yb in data]).to(x.device)
            fwd = getattr(agent, "forward", None)
            d = network_diagnostics(net, x, y, forward=fwd if callable(fwd) else None, tau=self.tau, delta=self.delta)
        if d:
            self.diagnostics.append({"task": int(task_id), "step": int(result.steps), **d})
            self.scalars = {k: v for k, v in d.items() if "/" not in k}

    def on_run_end(self, env, agent, result) -> None:
        if self.diagnostics:
            result.records["diagnostics"] = list(self.diagnostics)
            last = self.diagnostics[-1]
            result.metrics.update({k: float(last[k]) for k in SUMMARY if k in last})
        super().on_run_end(env, agent, result)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "diagnostics": list(self.diagnostics)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.diagnostics = list(state["diagnostics"])
