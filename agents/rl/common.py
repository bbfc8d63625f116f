"""Pieces the RL agents of every library share, importing no RL library (tianshou and SB3 are optional)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from agents.backbones import build_backbone

__all__ = ["build_rl_backbone"]


def build_rl_backbone(obs_dim: int, num_outputs: int, *, hidden=(64, 64), activation: str = "relu",
                      layernorm: bool = False, network: Callable[[tuple, int], nn.Module] | None = None) -> nn.Module:
    """An MLP backbone for vector observations, or ``network((obs_dim,), num_outputs)`` when given (e.g. a
    NeuMoSync-modulated network)."""
    if network is not None:
        return network((int(obs_dim),), int(num_outputs))
    return build_backbone("mlp", (int(obs_dim),), int(num_outputs), hidden=hidden, activation=activation,
                          layernorm=layernorm)
