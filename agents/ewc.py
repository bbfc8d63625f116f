"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017).

At the end of each task the diagonal Fisher ``F_k`` of that task is estimated (true Fisher: labels sampled from the
model, on up to ``fisher_samples`` of the task's most recent inputs) together with the task's final parameters
``theta_k``; later tasks add ``(Gamma / 2) * sum_k sum_i F_k,i (theta_i - theta_k,i)^2`` to the loss.

The sum over past tasks is kept in constant memory: ``sum_k F_k (theta - theta_k)^2 = A (theta - mu)^2 + const`` with
``A = sum_k F_k`` and ``mu = sum_k F_k theta_k / A``, which has exactly the same gradient as one penalty per task.
``ewc_decay`` < 1 discounts old tasks (online EWC, Schwarz et al. 2018); 1 is Kirkpatrick's sum.

With plain SGD the penalty is a quadratic of curvature ``Gamma * A`` per parameter, and gradient descent on it
diverges once ``lr * Gamma * max(A)`` passes 2 (``2 * (1 + momentum)`` with heavy-ball momentum). Kirkpatrick's sum
grows with every task, so a long stream can cross that bound at the paper's settings: :attr:`EWCAgent.
penalty_stability` is that number, a consolidation that crosses it warns once, and a consolidation that finds the
network no longer finite raises :class:`FloatingPointError` saying so (instead of failing inside the Fisher
estimate).

Defaults from NeuMoSync Tables 7, 9 (SGD, lr 1e-2, Gamma 10); Table 26 (forgetting) uses Adam 1e-3 with Gamma 10.
"""

from __future__ import annotations

import warnings
from collections import deque

import torch

from agents.base import SupervisedAgent
from agents.common.fisher import diagonal_fisher

__all__ = ["EWCAgent"]


class EWCAgent(SupervisedAgent):
    """EWC with a diagonal Fisher per finished task."""

    NAME = "ewc"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, ewc_lambda=10.0, fisher_samples=256, fisher_labels="sample",
                    ewc_decay=1.0)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self._recent: deque = deque()
        self._recent_count = 0
        self.fisher_sum: dict[str, torch.Tensor] = {}   # A = sum_k F_k
        self.fisher_anchor: dict[str, torch.Tensor] = {}  # B = sum_k F_k theta_k (mu = B / A)
        self.tasks_consolidated = 0
        self._warned_unstable = False

    # The Fisher is estimated on the inputs of the task that just ended: keep its most recent ones.
    def after_update(self, x, y):
        super().after_update(x, y)
        self._recent.append((x.detach(), y.detach()))
        self._recent_count += len(x)
        while self._recent and self._recent_count - len(self._recent[0][0]) >= self.hparams["fisher_samples"]:
            self._recent_count -= len(self._recent.popleft()[0])

    def consolidate(self) -> None:
        """Estimate the Fisher of the data seen since the last consolidation and add its penalty."""
        if not self._recent:
            return
        x = torch.cat([b[0] for b in self._recent])[-self.hparams["fisher_samples"]:]
        y = torch.cat([b[1] for b in self._recent])[-self.hparams["fisher_samples"]:]
        self._check_finite(x)
        g = torch.Generator(device=x.device).manual_seed(int(self.hparams["seed"]) * 7919 + self.tasks_consolidated)
        fisher = self.fisher(x, y, g)
        decay = float(self.hparams["ewc_decay"])
        params = dict(self.network.named_parameters())
        for n, f in fisher.items():
            theta = params[n].detach()
            if n in self.fisher_sum:
                self.fisher_sum[n] = decay * self.fisher_sum[n] + f
                self.fisher_anchor[n] = decay * self.fisher_anchor[n] + f * theta
            else:
                self.fisher_sum[n], self.fisher_anchor[n] = f.clone(), f * theta
        self.tasks_consolidated += 1
        self._recent.clear()
        self._recent_count = 0
        bound = self._stability_bound()
        if bound is not None and self.penalty_stability >= bound and not self._warned_unstable:
            self._warned_unstable = True
            warnings.warn(self._unstable_message(bound), RuntimeWarning, stacklevel=2)

    def _stability_bound(self) -> float | None:
        """The value of :attr:`penalty_stability` at which SGD on the penalty diverges; None for adaptive optimisers
        (their step does not scale with the curvature)."""
        if self.hparams["optimizer"] != "sgd":
            return None
        return 2.0 * (1.0 + float(self.hparams["momentum"]))

    @property
    def penalty_stability(self) -> float:
        """``lr * Gamma * max(A)`` over every consolidated parameter: the largest step-size-times-curvature of the
        penalty (0 before the first consolidation). SGD on the penalty alone diverges above 2 (``2 * (1 +
        momentum)`` with momentum)."""
        top = max((float(a.max()) for a in self.fisher_sum.values()), default=0.0)
        return float(self.hparams["lr"]) * float(self.hparams["ewc_lambda"]) * top

    def _unstable_message(self, bound: float) -> str:
        return (f"EWC after {self.tasks_consolidated} task(s): lr * ewc_lambda * max(summed Fisher) = "
                f"{self.penalty_stability:.3g} >= {bound:g}, where SGD on the penalty diverges; lower lr or "
                f"ewc_lambda, or discount old tasks with ewc_decay < 1 (online EWC)")

    def _check_finite(self, x: torch.Tensor) -> None:
        """Raise if the parameters, or the outputs on the Fisher's inputs ``x``, are not finite (huge finite weights
        can give infinite logits); the message says when the penalty's SGD bound was crossed."""
        bound = self._stability_bound()
        detail = "" if bound is None or self.penalty_stability < bound else f" ({self._unstable_message(bound)})"
        self.check_finite(detail)
        if not bool(torch.isfinite(self.predict(x)).all()):
            raise self.diverged("its outputs on the task's inputs are not finite", detail)

    def fisher(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The diagonal Fisher of the trained parameters on ``(x, y)`` (one class, or one regression target, per
        sample); a method with another likelihood (a language model's per-token one) overrides this alone."""
        with self.auxiliary_forward():
            return diagonal_fisher(self.network, x, y, labels=self.hparams["fisher_labels"], generator=generator,
                                   forward=self._fisher_forward(),
                                   likelihood="gaussian" if self.regression else "categorical")

    def _fisher_forward(self):
        # Agents whose forward is not just the network (multi-head, modulated) estimate through their own forward.
        if type(self).forward is SupervisedAgent.forward:
            return None
        return lambda module, inp: self.forward(inp)

    def on_task_switch(self, task_id) -> None:
        if self.num_updates > 0:
            self.consolidate()
        super().on_task_switch(task_id)

    def regularizer(self):
        reg = super().regularizer()
        if not self.fisher_sum:
            return reg
        pen = 0.0
        for n, p in self.network.named_parameters():
            a = self.fisher_sum.get(n)
            if a is None:
                continue
            mu = torch.where(a > 0, self.fisher_anchor[n] / a.clamp_min(1e-30), p.detach())
            pen = pen + (a * (p - mu).pow(2)).sum()
        return reg + 0.5 * self.hparams["ewc_lambda"] * pen

    def state_dict(self) -> dict:
        # The recent inputs are state: the next task switch estimates the Fisher on them.
        return {**super().state_dict(), "fisher_sum": self.fisher_sum, "fisher_anchor": self.fisher_anchor,
                "tasks_consolidated": self.tasks_consolidated, "recent": list(self._recent)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.fisher_sum = dict(state.get("fisher_sum", {}))
        self.fisher_anchor = dict(state.get("fisher_anchor", {}))
        self.tasks_consolidated = state.get("tasks_consolidated", 0)
        if "recent" in state:
            self._recent = deque((x.clone(), y.clone()) for x, y in state["recent"])
            self._recent_count = sum(len(x) for x, _ in self._recent)
