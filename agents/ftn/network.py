"""The FTN model: H neurons on a D x D grid, each a private L-layer MLP with a scalar output, one linear readout.

002_b6d509c9f1140765.txt, Section 2: ``z_k = MLP_k(x)``, ``y_hat = W_out (Dropout(z) * m)``. Weights are stored as
H x d_in x d_inner (first layer) and H x d_inner x d_inner tensors and applied to all neurons at once with batched
matrix products (no per-neuron loop); nothing is shared across neurons except through the readout, which has no bias
(a shared bias would couple the tasks' readouts and break Theorem 2.1, Appendix C).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["FTNNetwork"]


class FTNNetwork(nn.Module):
    """H per-neuron MLPs and a bias-free readout gated by a mask.

    Args:
        input_dim: d_in, the width of the (flattened) input every neuron sees.
        num_outputs: readout width (classes, or 1 for regression).
        num_neurons: H (a perfect square for the grid; 1,024 in Experiment 1).
        depth: L, hidden layers per neuron (8).
        inner_width: d_inner (8).
        dropout: on the neuron outputs, before the mask (0.2).
        init: ``"kaiming_uniform"`` (``nn.Linear``'s rule per neuron) or ``"signed_kaiming"`` (SupSup's signed
            constant: every weight +-sqrt(2 / fan_in), biases zero).

    Parameters, per neuron k: ``first[k*d:(k+1)*d]`` and ``first_bias[k*d:(k+1)*d]``, ``hidden[:, k]`` and
    ``hidden_bias[:, k]``, ``out[k]`` and ``out_bias[k]``, and the readout column ``readout.weight[:, k]``
    (:meth:`neuron_parameters`).
    """

    def __init__(self, input_dim: int, num_outputs: int, num_neurons: int = 1024, depth: int = 8,
                 inner_width: int = 8, dropout: float = 0.2, init: str = "kaiming_uniform"):
        super().__init__()
        if depth < 1 or inner_width < 1 or num_neurons < 1:
            raise ValueError(f"depth, inner_width and num_neurons must be >= 1, got {depth}, {inner_width}, "
                             f"{num_neurons}")
        if init not in ("kaiming_uniform", "signed_kaiming"):
            raise ValueError(f"init must be 'kaiming_uniform' or 'signed_kaiming', got {init!r}")
        H, d = int(num_neurons), int(inner_width)
        self.num_neurons, self.inner_width, self.depth, self.input_dim = H, d, int(depth), int(input_dim)
        # First layer laid out as one (H*d, d_in) matrix: all neurons read the same input, one matmul.
        self.first = nn.Parameter(torch.empty(H * d, input_dim))
        self.first_bias = nn.Parameter(torch.empty(H * d))
        self.hidden = nn.Parameter(torch.empty(depth - 1, H, d, d))  # (layer, neuron, out, in)
        self.hidden_bias = nn.Parameter(torch.empty(depth - 1, H, d, 1))
        self.out = nn.Parameter(torch.empty(H, 1, d))
        self.out_bias = nn.Parameter(torch.empty(H, 1, 1))
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.readout = nn.Linear(H, num_outputs, bias=False)
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "kaiming_uniform") -> None:
        pairs = ((self.first, self.first_bias, self.input_dim), (self.hidden, self.hidden_bias, self.inner_width),
                 (self.out, self.out_bias, self.inner_width))
        for w, b, fan_in in pairs:
            if init == "signed_kaiming":
                w.copy_(torch.sign(torch.randn_like(w)) * math.sqrt(2.0 / fan_in))
                b.zero_()
            else:
                bound = 1.0 / math.sqrt(fan_in)
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)
        if init == "signed_kaiming":
            self.readout.weight.copy_(torch.sign(torch.randn_like(self.readout.weight))
                                      * math.sqrt(2.0 / self.num_neurons))
        else:
            self.readout.reset_parameters()

    def neurons(self, x: torch.Tensor) -> torch.Tensor:
        """z: every neuron's scalar output, (batch, H)."""
        H, d = self.num_neurons, self.inner_width
        x = x.reshape(x.shape[0], -1)
        h = torch.relu(torch.addmm(self.first_bias[:, None], self.first, x.T)).view(H, d, x.shape[0])
        for w, b in zip(self.hidden, self.hidden_bias):
            h = torch.relu(torch.baddbmm(b, w, h))
        return torch.baddbmm(self.out_bias, self.out, h)[:, 0].T

    def drop(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Output dropout in train mode, drawn from ``generator`` (the agent's own, so that runs are reproducible and
        resumable); the identity in eval mode."""
        if not self.training or self.dropout == 0.0:
            return z
        keep = torch.rand(z.shape, generator=generator, device=z.device, dtype=z.dtype) >= self.dropout
        return z * keep / (1.0 - self.dropout)

    def head(self, z: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The readout of (already dropped-out) neuron outputs ``z`` gated by ``mask`` (None: all neurons)."""
        return self.readout(z if mask is None else z * mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.head(self.drop(self.neurons(x), generator), mask)

    def neuron_parameters(self, indices) -> dict[str, torch.Tensor]:
        """Copies of every parameter entry that belongs to the neurons ``indices`` (a list or index tensor),
        readout columns included: what Theorem 2.1 says training on a disjoint mask leaves unchanged."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.first.device)
        d = self.inner_width
        rows = (idx[:, None] * d + torch.arange(d, device=idx.device)).reshape(-1)
        return {"first": self.first[rows].detach().clone(), "first_bias": self.first_bias[rows].detach().clone(),
                "hidden": self.hidden[:, idx].detach().clone(), "hidden_bias": self.hidden_bias[:, idx].detach().clone(),
                "out": self.out[idx].detach().clone(), "out_bias": self.out_bias[idx].detach().clone(),
                "readout": self.readout.weight[:, idx].detach().clone()}

    def flops_per_sample(self) -> int:
        """Multiply-adds of one forward pass per sample (body and readout)."""
        H, d = self.num_neurons, self.inner_width
        return H * (self.input_dim * d + (self.depth - 1) * d * d + d) + H * self.readout.out_features
