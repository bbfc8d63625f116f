"""The agent's own signals: ``trace()`` every few steps, ``diagnostics()`` at every task end."""

from __future__ import annotations

import numpy as np
import torch

from clenv.probes.base import Probe

__all__ = ["AgentTraces"]


class AgentTraces(Probe):
    """Record an agent's ``trace() -> dict[str, float]`` every ``every`` steps into
    ``records["agent_diagnostics"]`` (``{"step": [...], name: [...]}``; values that are not scalars are skipped, a
    signal that appears late is NaN before it) with its last values as ``agent/{name}`` metrics, and its
    ``diagnostics() -> dict`` (any JSON-able values, arrays included) at every task end into
    ``records["agent_trace"]``. Agents with neither are left alone."""

    OPTIONS = ("every",)

    needs_test_data = False

    def __init__(self, every: int = 1):
        super().__init__()
        if isinstance(every, bool) or int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        self.every = int(every)

    def start(self, env, agent, fresh: bool) -> None:
        self.series: dict[str, list] = {"step": []}
        self.per_task: list[dict] = []
        self.step = 0

    def on_step(self, env, agent, step: dict) -> None:
        self.step = n = int(step["step"])
        trace = getattr(agent, "trace", None)
        if n % self.every == 0 and callable(trace):
            self._record(n, trace())

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        diag = getattr(agent, "diagnostics", None)
        if callable(diag):
            self.per_task.append({"task": int(task_id), "step": self.step, **dict(diag())})

    def on_run_end(self, env, agent, result) -> None:
        if self.series["step"]:
            result.records["agent_diagnostics"] = {k: np.asarray(v, dtype=np.float64) for k, v in self.series.items()}
            result.metrics.update({f"agent/{k}": float(v[-1]) for k, v in self.series.items() if k != "step"})
        if self.per_task:
            result.records["agent_trace"] = list(self.per_task)
        super().on_run_end(env, agent, result)

    def _record(self, step: int, values: dict) -> None:
        rec = self.series
        n = len(rec["step"])
        rec["step"].append(step)
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if k == "step" or isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                                     np.floating)):
                continue  # only scalar signals are traced per step ("step" is the loop's); arrays go in diagnostics()
            if k not in rec:
                rec[k] = [float("nan")] * n
            rec[k].append(float(v))
        for v in rec.values():
            if len(v) < n + 1:
                v.append(float("nan"))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "series": {k: list(v) for k, v in self.series.items()},
                "per_task": list(self.per_task), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.series = {k: list(v) for k, v in state["series"].items()}
        self.per_task, self.step = list(state["per_task"]), int(state["step"])
