"""Plasticity interventions for any tianshou Algorithm: :class:`PlasticityOptimizerFactory`.

It wraps a tianshou ``OptimizerFactory``: on ``create_instances(module)`` it creates the torch optimiser as usual and
attaches the interventions of :mod:`agents.rl.interventions` (ReDo, CBP, Shrink & Perturb) to every
:class:`agents.backbones.Backbone` inside ``module`` (the DQN policy's Q-network, PPO's actor and critic) through
:func:`agents.rl.interventions.attach_interventions`. The intervention classes are re-exported here.
"""

from __future__ import annotations

import torch.nn as nn
from tianshou.algorithm.optim import AdamOptimizerFactory, OptimizerFactory

from agents.rl.interventions import (INTERVENTIONS, CBPHook, Intervention, ReDoHook, ShrinkPerturbHook,
                                     attach_interventions, make_intervention)

__all__ = ["PlasticityOptimizerFactory", "Intervention", "ReDoHook", "CBPHook", "ShrinkPerturbHook",
           "make_intervention", "attach_interventions", "INTERVENTIONS"]


class PlasticityOptimizerFactory(OptimizerFactory):
    """A tianshou ``OptimizerFactory`` whose optimisers run ``interventions`` after every step.

    Args:
        interventions: :class:`Intervention` objects (one per created optimiser: an intervention attaches once).
        base: the factory that creates the torch optimiser (default ``AdamOptimizerFactory(lr)``).
    """

    def __init__(self, interventions: list[Intervention] = (), base: OptimizerFactory | None = None,
                 lr: float = 1e-3):
        super().__init__()
        self.base = base if base is not None else AdamOptimizerFactory(lr=lr)
        self.interventions = list(interventions)
        self._attached = False

    def _create_optimizer_for_params(self, params):
        return self.base._create_optimizer_for_params(params)

    def create_instances(self, module: nn.Module):
        optimizer, scheduler = super().create_instances(module)
        if self.interventions:
            if self._attached:
                raise RuntimeError("this PlasticityOptimizerFactory already attached its interventions to an "
                                   "optimiser; make one factory per optimised module")
            attach_interventions(self.interventions, module, optimizer)
            self._attached = True
        return optimizer, scheduler
