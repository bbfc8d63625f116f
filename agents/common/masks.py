"""Binary routing masks over a pool of components on a square grid, and the SmoothKWTA configurer that finds them.

Functional Task Networks (FTN, 002_b6d509c9f1140765.txt, Section 2, Algorithm 1) gate H components (per-neuron MLPs;
in LoRA-FTN, rank-r adapter components) with one binary mask m in {0, 1}^H. The configurer here knows nothing of the
model: it takes a function ``loss_fn(mask) -> scalar`` that runs the model with a relaxed mask in [0, 1]^H on a
labelled batch, so any masked model (the FTN body, a LoRA pool shared across layers) reuses it unchanged.

Algorithm 1 (SmoothKWTA):

1. gradient proposal: mask logits cold-started at 0; ``steps`` (S) Adam steps of size ``lr`` (eta_m) on
   ``loss_fn(sigmoid(logits))`` (a fresh Adam state each call);
2. lateral smoothing: the logits reshaped to the D x D grid and convolved ``smoothing_steps`` (T) times with a
   uniform ``kernel`` x ``kernel`` filter, wrapping around the edges (a torus);
3. KWTA: the ``k`` largest entries are 1, the rest 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["SmoothKWTAConfigurer", "kwta", "smooth_on_torus", "fixed_block", "grid_side", "mask_overlap"]


def grid_side(num_slots: int) -> int:
    """D for H = D x D slots; a clear error when H is not a square."""
    side = math.isqrt(int(num_slots))
    if side * side != num_slots:
        raise ValueError(f"the component grid is square: H must be a perfect square (D x D), got H={num_slots}")
    return side


def kwta(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The binary mask (float 0/1, ``scores``' shape) of the ``k`` largest scores (ties: the lower index wins)."""
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k must be in 1..{scores.numel()}, got {k}")
    # A stable sort makes tie-breaking (frequent after S=1: the proposal is +-eta_m almost everywhere) deterministic.
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:k]
    mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    mask[order] = 1.0
    return mask.view_as(scores)


def smooth_on_torus(values: torch.Tensor, kernel: int, steps: int) -> torch.Tensor:
    """``values`` (H = D x D, flat) convolved ``steps`` times with a uniform ``kernel`` x ``kernel`` filter on the
    D x D torus (circular padding); returned flat."""
    if steps == 0:
        return values
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the smoothing kernel is an odd width >= 1, got {kernel}")
    side = grid_side(values.numel())
    r = kernel // 2
    if r > side:
        raise ValueError(f"a {kernel} x {kernel} kernel does not fit a {side} x {side} grid")
    grid = values.reshape(1, 1, side, side)
    weight = torch.full((1, 1, kernel, kernel), 1.0 / kernel ** 2, dtype=values.dtype, device=values.device)
    for _ in range(steps):
        grid = F.conv2d(F.pad(grid, (r, r, r, r), mode="circular"), weight)
    return grid.reshape(-1)


def fixed_block(task_index: int, num_slots: int, k: int, device=None) -> torch.Tensor:
    """FixedMask's pre-assigned mask of the ``task_index``-th task: slots ``[t k, (t + 1) k)`` (mod H)."""
    idx = (torch.arange(k, device=device) + int(task_index) * k) % num_slots
    mask = torch.zeros(num_slots, device=device)
    mask[idx] = 1.0
    return mask


def mask_overlap(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise overlap |m_i & m_j| / k of binary masks (rows), FTN Table 5's form (k = each row's size; the
    diagonal is 1)."""
    m = (masks > 0.5).float()
    k = m.sum(1).clamp_min(1.0)
    return (m @ m.T) / k[:, None]


class SmoothKWTAConfigurer:
    """FTN's mask configurer (Algorithm 1) for any masked model.

    Args:
        num_slots: H, a perfect square (the grid is D x D).
        k: winners per mask (KWTA budget).
        kernel: s, the odd width of the uniform smoothing kernel.
        smoothing_steps: T (0: no smoothing, the KWTA-only ablation).
        steps: S, Adam steps of the gradient proposal.
        lr: eta_m, their step size.
        betas, eps: the proposal's Adam constants (torch's defaults).

    ``configurer(loss_fn)`` returns the binary mask (float 0/1, shape (H,)) where ``loss_fn(relaxed_mask)`` is the
    task loss of the model run with ``relaxed_mask`` in [0, 1]^H on a labelled batch. Gradients flow only into the
    mask: the model's parameters are not changed (their ``.grad`` is not touched either).
    """

    def __init__(self, num_slots: int, k: int, *, kernel: int = 3, smoothing_steps: int = 15, steps: int = 1,
                 lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.num_slots, self.side = int(num_slots), grid_side(int(num_slots))
        if not 1 <= int(k) <= self.num_slots:
            raise ValueError(f"k must be in 1..H={self.num_slots}, got {k}")
        if int(steps) < 0 or int(smoothing_steps) < 0:
            raise ValueError(f"steps (S) and smoothing_steps (T) must be >= 0, got {steps}, {smoothing_steps}")
        if int(kernel) < 1 or int(kernel) % 2 == 0 or int(kernel) // 2 > self.side:
            raise ValueError(f"kernel must be an odd width that fits the {self.side} x {self.side} grid, got {kernel}")
        self.k, self.kernel, self.smoothing_steps = int(k), int(kernel), int(smoothing_steps)
        self.steps, self.lr, self.betas, self.eps = int(steps), float(lr), tuple(betas), float(eps)

    def propose(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], device=None) -> torch.Tensor:
        """Stage (i): the mask logits after S Adam steps from zero."""
        logits = torch.zeros(self.num_slots, device=device)
        m1, m2 = torch.zeros_like(logits), torch.zeros_like(logits)
        b1, b2 = self.betas
        for t in range(1, self.steps + 1):
            leaf = logits.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(loss_fn(torch.sigmoid(leaf)), leaf)
            m1.mul_(b1).add_(g, alpha=1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (m1 / (1 - b1 ** t)) / ((m2 / (1 - b2 ** t)).sqrt() + self.eps)
            logits = logits - self.lr * step
        return logits.detach()

    def smooth(self, logits: torch.Tensor) -> torch.Tensor:
        """Stage (ii): T passes of the s x s uniform kernel on the torus."""
        return smooth_on_torus(logits, self.kernel, self.smoothing_steps)

    def __call__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor], device=None) -> torch.Tensor:
        return kwta(self.smooth(self.propose(loss_fn, device)), self.k)
