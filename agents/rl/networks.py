"""tianshou-facing modules around :mod:`agents.backbones` networks (Q-network, discrete actor, critic).

Each wraps one :class:`agents.backbones.Backbone` (or any ``nn.Module`` mapping float (B, obs_dim) to (B, out)), so
PReLU / CReLU / Fourier activations, LayerNorm and the ``unit_layers`` description that CBP / ReDo / diagnostics read
carry over to RL unchanged. Observations are cast to float32 on the module's device; no info is read (tianshou's
update-time info is misaligned with ``obs_next``, see the spec).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from tianshou.utils.net.common import AbstractDiscreteActor, ModuleWithVectorOutput

from agents.rl.common import build_rl_backbone

__all__ = ["build_rl_backbone", "QNet", "DiscreteActorNet", "CriticNet"]


def _as_input(module: nn.Module, obs) -> torch.Tensor:
    p = next(module.parameters())
    return torch.as_tensor(obs, device=p.device, dtype=torch.float32)


class QNet(nn.Module):
    """DQN model contract: ``forward(obs, state=None, info=None) -> (q_values (B, A), state)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, obs, state: Any = None, info: Any = None):
        return self.backbone(_as_input(self, obs)), state


class DiscreteActorNet(AbstractDiscreteActor):
    """Actor for tianshou's ``DiscreteActorPolicy``: unnormalised action logits from one backbone."""

    def __init__(self, backbone: nn.Module, num_actions: int):
        super().__init__(int(num_actions))
        self.backbone = backbone

    def get_preprocess_net(self) -> ModuleWithVectorOutput:
        return ModuleWithVectorOutput.from_module(self.backbone, self.output_dim)

    def forward(self, obs, state: Any = None, info: Any = None):
        return self.backbone(_as_input(self, obs)), state


class CriticNet(nn.Module):
    """State-value critic: ``forward(obs) -> V (B, 1)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, obs, state: Any = None, info: Any = None):
        return self.backbone(_as_input(self, obs))
