"""Hare & Tortoise (Lee et al., ICML 2024; github.com/dojeon-ai/Hare-Tortoise).

Two copies of the network: the hare is trained by gradient; the tortoise is an EMA of the hare after every optimiser
step, ``theta_T <- beta theta_T + (1 - beta) theta_H`` (buffers too, as the reference does). Every
``reset_period`` gradient steps the hare is reset to the tortoise by copying values (``copy_``, not the reference's
aliasing assignment, spec 4.3); the optimiser state is kept, as in the reference.

Defaults from NeuMoSync Appendix C.3 and Tables 7/10: AdamW, lr 1e-3 (weight decay 1e-5 from the reference), reset
period s = 4,000 steps (6,000 on Random-Label CIFAR-10), beta 0.999. The paper's warm-start phase (20% of the data
with true labels before the stream) is a data protocol, not part of the agent; it is not reproduced here.
``act_with`` picks which copy answers during the stream: ``"hare"`` (default, the network being trained) or
``"tortoise"`` (the knowledge-retaining model; the hare then trains on a second forward pass).
"""

from __future__ import annotations

import copy

import torch

from agents.base import SupervisedAgent

__all__ = ["HareTortoiseAgent"]


class HareTortoiseAgent(SupervisedAgent):
    """Hare (trained) plus tortoise (EMA), hare reset to tortoise every ``reset_period`` steps."""

    NAME = "hare_tortoise"
    DEFAULTS = dict(optimizer="adamw", lr=1e-3, weight_decay=1e-5, reset_period=4000, ema_beta=0.999,
                    act_with="hare")

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        if self.hparams["act_with"] not in ("hare", "tortoise"):
            raise ValueError(f"act_with must be 'hare' or 'tortoise', got {self.hparams['act_with']!r}")
        self.tortoise = copy.deepcopy(self.network)
        for p in self.tortoise.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def after_update(self, x, y):
        super().after_update(x, y)
        beta = float(self.hparams["ema_beta"])
        for t, h in zip(self.tortoise.parameters(), self.network.parameters()):
            t.mul_(beta).add_((1 - beta) * h)
        for t, h in zip(self.tortoise.buffers(), self.network.buffers()):
            if t.dtype.is_floating_point:
                t.mul_(beta).add_((1 - beta) * h)
            else:
                t.copy_(h)
        if self.num_updates % int(self.hparams["reset_period"]) == 0:
            self.reset_hare()

    @torch.no_grad()
    def reset_hare(self) -> None:
        """theta_H <- theta_T (values copied, buffers included)."""
        for h, t in zip(self.network.parameters(), self.tortoise.parameters()):
            h.copy_(t)
        for h, t in zip(self.network.buffers(), self.tortoise.buffers()):
            h.copy_(t)

    def act(self, obs, info):
        if self.hparams["act_with"] == "hare":
            return super().act(obs, info)
        x = self.preprocess(obs)
        self.tortoise.eval()
        with torch.no_grad():
            logits = self.tortoise(x)
        self._cache = None  # observe() then trains the hare on its own forward pass
        return self.to_action(logits)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "tortoise": self.tortoise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "tortoise" in state:
            self.tortoise.load_state_dict(state["tortoise"])
