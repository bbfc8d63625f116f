"""L2Init (Kumar, Marklund and Van Roy 2023, arXiv 2308.11958): ``CE + lambda * ||theta - theta_0||^2``.

``theta_0`` is the network's initial parameter vector, stored once when the agent is built and never refreshed at
task boundaries (spec 4.1); the penalty sums squared distances over all trainable parameters and is a loss term
(coupled with Adam's scaling, not decoupled). Defaults from NeuMoSync Tables 7-10: SGD, lr 1e-2, lambda 1e-3.
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent

__all__ = ["L2InitAgent", "distance_to"]


def distance_to(params: dict[str, torch.Tensor], anchors: dict[str, torch.Tensor]) -> torch.Tensor | float:
    """``sum ||p - anchor||^2`` over the parameters that have an anchor."""
    sq = 0.0
    for n, p in params.items():
        anchor = anchors.get(n)
        if anchor is not None:
            sq = sq + (p - anchor).pow(2).sum()
    return sq


class L2InitAgent(SupervisedAgent):
    """Pulls every parameter toward its value at initialisation."""

    NAME = "l2init"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, l2init_lambda=1e-3)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.init_params = {n: p.detach().clone() for n, p in self.network.named_parameters() if p.requires_grad}

    def regularizer(self):
        params = {n: p for n, p in self.network.named_parameters() if p.requires_grad}
        return super().regularizer() + self.hparams["l2init_lambda"] * distance_to(params, self.init_params)

    def stacked_regularizer(self, stack):
        return super().stacked_regularizer(stack) + self.hparams["l2init_lambda"] * distance_to(
            stack.params, stack.stacked("init_params"))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "init_params": self.init_params}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "init_params" in state:
            self.init_params = {n: t.clone() for n, t in state["init_params"].items()}
