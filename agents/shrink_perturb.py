"""Shrink & Perturb, the three published variants under distinct names (spec 4.2).

- ``shrink_perturb`` (Ash & Adams, NeurIPS 2020, ``warm_start/run.py``): at every task switch after the first,
  ``theta <- shrink * theta + perturb * theta_fresh`` for every parameter, where ``theta_fresh`` is a freshly
  initialised network of the same architecture (each parameter type gets its own init distribution); buffers are not
  touched and a new optimiser is built. Defaults: shrink 0.4, perturb 0.1 (the reference README), SGD lr 1e-2.
- ``shrink_perturb_continual`` (Dohare et al., Nature 2024): every step, weight decay through the optimiser plus
  Gaussian noise N(0, noise_std^2) added to every parameter after the update. Defaults: weight decay 1e-4 and noise
  1e-5 (their Permuted-MNIST grid), SGD lr 1e-2.
- ``shrink_perturb_to_init`` (the Hare & Tortoise repository's "S&P"): at every task switch after the first,
  ``theta <- (1 - alpha) theta + alpha theta_0`` toward the stored initial parameters, alpha 0.8, no fresh noise; the
  optimiser state is kept.
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent, seeded

__all__ = ["ShrinkPerturbAgent", "ContinualShrinkPerturbAgent", "ShrinkPerturbToInitAgent"]


class ShrinkPerturbAgent(SupervisedAgent):
    """Ash & Adams: shrink toward zero and add a fresh initialisation at each new task."""

    NAME = "shrink_perturb"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, shrink=0.4, perturb=0.1)

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.num_updates > 0:
            self.shrink_and_perturb()

    @torch.no_grad()
    def shrink_and_perturb(self) -> None:
        # A new, seeded draw per switch: same seed and schedule give the same run.
        with seeded(int(self.hparams["seed"]) * 1_000_033 + self.num_updates):
            fresh = self.build_network().to(self.device)
        fresh_params = dict(fresh.named_parameters())
        s, p = float(self.hparams["shrink"]), float(self.hparams["perturb"])
        for n, param in self.network.named_parameters():
            param.mul_(s).add_(p * fresh_params[n])
        self.reset_optimizer()


class ContinualShrinkPerturbAgent(SupervisedAgent):
    """Dohare et al.: weight decay plus small Gaussian noise after every step."""

    NAME = "shrink_perturb_continual"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, weight_decay=1e-4, noise_std=1e-5)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]) + 3_000_017)

    @torch.no_grad()
    def after_update(self, x, y):
        super().after_update(x, y)
        std = float(self.hparams["noise_std"])
        if std > 0:
            for p in self.parameters_to_optimize():
                p.add_(torch.randn(p.shape, generator=self.noise_generator, device=p.device, dtype=p.dtype) * std)


class ShrinkPerturbToInitAgent(SupervisedAgent):
    """Hare & Tortoise repository's S&P: interpolate toward the initial parameters at each new task."""

    NAME = "shrink_perturb_to_init"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, alpha=0.8)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.init_params = {n: p.detach().clone() for n, p in self.network.named_parameters()}

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.num_updates > 0:
            a = float(self.hparams["alpha"])
            with torch.no_grad():
                for n, p in self.network.named_parameters():
                    p.mul_(1 - a).add_(a * self.init_params[n])
