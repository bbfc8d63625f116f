"""Pieces the RL agents of every library share, importing no RL library (tianshou and SB3 are optional)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from agents.backbones import build_backbone

__all__ = ["build_rl_backbone", "check_rl_spaces"]


def build_rl_backbone(obs_dim: int, num_outputs: int, *, hidden=(64, 64), activation: str = "relu",
                      layernorm: bool = False, network: Callable[[tuple, int], nn.Module] | None = None) -> nn.Module:
    """An MLP backbone for vector observations, or ``network((obs_dim,), num_outputs)`` when given (e.g. a
    NeuMoSync-modulated network)."""
    if network is not None:
        return network((int(obs_dim),), int(num_outputs))
    return build_backbone("mlp", (int(obs_dim),), int(num_outputs), hidden=hidden, activation=activation,
                          layernorm=layernorm)


def check_rl_spaces(name: str, env):
    """``env``'s (observation space, action space) when they are what the RL agents take (a 1-D Box and a Discrete),
    else a ``TypeError`` naming agent ``name`` and what it got."""
    from gymnasium import spaces

    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, spaces.Discrete):
        raise TypeError(f"{name} needs a Discrete action space, got {act_space}")
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise TypeError(f"{name} needs a 1-D Box observation space (a vector), got {obs_space}")
    return obs_space, act_space
