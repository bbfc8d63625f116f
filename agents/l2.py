"""L2: cross-entropy plus ``lambda * ||theta||^2`` over all parameters (NeuMoSync Appendix B.2, "L2").

Defaults from NeuMoSync Tables 7, 9, 10 (Random-Label MNIST / CIFAR-10, Shuffle CIFAR-10): SGD, lr 1e-2,
lambda 1e-3. The penalty is a loss term (coupled), not decoupled weight decay, so with Adam it passes through the
adaptive scaling like any gradient (spec 4.1).
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent

__all__ = ["L2Agent"]


class L2Agent(SupervisedAgent):
    """``loss = CE + l2_lambda * sum_i theta_i^2`` (every trainable parameter)."""

    NAME = "l2"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, l2_lambda=1e-3)

    def regularizer(self):
        return super().regularizer() + self.hparams["l2_lambda"] * squared_norm(self.parameters_to_optimize())

    def stacked_regularizer(self, stack):
        return super().stacked_regularizer(stack) + self.hparams["l2_lambda"] * squared_norm(stack.parameters())


def squared_norm(tensors) -> torch.Tensor:
    """``sum_i ||t_i||^2`` (over stacked parameters, the sum of every seed's)."""
    return sum(t.pow(2).sum() for t in tensors)
