"""Diagonal Fisher information of a classifier (EWC, Kirkpatrick et al. 2017).

``F_i = E_x E_{y ~ p(y|x)} [ (d log p(y|x) / d theta_i)^2 ]``: the mean over samples of the squared per-sample
gradient of the log-likelihood. ``labels="sample"`` draws y from the model's own predictive distribution (the true
Fisher, as in Kirkpatrick et al.); ``labels="empirical"`` uses the observed labels (the empirical Fisher).
Per-sample gradients come from ``torch.func`` (vmap over grad), computed in evaluation mode so that BatchNorm uses its
running statistics and the estimate does not touch them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

__all__ = ["diagonal_fisher"]


def diagonal_fisher(module: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, labels: str = "sample",
                    chunk: int = 256, generator: torch.Generator | None = None,
                    forward=None, likelihood: str = "categorical") -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``module``'s trainable parameters on inputs ``x`` (float, preprocessed).

    Args:
        module: the network; ``forward(module, x)`` (default ``module(x)``) gives logits.
        x, y: inputs and (for ``labels="empirical"``) their labels.
        labels: ``"sample"`` (true Fisher) or ``"empirical"``.
        chunk: samples per vmapped chunk (memory bound).
        generator: for the sampled labels.
        likelihood: ``"categorical"`` (softmax over the logits) or ``"gaussian"`` (unit-variance normal around the
            first output, for regression; sampled targets are the output plus standard normal noise).
    Returns:
        ``{parameter name: tensor}`` with each parameter's shape, averaged over samples.
    """
    if labels not in ("sample", "empirical"):
        raise ValueError(f"labels must be 'sample' or 'empirical', got {labels!r}")
    if likelihood not in ("categorical", "gaussian"):
        raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {likelihood!r}")
    if labels == "empirical" and y is None:
        raise ValueError("the empirical Fisher needs the labels y")
    fwd = forward or (lambda m, inp: m(inp))
    params = {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in module.named_buffers()}
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            if labels == "sample" and likelihood == "gaussian":
                mean = torch.cat([fwd(module, x[s:s + chunk])[:, 0] for s in range(0, len(x), chunk)])
                y = mean + torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            elif labels == "sample":
                probs = torch.cat([F.softmax(fwd(module, x[s:s + chunk]), 1) for s in range(0, len(x), chunk)])
                y = torch.multinomial(probs, 1, generator=generator).squeeze(1)

        target = module if forward is None else _Wrapped(module, fwd)
        prefix = "" if forward is None else "m."
        p_in = {prefix + n: v for n, v in params.items()}
        b_in = {prefix + n: v for n, v in buffers.items()}

        def log_lik(p, xi, yi):
            logits = functional_call(target, (p, b_in), (xi.unsqueeze(0),))
            if likelihood == "gaussian":
                return -0.5 * (logits[0, 0] - yi).pow(2)
            return -F.cross_entropy(logits, yi.view(1))

        per_sample = vmap(grad(log_lik), in_dims=(None, 0, 0))
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for s in range(0, len(x), chunk):
            g = per_sample(p_in, x[s:s + chunk], y[s:s + chunk].to(x.device))
            for n in total:
                total[n] += g[prefix + n].pow(2).sum(0)
        return {n: t / max(1, len(x)) for n, t in total.items()}
    finally:
        module.train(was)


class _Wrapped(nn.Module):
    """Makes a custom forward (e.g. a multi-head agent's) callable by ``functional_call``."""

    def __init__(self, m: nn.Module, fwd):
        super().__init__()
        self.m = m
        self._fwd = fwd

    def forward(self, x):
        return self._fwd(self.m, x)
