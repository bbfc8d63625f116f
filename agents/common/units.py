"""Reinitialise hidden units of a :class:`agents.backbones.UnitLayer` in place (CBP, ReDo; NeuMoSync may reuse it).

For the selected units of one layer, :func:`reinit_units`

- re-draws the incoming weights (rows of a Linear, output filters of a Conv) from the layer's own initial
  distribution (PyTorch's default for Linear / Conv: Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in),
  1/sqrt(fan_in))) and sets the incoming bias to 0 (CBP spec 2.3, ReDo spec 3.2);
- zeroes the outgoing weights, every input column / channel of the consumer that the unit feeds (``out_map``: both
  branches of CReLU / Fourier units and all spatial positions after a conv -> linear flatten), so the re-drawn weights
  do not change the network's function at the moment of replacement;
- resets the unit's norm parameters (weight 1, bias 0) and BatchNorm running statistics (mean 0, var 1) and a
  per-unit PReLU slope to its initial 0.25;
- zeroes the optimiser state of exactly those rows and columns: Adam/AdamW ``exp_avg``, ``exp_avg_sq`` (and
  ``max_exp_avg_sq``) and, optionally, SGD ``momentum_buffer``. Adam's scalar ``step`` is left alone, as ReDo's
  reference does (stock Adam has no per-element step; CBP's AdamGnT does, see spec 2.4).

With a LayerNorm over the layer, the layer statistics include the new unit, so the other units' normalised values
(and hence the output) can move slightly; without norm, the output is exactly unchanged apart from removing the
replaced units' old contribution.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from agents.backbones import UnitLayer

__all__ = ["reinit_units", "fresh_incoming", "unit_columns", "zero_optimizer_slices"]


def fresh_incoming(module: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """A freshly drawn weight tensor shaped like ``module.weight`` from PyTorch's default Linear / Conv init."""
    if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise TypeError(f"cannot reinitialise units produced by {type(module).__name__}; expected Linear or Conv")
    w = torch.empty_like(module.weight)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
    return w


def unit_columns(layer: UnitLayer, idx: torch.Tensor) -> torch.Tensor:
    """The consumer's input columns (Linear) or channels (Conv) fed by units ``idx``."""
    out_map = layer.out_map.to(idx.device)
    return out_map[idx].reshape(-1)


def zero_optimizer_slices(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, index: torch.Tensor,
                          dim: int = 0, reset_momentum: bool = True) -> None:
    """Zero every per-element optimiser buffer of ``param`` (same shape as it) at ``index`` along ``dim``."""
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for key, buf in state.items():
        if not isinstance(buf, torch.Tensor) or buf.shape != param.shape:
            continue  # scalar ``step`` and anything not per-element
        if key == "momentum_buffer" and not reset_momentum:
            continue
        buf.index_fill_(dim, index.to(buf.device), 0.0)


@torch.no_grad()
def reinit_units(layer: UnitLayer, idx, optimizer: torch.optim.Optimizer | None = None, *,
                 generator: torch.Generator | None = None, reset_momentum: bool = True) -> int:
    """Reinitialise units ``idx`` (indices into the layer's units) of ``layer``; returns how many were reset."""
    idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
    if idx.numel() == 0:
        return 0
    if int(idx.max()) >= layer.num_units or int(idx.min()) < 0:
        raise IndexError(f"unit index out of range for layer {layer.name!r} with {layer.num_units} units")
    inc, out = layer.incoming, layer.outgoing
    dev = inc.weight.device
    idx = idx.to(dev)
    fresh = fresh_incoming(inc, generator)
    inc.weight.index_copy_(0, idx, fresh.index_select(0, idx))
    zero_optimizer_slices(optimizer, inc.weight, idx, 0, reset_momentum)
    if inc.bias is not None:
        inc.bias.index_fill_(0, idx, 0.0)
        zero_optimizer_slices(optimizer, inc.bias, idx, 0, reset_momentum)
    cols = unit_columns(layer, idx).to(out.weight.device)
    out.weight.index_fill_(1, cols, 0.0)
    zero_optimizer_slices(optimizer, out.weight, cols, 1, reset_momentum)
    norm = layer.norm
    if norm is not None:
        if getattr(norm, "weight", None) is not None and norm.weight.shape[0] == layer.num_units:
            norm.weight.index_fill_(0, idx, 1.0)
            zero_optimizer_slices(optimizer, norm.weight, idx, 0, reset_momentum)
        if getattr(norm, "bias", None) is not None and norm.bias.shape[0] == layer.num_units:
            norm.bias.index_fill_(0, idx, 0.0)
            zero_optimizer_slices(optimizer, norm.bias, idx, 0, reset_momentum)
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.index_fill_(0, idx, 0.0)
            norm.running_var.index_fill_(0, idx, 1.0)
    act = layer.activation
    if isinstance(act, nn.PReLU) and act.weight.numel() == layer.num_units:
        act.weight.index_fill_(0, idx, 0.25)
        zero_optimizer_slices(optimizer, act.weight, idx, 0, reset_momentum)
    return int(idx.numel())
