"""Experience Replay with a reservoir buffer (Rolnick et al. 2019; NeuMoSync Appendix F).

Each step trains on the stream batch concatenated with ``replay_batch_size`` samples drawn uniformly without
replacement from a reservoir of ``buffer_size`` past samples (one cross-entropy over the union); the stream batch is
inserted after the update (spec 6.2). Defaults from NeuMoSync Appendix F: buffer 4,000, batch 64 + 64 replayed; the
optimiser follows the paper's base learner (SGD, lr 1e-2).
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent
from agents.common.replay import ReplayMemoryMixin

__all__ = ["ERAgent"]


class ERAgent(ReplayMemoryMixin, SupervisedAgent):
    """Base learner whose every step also rehearses a reservoir sample."""

    NAME = "er"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2)

    def act(self, obs, info):
        # With a non-empty memory the step trains on a second forward pass over stream + replay batch: this one
        # only answers, so it must not update BatchNorm or any method's statistics.
        if len(self.memory) == 0:
            return super().act(obs, info)
        with self.auxiliary_forward():
            return super().act(obs, info)

    def training_batch(self, x, y):
        x, y = super().training_batch(x, y)
        if len(self.memory) == 0:
            return x, y
        mx, my = self.memory_batch()
        return torch.cat([x, mx.to(x.dtype)]), torch.cat([y, my.to(y.device)])
