"""EWC on LoRA's parameters (NeuroLoRA's "EWC + LoRA" continual-learning baseline, 003_2885b6bbae2a6b4c.txt Section
4.4): plain LoRA (:class:`~agents.adapters.agent.LoRAAgent`) with EWC's penalty (:class:`agents.ewc.EWCAgent`) on the
trained parameters, which are the adapters' A and B (the base model is frozen).

Composition alone (``agents.make("ewc+lora", env)``) builds but fails at the first task switch: EWC's default Fisher
(:func:`agents.common.fisher.diagonal_fisher`) has one class per sample, and a language stream has a label per token
(-100 where a position is not scored). :meth:`EWCLoRAAgent.fisher` overrides EWC's estimation hook with the language
model's: the per-token diagonal Fisher of the per-token cross-entropy that the agent trains on,

    F = (1 / T) sum_s ( grad_theta sum_{t scored in s} log p(y_st | x_s,<t) )^2,

T the number of scored tokens. With ``fisher_labels="sample"`` each scored y_st is drawn from the model's own
predictive distribution at that position (teacher-forced on the observed inputs), so the cross terms between two
tokens of a sequence have expectation zero and F estimates the mean over tokens of the per-token Fisher exactly:
the penalty has the scale of a per-token loss, as the data term has. ``"empirical"`` uses the observed labels. One
backward per sequence, in evaluation mode, inside the agent's auxiliary forwards.

Defaults: LoRA's (rank 8 on ``c_attn``, Adam 5e-4 reset at task boundaries) rather than EWC's SGD; EWC's Gamma = 10;
``fisher_samples`` = 64 sequences (about 2,600 scored tokens on StyleShiftText-v0, and a backward each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agents.adapters.agent import LoRAAgent
from agents.ewc import EWCAgent

__all__ = ["EWCLoRAAgent", "sequence_fisher"]

IGNORE_INDEX = -100


def sequence_fisher(forward, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                    labels: str = "sample", generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-token diagonal Fisher of a causal LM (see the module docstring): ``forward(tokens)`` gives logits (n, L, V)
    for int64 tokens (n, L); ``y`` (N, L) holds the next-token labels, -100 where not scored; ``params`` the
    parameters by name. ``labels``: ``"sample"`` (the true Fisher) or ``"empirical"``. Returns ``{name: tensor}``."""
    if labels not in ("sample", "empirical"):
        raise ValueError(f"fisher_labels must be 'sample' or 'empirical', got {labels!r}")
    names = list(params)
    tensors = [params[n] for n in names]
    total = [torch.zeros_like(p) for p in tensors]
    tokens = 0
    for s in range(len(x)):
        target = y[s:s + 1]
        scored = target != IGNORE_INDEX
        count = int(scored.sum())
        if count == 0:
            continue
        logits = forward(x[s:s + 1])
        if labels == "sample":
            with torch.no_grad():
                probs = F.softmax(logits.detach()[scored].float(), -1)
                target = target.masked_scatter(scored, torch.multinomial(probs, 1, generator=generator)[:, 0])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="sum")
        grads = torch.autograd.grad(nll, tensors, allow_unused=True)
        for acc, g in zip(total, grads):
            if g is not None:
                acc += g.detach().pow(2)
        tokens += count
    return {n: acc / max(1, tokens) for n, acc in zip(names, total)}


class EWCLoRAAgent(EWCAgent, LoRAAgent):
    """LoRA with EWC on its A and B: EWC's penalty and consolidation at each task switch (before LoRA's Adam reset),
    with the language model's Fisher (:meth:`fisher`, EWC's estimation hook)."""

    NAME = "ewc_lora"
    DEFAULTS = dict(optimizer="adam", lr=5e-4, fisher_samples=64)

    def fisher(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The per-token Fisher of the trained parameters on token batches ``(x, y)`` (EWC's recent inputs, its
        generator), in evaluation mode."""
        params = {n: p for n, p in self.network.named_parameters() if p.requires_grad}
        was = self.network.training
        self.network.eval()
        try:
            with self.auxiliary_forward():
                return sequence_fisher(self.forward, params, x, y, labels=self.hparams["fisher_labels"],
                                       generator=generator)
        finally:
            self.network.train(was)
