"""Functional Task Networks (002_b6d509c9f1140765.txt): FTN-Slow, FTN-Fast, KWTA, FixedMask, NoMask, EWC and SupSup.

Every training batch the agent first finds a mask for it, then trains the body and the readout through that mask:

- ``mask="smooth_kwta"``: the SmoothKWTA configurer (:class:`agents.common.masks.SmoothKWTAConfigurer`, Algorithm 1)
  on the batch itself, cold-started; FTN-Slow (3 x 3 kernel, T = 15), FTN-Fast (17 x 17, T = 2), KWTA (T = 0);
- ``mask="fixed"``: the t-th task's pre-assigned block of k slots (FixedMask, the structural oracle);
- ``mask="ones"``: every neuron (NoMask, naive fine-tuning; EWC runs on it);
- SupSup (:class:`SupSupAgent`): a frozen random body and one straight-through top-k supermask per task.

The mask used on a task's last training batch is its *stored* mask. At evaluation a mask is *recovered* without the
task's identity from a fresh labelled support batch: the configurer cold-started on it (smooth_kwta), or the stored
mask with the lowest support loss (FixedMask, SupSup). :class:`clenv.probes.MaskRecovery` measures both protocols; it
calls :meth:`FTNAgent.stored_mask`, :meth:`FTNAgent.recover_mask` and :meth:`FTNAgent.using_mask`, the interface any
mask-routed agent implements (the stored masks, the task order and ``using_mask`` are
:class:`agents.common.routing.MaskRoutedAgent`'s, shared with the LoRA pool agents of :mod:`agents.adapters.agent`).

Experiment 1's settings are the defaults: H = 1,024 on 32 x 32, L = 8, d_inner = 8, dropout 0.2, k = 128, Adam 3e-4
without weight decay, the Adam moments reset at every task boundary (Remark 2.2: carried moments move inactive
neurons), S = 1 and eta_m = 1.0 on classification, S = 10 and eta_m = 0.2 on regression.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from agents.base import SupervisedAgent
from agents.common.masks import SmoothKWTAConfigurer, fixed_block, grid_side, kwta
from agents.common.routing import MaskRoutedAgent
from agents.ewc import EWCAgent
from agents.ftn.network import FTNNetwork

__all__ = ["FTNAgent", "FTNSlowAgent", "FTNFastAgent", "KWTAAgent", "FixedMaskAgent", "NoMaskAgent", "FTNEWCAgent",
           "SupSupAgent", "SupSupWideAgent"]

_MASKS = ("smooth_kwta", "fixed", "ones", "supermask")


class FTNAgent(MaskRoutedAgent, SupervisedAgent):
    """The FTN model trained through a mask found for every batch (see the module docstring).

    Hyperparameters beyond :class:`~agents.base.SupervisedAgent`'s: ``num_neurons`` (H, a square), ``depth`` (L),
    ``inner_width`` (d_inner), ``dropout``, ``init``, ``k`` (winners), ``mask`` (``"smooth_kwta"``, ``"fixed"``,
    ``"ones"``), ``kernel`` (s), ``smoothing_steps`` (T), ``mask_steps`` (S) and ``mask_lr`` (eta_m; None: the
    paper's value for the env's task type), ``reset_optimizer_on_switch``.
    """

    NAME = "ftn"
    DEFAULTS = dict(num_neurons=1024, depth=8, inner_width=8, dropout=0.2, init="kaiming_uniform", k=128,
                    mask="smooth_kwta", kernel=3, smoothing_steps=15, mask_steps=None, mask_lr=None,
                    optimizer="adam", lr=3e-4, weight_decay=0.0, reset_optimizer_on_switch=True)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        h = self.hparams
        if h["mask"] not in _MASKS:
            raise ValueError(f"mask must be one of {_MASKS}, got {h['mask']!r}")
        self.mask_grid = grid_side(int(h["num_neurons"]))
        self.configurer = SmoothKWTAConfigurer(
            int(h["num_neurons"]), int(h["k"]), kernel=int(h["kernel"]), smoothing_steps=int(h["smoothing_steps"]),
            steps=int(h["mask_steps"] if h["mask_steps"] is not None else (10 if self.regression else 1)),
            lr=float(h["mask_lr"] if h["mask_lr"] is not None else (0.2 if self.regression else 1.0)))
        self.dropout_generator = torch.Generator(device=self.device).manual_seed(int(h["seed"]) + 7)
        # mask, stored_masks, tasks_seen, task_key: MaskRoutedAgent's (set before this body runs)
        self._neurons: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ model
    def build_network(self):
        h = self.hparams
        return FTNNetwork(int(np.prod(self.env_spec["input_shape"])), self.num_outputs, int(h["num_neurons"]),
                          int(h["depth"]), int(h["inner_width"]), float(h["dropout"]), h["init"])

    def initial_mask(self) -> torch.Tensor:
        H = int(self.hparams["num_neurons"])
        if self.hparams["mask"] == "fixed":
            return fixed_block(0, H, int(self.hparams["k"]), self.device)
        return torch.ones(H, device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.network.neurons(x)
        if self.records_statistics:  # the act() forward of a training step: learn() reuses z with its own mask
            self._neurons = (x, z)
        return self.network.head(self.network.drop(z, self.dropout_generator), self.mask)

    # ------------------------------------------------------------------ the training step
    def learn(self, x, y, logits=None):
        cached, self._neurons = self._neurons, None
        z = cached[1] if cached is not None and cached[0] is x else self.network.neurons(x)
        zd = self.network.drop(z, self.dropout_generator)
        self.mask = self.training_mask(zd.detach(), y)
        self.store_mask(self.mask)
        return super().learn(x, y, self.network.head(zd, self.mask))

    def training_mask(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The binary mask this batch trains through, from its (dropped-out, detached) neuron outputs ``z``."""
        kind = self.hparams["mask"]
        if kind == "ones":
            return torch.ones(z.shape[1], device=z.device)
        if kind == "fixed":
            return fixed_block(self.task_index, z.shape[1], int(self.hparams["k"]), z.device)
        return self.configurer(lambda m: self.task_loss(self.network.head(z, m), y), z.device)

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)  # MaskRoutedAgent records the task
        if self.hparams["reset_optimizer_on_switch"] and self.num_updates > 0:
            self.reset_optimizer()  # Remark 2.2: no Adam moment crosses a boundary
        if self.hparams["mask"] == "fixed":
            self.mask = fixed_block(self.task_index, self.mask.numel(), int(self.hparams["k"]), self.device)

    # ------------------------------------------------------------------ mask-routed agent interface
    # stored_mask, using_mask and best_stored_mask are MaskRoutedAgent's
    @torch.no_grad()
    def support_loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        z = self._eval_neurons(x)
        return float(self.task_loss(self.network.head(z, mask.to(z.dtype)), y))

    def recover_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A mask for a labelled support batch, without its task's identity: the configurer cold-started on it
        (``smooth_kwta``), the stored mask of lowest support loss (``fixed``), all neurons (``ones``)."""
        kind = self.hparams["mask"]
        if kind == "ones":
            return torch.ones(self.mask.numel(), device=self.device)
        if kind in ("fixed", "supermask"):
            return self.best_stored_mask(x, y)
        z = self._eval_neurons(x)
        return self.configurer(lambda m: self.task_loss(self.network.head(z, m), y), z.device)

    def _eval_neurons(self, x) -> torch.Tensor:
        was = self.network.training
        self.network.eval()
        try:
            with torch.no_grad(), self.auxiliary_forward():
                return self.network.neurons(x)
        finally:
            self.network.train(was)

    # state: the mask state is MaskRoutedAgent's


class FTNSlowAgent(FTNAgent):
    """FTN-Slow: 3 x 3 kernel, T = 15 (fine-grained iterative smoothing)."""

    NAME = "ftn_slow"
    DEFAULTS = dict(kernel=3, smoothing_steps=15)


class FTNFastAgent(FTNAgent):
    """FTN-Fast: 17 x 17 kernel, T = 2 (rapid spatial convergence)."""

    NAME = "ftn_fast"
    DEFAULTS = dict(kernel=17, smoothing_steps=2)


class KWTAAgent(FTNAgent):
    """KWTA-only: the gradient proposal and top-k without lateral smoothing (T = 0)."""

    NAME = "kwta"
    DEFAULTS = dict(smoothing_steps=0)


class FixedMaskAgent(FTNAgent):
    """FixedMask: task t trains through the pre-assigned disjoint block [t k, (t + 1) k); recovery picks the seen
    task's block of lowest support loss. With the Adam reset and no weight decay it forgets exactly nothing."""

    NAME = "fixed_mask"
    DEFAULTS = dict(mask="fixed")


class NoMaskAgent(FTNAgent):
    """NoMask: the all-ones mask (naive fine-tuning of the FTN body)."""

    NAME = "no_mask"
    DEFAULTS = dict(mask="ones")


class FTNEWCAgent(EWCAgent, NoMaskAgent):
    """EWC (Kirkpatrick et al. 2017) on the unmasked FTN body, lambda = 400 (the paper's regularisation baseline)."""

    NAME = "ftn_ewc"
    DEFAULTS = dict(mask="ones", ewc_lambda=400.0, optimizer="adam", lr=3e-4)


class SupSupAgent(FTNAgent):
    """SupSup (Wortsman et al. 2020) on the FTN model: the body and readout stay at their random initialisation and
    each task learns scores over the H neurons whose top-k is its binary supermask (straight-through gradient);
    recovery picks the stored supermask of lowest support loss. ``score_lr``: Adam's step on the scores."""

    NAME = "supsup"
    DEFAULTS = dict(mask="supermask", lr=1e-2)

    def build_network(self):
        network = super().build_network()
        for p in network.parameters():
            p.requires_grad_(False)
        self.scores = self.new_scores(0)  # the only trained tensor; the optimiser (lr: the scores' step) sees it
        return network

    def new_scores(self, task_index: int) -> torch.nn.Parameter:
        """Task ``task_index``'s fresh scores, U(-1/sqrt(H), 1/sqrt(H)) from a generator of (seed, task)."""
        H = int(self.hparams["num_neurons"])
        g = torch.Generator().manual_seed(int(self.hparams["seed"]) * 1009 + int(task_index))
        bound = 1.0 / math.sqrt(H)
        return torch.nn.Parameter(((torch.rand(H, generator=g) * 2 - 1) * bound).to(self.device))

    def parameters_to_optimize(self):
        return [self.scores]

    def learn(self, x, y, logits=None):
        self._neurons = None
        with torch.no_grad():
            z = self.network.drop(self.network.neurons(x), self.dropout_generator)
        hard = kwta(self.scores.detach(), int(self.hparams["k"]))
        self.mask = hard
        self.stored_masks[self.task_key] = hard.clone()
        straight_through = hard + self.scores - self.scores.detach()
        return SupervisedAgent.learn(self, x, y, self.network.head(z, straight_through))

    def on_task_switch(self, task_id) -> None:
        fresh_task = (len(self.tasks_seen) if task_id is None else int(task_id)) not in self.tasks_seen
        super().on_task_switch(task_id)
        if fresh_task and self.num_updates > 0:
            self.scores = self.new_scores(self.task_index)
            self.optimizer = self.build_optimizer()
        if self.stored_mask(self.task_key) is not None:
            self.mask = self.stored_mask(self.task_key).clone()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scores": self.scores.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.scores = torch.nn.Parameter(state["scores"].to(self.device).clone())
        self.optimizer = self.build_optimizer()
        super().load_state_dict(state)


class SupSupWideAgent(SupSupAgent):
    """SupSup-Wide: SupSup with the signed Kaiming initialisation of the SupSup paper and twice the inner width."""

    NAME = "supsup_wide"
    DEFAULTS = dict(inner_width=16, init="signed_kaiming")
