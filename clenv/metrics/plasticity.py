"""Plasticity diagnostics (shared/specs/methods.md 3.1 and 7.4).

Array functions (numpy or torch in, floats out):

- :func:`dormant_ratio`: ReDo. Unit score s_i = E|h_i| / (mean_k E|h_k| + 1e-9) (normalised by the layer mean, so
  scores average to 1); dormant if s_i <= tau (<=, not <).
- :func:`dead_fraction`: Dohare. A unit is dead when non-zero on fewer than 1% of the inputs. A different number from
  the ReDo ratio, hence a different name.
- :func:`srank`: min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta} (Kumar et al. 2021; delta = 0.01).
- :func:`effective_rank`: exp of the entropy of sigma / sum(sigma) (Roy & Vetterli 2007).
- :func:`weight_magnitude`: mean |theta| over all parameters (Dohare).

:func:`network_diagnostics` applies them to a network by duck typing: it needs ``network.unit_layers`` (items with
``name``, ``incoming`` (a module), ``unit_activity(features) -> (B, units)``) and ``network.capture()`` (a context
manager yielding a dict that forward passes fill with each unit layer's post-activation output), as
``agents.backbones.Backbone`` provides. Features are the post-activation outputs, not centred; a conv layer's feature
matrix is its per-channel spatial mean (B, channels). ``feature_rank`` is the srank of the penultimate
representation (``network.features(x)`` when present, else the last unit layer). SVDs run in float64 on the CPU.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

__all__ = ["dormant_scores", "dormant_ratio", "dead_fraction", "singular_values", "srank", "effective_rank",
           "weight_magnitude", "network_diagnostics"]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().to("cpu", torch.float64)


def dormant_scores(activity) -> torch.Tensor:
    """ReDo scores of each unit from an activity matrix |h| of shape (samples, units)."""
    a = _t(activity).abs()
    if a.dim() != 2:
        raise ValueError(f"activity must be (samples, units), got shape {tuple(a.shape)}")
    mean = a.mean(0)
    return mean / (mean.mean() + 1e-9)


def dormant_ratio(activity, tau: float = 0.1) -> float:
    """Fraction of units whose ReDo score is <= tau."""
    return float((dormant_scores(activity) <= tau).double().mean())


def dead_fraction(activity, threshold: float = 0.01) -> float:
    """Fraction of units that are non-zero on fewer than ``threshold`` of the samples (Dohare et al.)."""
    a = _t(activity)
    return float(((a != 0).double().mean(0) < threshold).double().mean())


def singular_values(features) -> torch.Tensor:
    f = _t(features)
    if f.dim() != 2:
        f = f.reshape(f.shape[0], -1)
    return torch.linalg.svdvals(f)


def srank(features, delta: float = 0.01) -> int:
    """Smallest k whose top-k singular values hold a (1 - delta) share of their sum; 0 for an all-zero matrix."""
    s = singular_values(features)
    total = float(s.sum())
    if total <= 0:
        return 0
    cum = torch.cumsum(s, 0) / total
    # A tiny tolerance so that an exact share (e.g. 0.99 of a sum) is not missed by rounding.
    return int(torch.searchsorted(cum, torch.tensor(1.0 - delta - 1e-12, dtype=cum.dtype)).item()) + 1


def effective_rank(features) -> float:
    """exp(-sum p_i log p_i) with p = sigma / sum(sigma) and 0 log 0 = 0; 0 for an all-zero matrix."""
    s = singular_values(features)
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def weight_magnitude(parameters) -> float:
    """Mean absolute value over every entry of ``parameters`` (biases and norm affines included)."""
    total, count = 0.0, 0
    for p in parameters:
        total += float(p.detach().abs().sum())
        count += p.numel()
    return total / count if count else float("nan")


def _feature_matrix(features: torch.Tensor) -> torch.Tensor:
    f = features.detach()
    return f.flatten(2).mean(2) if f.dim() > 2 else f.reshape(f.shape[0], -1)


def network_diagnostics(network, x: torch.Tensor, y: torch.Tensor | None = None, *,
                        forward: Callable[[torch.Tensor], torch.Tensor] | None = None, tau: float = 0.1,
                        delta: float = 0.01) -> dict[str, float]:
    """Per-layer and pooled diagnostics on the statistics batch ``x`` (preprocessed inputs).

    Returns a flat dict: ``{layer}/dormant_ratio``, ``{layer}/dead_fraction``, ``{layer}/srank``,
    ``{layer}/effective_rank``, ``{layer}/weight_norm`` (L2 norm of the incoming module's parameters) and, with labels
    ``y``, ``{layer}/zero_grad_fraction`` (entries of the incoming weights whose cross-entropy gradient on the batch
    is exactly zero); pooled: ``dormant_ratio`` (over all units of all layers), ``dead_fraction``,
    ``feature_rank``, ``weight_magnitude``, ``zero_grad_fraction``.

    The network runs in eval mode; gradients come from ``torch.autograd.grad``, so no ``.grad`` is written and no
    optimiser state is touched. ``forward`` (default ``network``) maps inputs to logits, e.g. an agent's ``forward``.
    """
    layers = list(getattr(network, "unit_layers", []) or [])
    forward = forward or network
    was = network.training
    network.eval()
    out: dict[str, float] = {}
    try:
        with torch.enable_grad(), network.capture() as captured:
            logits = forward(x)
        feats = {name: f for name, f in captured.items()}
        grads = {}
        if y is not None and layers:
            weights = [l.incoming.weight for l in layers if getattr(l.incoming, "weight", None) is not None]
            if weights and logits.requires_grad:
                loss = torch.nn.functional.cross_entropy(logits, y.to(logits.device))
                g = torch.autograd.grad(loss, weights, allow_unused=True)
                grads = {id(w): gi for w, gi in zip(weights, g)}
        with torch.no_grad():
            penult = network.features(x) if hasattr(network, "features") else None
    finally:
        network.train(was)
    scores, dead_units, zero, n_w = [], [], 0, 0
    for layer in layers:
        h = feats.get(layer.name)
        if h is None:
            continue
        activity = layer.unit_activity(h.detach()) if hasattr(layer, "unit_activity") else _feature_matrix(h).abs()
        s = dormant_scores(activity)
        scores.append(s)
        dead = ((_t(activity) != 0).double().mean(0) < 0.01).double()
        dead_units.append(dead)
        fm = _feature_matrix(h)
        name = layer.name
        out[f"{name}/dormant_ratio"] = float((s <= tau).double().mean())
        out[f"{name}/dead_fraction"] = float(dead.mean())
        out[f"{name}/srank"] = float(srank(fm, delta))
        out[f"{name}/effective_rank"] = effective_rank(fm)
        out[f"{name}/weight_norm"] = float(math.sqrt(sum(float((p.detach().double() ** 2).sum())
                                                         for p in layer.incoming.parameters())))
        w = getattr(layer.incoming, "weight", None)
        if w is not None and id(w) in grads:
            gi = grads[id(w)]
            z = int(w.numel()) if gi is None else int((gi == 0).sum())
            out[f"{name}/zero_grad_fraction"] = z / w.numel()
            zero, n_w = zero + z, n_w + w.numel()
    if scores:
        allscores = torch.cat(scores)
        out["dormant_ratio"] = float((allscores <= tau).double().mean())
        out["dead_fraction"] = float(torch.cat(dead_units).mean())
    if n_w:
        out["zero_grad_fraction"] = zero / n_w
    if penult is None and layers and layers[-1].name in feats:
        penult = feats[layers[-1].name]
    if penult is not None:
        out["feature_rank"] = float(srank(_feature_matrix(penult), delta))
    out["weight_magnitude"] = weight_magnitude(network.parameters())
    return out
