"""ReDo, recycling dormant neurons (Sokar, Agarwal, Castro and Evci, ICML 2023).

Every ``reset_period`` gradient steps, after the optimiser update, the hidden unit layers are probed with a forward
pass (evaluation mode, no gradient, an auxiliary forward) on the ``probe_batch_size`` most recent stream inputs, the
current batch included (a stream learner has no replay buffer to draw a fresh batch from; this is the post-update,
separate-pass probe of the reference). The default, 64, is the paper's statistics batch for DQN and DrQ (Sokar et al.
2023, Table 1; the reference code's default is 256): a 16-sample stream batch alone gives noisy mean activities, and
a unit that fires on few inputs looks dead on it. Unit i of a layer with H units has score
``s_i = E|h_i| / ((1/H) sum_k E|h_k| + 1e-9)`` (post-activations; conv channels averaged over positions) and is
tau-dormant when ``s_i <= tau``. Dormant units are reinitialised by :func:`agents.common.reinit_units`: incoming
weights re-drawn from the initial distribution, bias 0, outgoing weights 0, Adam moments of both zeroed (Adam's
global step untouched). The output layer is never a unit layer, so it is never recycled.

Defaults from NeuMoSync Tables 7 and 10 (Random-Label MNIST / CIFAR-10): Adam, lr 1e-3, period s = 30,000 gradient
steps, threshold tau (the tables' rho) = 0.1.
"""

from __future__ import annotations

from collections import deque

import torch

from agents.base import SupervisedAgent
from agents.common.units import reinit_units

__all__ = ["ReDoAgent", "dormant_scores"]


def dormant_scores(layer, features: torch.Tensor) -> torch.Tensor:
    """ReDo's per-unit score: mean |activation| normalised by the layer mean (scores average to 1)."""
    act = layer.unit_activity(features).mean(0)
    return act / (act.mean() + 1e-9)


class ReDoAgent(SupervisedAgent):
    """Base learner plus periodic recycling of tau-dormant hidden units."""

    NAME = "redo"
    DEFAULTS = dict(optimizer="adam", lr=1e-3, reset_period=30_000, dormant_threshold=0.1, reset_momentum=True,
                    probe_batch_size=64)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        if int(self.hparams["probe_batch_size"]) < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {self.hparams['probe_batch_size']}")
        self.redo_generator = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]) + 2_000_003)
        self.recycled_total = 0
        self._recent: deque = deque()  # the latest stream batches, at least probe_batch_size samples in all

    def after_update(self, x, y):
        super().after_update(x, y)
        need = int(self.hparams["probe_batch_size"])
        self._recent.append(x.detach())
        while self._recent and sum(len(b) for b in self._recent) - len(self._recent[0]) >= need:
            self._recent.popleft()
        if self.num_updates % int(self.hparams["reset_period"]) == 0:
            self.recycle(self.probe_batch())

    def probe_batch(self) -> torch.Tensor:
        """The ``probe_batch_size`` most recent stream inputs (fewer early in the stream)."""
        return torch.cat(list(self._recent))[-int(self.hparams["probe_batch_size"]):]

    @torch.no_grad()
    def recycle(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score the hidden units on ``x`` and reinitialise the dormant ones; returns their indices per layer."""
        was = self.network.training
        self.network.eval()
        try:
            with self.network.capture() as cap, self.auxiliary_forward():
                self.forward(x)
        finally:
            self.network.train(was)
        tau = float(self.hparams["dormant_threshold"])
        recycled = {}
        for layer in self.network.unit_layers:
            if layer.name not in cap:
                continue
            idx = torch.nonzero(dormant_scores(layer, cap[layer.name]) <= tau).squeeze(1)
            if idx.numel():
                reinit_units(layer, idx, self.optimizer, generator=self.redo_generator,
                             reset_momentum=bool(self.hparams["reset_momentum"]))
                recycled[layer.name] = idx
                self.recycled_total += int(idx.numel())
        return recycled

    def state_dict(self) -> dict:
        return {**super().state_dict(), "recycled_total": self.recycled_total, "recent": list(self._recent)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.recycled_total = int(state.get("recycled_total", 0))
        self._recent = deque(b.clone() for b in state.get("recent", []))
