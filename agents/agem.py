"""Averaged Gradient Episodic Memory, A-GEM (Chaudhry, Ranzato, Rohrbach and Elhoseiny, ICLR 2019).

After the stream batch's backward pass: g is the gradient over all trainable parameters as one vector; g_ref the
gradient of the loss on a random memory batch at the same parameters (gradients zeroed between the two backward
passes; the memory forward runs in training mode, as an auxiliary forward: BatchNorm normalises with the memory
batch's statistics but no running statistic of the agent, BatchNorm's or a method's, is updated from it). If
``g . g_ref < 0``, g is replaced by ``g - (g . g_ref / g_ref . g_ref) g_ref``; otherwise it is used unchanged. The optimiser then steps (its weight decay
and momentum apply after the projection).

Memory: the reservoir of :class:`agents.common.replay.ReplayMemoryMixin` (task-agnostic, as NeuMoSync Appendix F
describes A-GEM; the original fills a per-task episodic memory), 4,000 samples, reference batch 64. Defaults from
NeuMoSync Table 26 (Permuted MNIST, Split CIFAR-10): SGD, lr 1e-2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agents.base import SupervisedAgent
from agents.common.replay import ReplayMemoryMixin

__all__ = ["AGEMAgent", "agem_project"]


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A-GEM's projection of flat gradient ``g`` against ``g_ref``; returns (gradient, whether it projected)."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g, False
    return g - (dot / torch.dot(g_ref, g_ref).clamp_min(1e-12)) * g_ref, True


class AGEMAgent(ReplayMemoryMixin, SupervisedAgent):
    """Base learner whose gradient is projected when it would increase the memory loss."""

    NAME = "agem"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.projections = 0

    def before_update(self) -> None:
        super().before_update()
        if len(self.memory) == 0:
            return
        params = [p for p in self.parameters_to_optimize() if p.requires_grad]
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        for p in params:
            p.grad = None
        mx, my = self.memory_batch()
        with self.auxiliary_forward():  # train mode, but no statistic of the agent sees the memory batch
            F.cross_entropy(self.forward(mx), my).backward()
        g_ref = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        g_new, projected = agem_project(g, g_ref)
        self.projections += int(projected)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = g_new[offset:offset + n].view_as(p).clone()
            offset += n
