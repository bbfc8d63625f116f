"""Continual Backprop (Dohare et al., Nature 2024, "Loss of plasticity in deep continual learning").

After every optimiser step, generate-and-test on each hidden unit layer (spec section 2, authors' ``gnt.py``):

1. every unit's age grows by one;
2. the contribution utility is an EMA (decay ``decay_rate``) of ``mean_batch |h_i| * mean_k |w_out[k, i]|``, where
   ``h`` is the post-activation of the training forward pass of this step (conv: averaged over positions; the two
   branches of a CReLU / Fourier unit summed), bias-corrected by the unit's age: ``u_i / (1 - decay^age_i)``;
3. units older than ``maturity_threshold`` are eligible; ``replacement_rate * #eligible`` units are due per step,
   fractional counts accumulating across steps (so rates below 1 / #eligible still replace);
4. the due number of eligible units with the lowest utility are reinitialised by :func:`agents.common.reinit_units`
   (incoming weights from the init distribution, bias 0, outgoing weights 0, their Adam moments zeroed), and their
   utility, mean activation and age are set to 0.

Zero outgoing weights make the re-drawn incoming weights invisible at the moment of replacement. ``utility="
adaptable"`` uses the ``adaptable_contribution`` variant ``mean|w_out| * |h - h_mean| / mean|w_in|``.

Defaults from NeuMoSync Tables 7-10 (Random-Label MNIST / CIFAR-10, Permuted MNIST, Shuffle CIFAR-10): Adam, lr
1e-3, replacement rate 1e-3; maturity 100 and decay 0.99 from the authors' Permuted-MNIST configuration.
"""

from __future__ import annotations

import math

import torch

from agents.base import SupervisedAgent
from agents.common.units import reinit_units

__all__ = ["CBPAgent"]


def _mean_abs_out(layer) -> torch.Tensor:
    """mean_k |w_out[k, c]| over every consumer column c fed by each unit -> (units,)."""
    w = layer.outgoing.weight.detach().abs()
    per_col = w.transpose(0, 1).reshape(w.shape[1], -1).mean(1)  # (in columns,)
    return per_col[layer.out_map.to(per_col.device)].mean(1)


def _mean_abs_in(layer) -> torch.Tensor:
    w = layer.incoming.weight.detach().abs()
    return w.reshape(w.shape[0], -1).mean(1)


class CBPAgent(SupervisedAgent):
    """Base learner plus generate-and-test replacement of low-utility mature units."""

    NAME = "cbp"
    DEFAULTS = dict(optimizer="adam", lr=1e-3, replacement_rate=1e-3, maturity_threshold=100, decay_rate=0.99,
                    utility="contribution", reset_momentum=True)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        if self.hparams["utility"] not in ("contribution", "adaptable"):
            raise ValueError(f"utility must be 'contribution' or 'adaptable', got {self.hparams['utility']!r}")
        self._init_cbp_state()
        self._features = None
        self._train_features = None
        self.cbp_generator = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]) + 1_000_003)
        self.replaced_total = 0

    def _init_cbp_state(self):
        dev = self.device
        self.cbp_state = {
            l.name: {"age": torch.zeros(l.num_units, dtype=torch.long, device=dev),
                     "util": torch.zeros(l.num_units, device=dev),
                     "mean_act": torch.zeros(l.num_units, device=dev),
                     "accum": 0.0}
            for l in self.network.unit_layers}

    # Record the post-activations of the training forward pass (the one whose loss is backpropagated).
    def forward(self, x):
        if not (torch.is_grad_enabled() and self.network.training):
            return super().forward(x)
        with self.network.capture() as cap:
            out = super().forward(x)
        self._features = {k: v.detach() for k, v in cap.items()}
        return out

    def loss(self, logits, y):
        self._train_features = self._features  # the forward that produced these logits
        return super().loss(logits, y)

    def after_update(self, x, y):
        super().after_update(x, y)
        feats, self._train_features = self._train_features, None
        if feats:
            self.generate_and_test(feats)

    @torch.no_grad()
    def generate_and_test(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One generate-and-test round from post-activation ``features``; returns the replaced unit indices."""
        h = self.hparams
        eta = float(h["decay_rate"])
        replaced = {}
        for layer in self.network.unit_layers:
            if layer.name not in features:
                continue
            st = self.cbp_state[layer.name]
            act = layer.unit_activity(features[layer.name]).mean(0)  # (units,) batch mean of |h|
            st["age"] += 1
            if h["utility"] == "contribution":
                new = act * _mean_abs_out(layer)
            else:
                raw = layer.unit_activity(features[layer.name].detach()).mean(0)
                st["mean_act"].mul_(eta).add_((1 - eta) * raw)
                bias_corr = 1 - eta ** st["age"].double()
                mean_hat = (st["mean_act"] / bias_corr.float().clamp_min(1e-12))
                new = _mean_abs_out(layer) * (raw - mean_hat).abs() / _mean_abs_in(layer).clamp_min(1e-12)
            st["util"].mul_(eta).add_((1 - eta) * new)
            eligible = torch.nonzero(st["age"] > int(h["maturity_threshold"])).squeeze(1)
            if eligible.numel() == 0:
                continue
            st["accum"] += float(h["replacement_rate"]) * eligible.numel()
            n_new = min(int(math.floor(st["accum"])), eligible.numel())
            if n_new == 0:
                continue
            st["accum"] -= n_new
            corr = 1 - eta ** st["age"][eligible].double() if eta > 0 else torch.ones(eligible.numel(),
                                                                                      dtype=torch.double)
            u_hat = st["util"][eligible] / corr.float().to(st["util"].device).clamp_min(1e-12)
            idx = eligible[torch.topk(-u_hat, n_new).indices]
            reinit_units(layer, idx, self.optimizer, generator=self.cbp_generator,
                         reset_momentum=bool(h["reset_momentum"]))
            st["util"][idx] = 0.0
            st["mean_act"][idx] = 0.0
            st["age"][idx] = 0
            replaced[layer.name] = idx
            self.replaced_total += n_new
        return replaced

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cbp_state": self.cbp_state, "replaced_total": self.replaced_total}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "cbp_state" in state:
            self.cbp_state = {k: dict(v) for k, v in state["cbp_state"].items()}
        self.replaced_total = state.get("replaced_total", 0)
