"""Architectural plasticity baselines: the base learner with another activation or with LayerNorm.

- ``crelu``: concatenated ReLU [ReLU(z), ReLU(-z)] (Shang et al. 2016; for plasticity Abbas et al., CoLLAs 2023).
  Width doubles, so the next layer's fan-in doubles; ``width_multiplier`` (default 1: the paper's widths kept, which
  is what NeuMoSync Appendix B.2 describes) scales the hidden widths, e.g. 0.5 to keep the parameter count.
- ``prelu``: per-neuron PReLU, f_i(z) = max(0, z) + a_i min(0, z), a_i learnable, initialised 0.25 (He et al. 2015;
  Razavi Rohani et al., CoLLAs 2025); the slopes are excluded from weight decay (spec 4.6).
- ``deepf``: Deep Fourier features [sin z, cos z] in every hidden layer (Lewandowski, Schuurmans and Machado,
  ICLR 2025); no regulariser by default (the paper's choice was not found, spec 4.5), ``width_multiplier`` as CReLU.
- ``layernorm``: LayerNorm before every hidden activation (Ba et al. 2016; Lyle et al. 2024); conv layers get
  GroupNorm(1, C), LayerNorm over channels and positions.

Optimiser defaults from NeuMoSync Tables 7 and 10 (Random-Label MNIST / CIFAR-10): CReLU Adam 1e-3, the others SGD
1e-2.
"""

from __future__ import annotations

import torch.nn as nn

from agents.backbones import _widths
from agents.base import SupervisedAgent, _optimizer

__all__ = ["CReLUAgent", "PReLUAgent", "DeepFourierAgent", "LayerNormAgent"]


class _WidthMixin(SupervisedAgent):
    SEED_STACKING = True
    DEFAULTS = dict(width_multiplier=1.0)

    def backbone_options(self) -> dict:
        opts = super().backbone_options()
        m = float(self.hparams["width_multiplier"])
        if m != 1.0:
            name = self.hparams["backbone"] or self.env_spec["backbone"]
            if name == "mlp":
                opts["hidden"] = tuple(max(1, int(round(w * m))) for w in _widths("hidden", opts["hidden"], False))
            elif name == "cnn":
                opts["channels"] = tuple(max(1, int(round(c * m))) for c in (8, 16, 32, 64))
            else:
                raise ValueError(f"width_multiplier is supported for the mlp and cnn backbones, not {name!r}")
        return opts


class CReLUAgent(_WidthMixin):
    """Base learner with CReLU activations."""

    NAME = "crelu"
    SEED_STACKING = True
    DEFAULTS = dict(activation="crelu", optimizer="adam", lr=1e-3)


class PReLUAgent(SupervisedAgent):
    """Base learner with per-neuron PReLU activations."""

    NAME = "prelu"
    DEFAULTS = dict(activation="prelu", optimizer="sgd", lr=1e-2)

    def build_optimizer(self):
        slopes = {id(m.weight) for m in self.network.modules() if isinstance(m, nn.PReLU)}
        params = self.parameters_to_optimize()
        if not slopes or not self.hparams["weight_decay"]:
            return super().build_optimizer()
        h = self.hparams
        groups = [{"params": [p for p in params if id(p) not in slopes]},
                  {"params": [p for p in params if id(p) in slopes], "weight_decay": 0.0}]
        return _optimizer(h["optimizer"], groups, h["lr"], h["momentum"], h["weight_decay"], h["betas"])


class DeepFourierAgent(_WidthMixin):
    """Base learner with Deep Fourier feature activations."""

    NAME = "deepf"
    SEED_STACKING = True
    DEFAULTS = dict(activation="fourier", optimizer="sgd", lr=1e-2)


class LayerNormAgent(SupervisedAgent):
    """Base learner with LayerNorm in every hidden layer."""

    NAME = "layernorm"
    SEED_STACKING = True
    DEFAULTS = dict(layernorm=True, optimizer="sgd", lr=1e-2)
