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
adaptable"`` uses the ``adaptable_contribution`` variant of the authors' ``gnt.py`` / ``convGnT.py``:
``mean_k |w_out[k, i]| * mean_batch |h_i - h_bar_i| / mean_j |w_in[i, j]|``, where ``h_bar_i`` is the
bias-corrected EMA (decay ``decay_rate``) of the unit's signed batch-mean activation (conv: the deviation is taken at
every position and averaged, the mean is the channel's; CReLU / Fourier branches each have their own mean and their
deviations are summed). With
``absorb_mean=True`` (the MLP algorithm ``gnt.py``) a Linear consumer's bias also absorbs the removed unit's mean
contribution, so the batch-mean output is kept too.

The mechanism is :class:`GenerateAndTest`, which works on any list of unit layers: :class:`CBPAgent` runs it after
each supervised step and ``agents.rl.hooks.CBPHook`` after each tianshou gradient step.

Defaults from NeuMoSync Tables 7-10 (Random-Label MNIST / CIFAR-10, Permuted MNIST, Shuffle CIFAR-10): Adam, lr
1e-3, replacement rate 1e-3; maturity 100 and decay 0.99 from the authors' Permuted-MNIST configuration.
"""

from __future__ import annotations

import math

import torch

from agents.base import SupervisedAgent
from agents.common.units import reinit_units

__all__ = ["CBPAgent", "GenerateAndTest"]


def _mean_abs_out(layer) -> torch.Tensor:
    """mean_k |w_out[k, c]| over every consumer column c fed by each unit -> (units,)."""
    w = layer.outgoing.weight.detach().abs()
    per_col = w.transpose(0, 1).reshape(w.shape[1], -1).mean(1)  # (in columns,)
    return per_col[layer.out_map.to(per_col.device)].mean(1)


def _mean_abs_in(layer) -> torch.Tensor:
    w = layer.incoming.weight.detach().abs()
    return w.reshape(w.shape[0], -1).mean(1)


class GenerateAndTest:
    """CBP's generate-and-test over ``layers`` (:class:`agents.backbones.UnitLayer`); one state per layer."""

    def __init__(self, layers, *, replacement_rate: float, maturity_threshold: int, decay_rate: float,
                 utility: str = "contribution", reset_momentum: bool = True, absorb_mean: bool = False,
                 generator: torch.Generator | None = None):
        if utility not in ("contribution", "adaptable"):
            raise ValueError(f"utility must be 'contribution' or 'adaptable', got {utility!r}")
        if not 0 <= replacement_rate <= 1 or not 0 <= decay_rate < 1 or int(maturity_threshold) < 0:
            raise ValueError("CBP needs 0 <= replacement_rate <= 1, 0 <= decay_rate < 1, maturity_threshold >= 0")
        self.layers = list(layers)
        self.replacement_rate, self.maturity_threshold = float(replacement_rate), int(maturity_threshold)
        self.decay_rate, self.utility, self.reset_momentum = float(decay_rate), utility, bool(reset_momentum)
        self.absorb_mean = bool(absorb_mean)
        self.generator = generator
        self.replaced_total = 0
        self.states = []
        for l in self.layers:
            dev = l.incoming.weight.device
            branches = getattr(l.activation, "width_factor", 1)
            self.states.append({"age": torch.zeros(l.num_units, dtype=torch.long, device=dev),
                                "util": torch.zeros(l.num_units, device=dev),
                                "mean_act": torch.zeros(branches, l.num_units, device=dev),
                                "mean_col": torch.zeros(l.out_map.numel(), device=dev),
                                "accum": 0.0})

    @torch.no_grad()
    def step(self, features: list, optimizer) -> dict[int, torch.Tensor]:
        """One round from the post-activations ``features[i]`` of layer i (None: skip the layer) of the training
        forward pass; returns the replaced unit indices per layer index."""
        eta = self.decay_rate
        replaced = {}
        for i, (layer, h) in enumerate(zip(self.layers, features)):
            if h is None:
                continue
            st = self.states[i]
            act = layer.unit_activity(h).mean(0)  # (units,) batch mean of |h|
            st["age"] += 1
            if self.utility == "contribution":
                new = act * _mean_abs_out(layer)
            else:
                per_branch = _branches(h, st["mean_act"].shape[0])  # (B, branches, units, positions)
                st["mean_act"].mul_(eta).add_((1 - eta) * per_branch.mean((0, 3)))
                mean_hat = st["mean_act"] / (1 - eta ** st["age"].double()).float().clamp_min(1e-12)
                # batch (and position) mean of |h - h_bar|, branches summed as in unit_activity
                spread = (per_branch - mean_hat[None, :, :, None]).abs().mean((0, 3)).sum(0)
                new = _mean_abs_out(layer) * spread / _mean_abs_in(layer).clamp_min(1e-12)
            st["util"].mul_(eta).add_((1 - eta) * new)
            if self.absorb_mean:
                st["mean_col"].mul_(eta).add_((1 - eta) * _column_means(h, layer))
            eligible = torch.nonzero(st["age"] > self.maturity_threshold).squeeze(1)
            if eligible.numel() == 0:
                continue
            st["accum"] += self.replacement_rate * eligible.numel()
            n_new = min(int(math.floor(st["accum"])), eligible.numel())
            if n_new == 0:
                continue
            st["accum"] -= n_new
            corr = 1 - eta ** st["age"][eligible].double() if eta > 0 else torch.ones(eligible.numel(),
                                                                                      dtype=torch.double)
            u_hat = st["util"][eligible] / corr.float().to(st["util"].device).clamp_min(1e-12)
            idx = eligible[torch.topk(-u_hat, n_new).indices]
            if self.absorb_mean:
                _absorb_into_bias(layer, idx, st["mean_col"])
            reinit_units(layer, idx, optimizer, generator=self.generator, reset_momentum=self.reset_momentum)
            st["util"][idx], st["age"][idx] = 0, 0
            st["mean_act"][:, idx] = 0
            replaced[i] = idx
            self.replaced_total += n_new
        return replaced

    def state_dict(self) -> dict:
        return {"states": self.states, "replaced_total": self.replaced_total}

    def load_state_dict(self, state: dict) -> None:
        # Copies: the states are updated in place, which must not write into the dict they came from.
        states = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in state["states"]]
        for st in states:
            if st["mean_act"].dim() == 1:  # saved before the mean was kept per branch: one branch
                st["mean_act"] = st["mean_act"][None]
        self.states = states
        self.replaced_total = int(state.get("replaced_total", 0))


def _branches(h: torch.Tensor, branches: int) -> torch.Tensor:
    """Post-activations (B, branches * units[, H, W]) -> (B, branches, units, positions)."""
    return h.reshape(h.shape[0], branches, h.shape[1] // branches, -1)


def _column_means(h: torch.Tensor, layer) -> torch.Tensor:
    """Batch-mean activation per consumer input column (``out_map`` order; a conv channel's spatial mean repeated
    over the columns its flattened positions feed)."""
    per_feature = (h.flatten(2).mean(2) if h.dim() > 2 else h).mean(0)
    per = layer.out_map.numel() // max(per_feature.numel(), 1)
    return per_feature.repeat_interleave(per) if per > 1 else per_feature


def _absorb_into_bias(layer, idx: torch.Tensor, mean_col: torch.Tensor) -> None:
    out = layer.outgoing
    if isinstance(out, torch.nn.Linear) and out.bias is not None:
        cols = layer.out_map[idx].reshape(-1).to(out.weight.device)
        out.bias.add_(out.weight[:, cols] @ mean_col[cols])


class CBPAgent(SupervisedAgent):
    """Base learner plus generate-and-test replacement of low-utility mature units."""

    NAME = "cbp"
    SEED_STACKING = True
    DEFAULTS = dict(optimizer="adam", lr=1e-3, replacement_rate=1e-3, maturity_threshold=100, decay_rate=0.99,
                    utility="contribution", reset_momentum=True, absorb_mean=False)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        h = self.hparams
        self.gnt = GenerateAndTest(
            self.network.unit_layers, replacement_rate=h["replacement_rate"],
            maturity_threshold=h["maturity_threshold"], decay_rate=h["decay_rate"], utility=h["utility"],
            reset_momentum=h["reset_momentum"], absorb_mean=h["absorb_mean"],
            generator=torch.Generator(device=self.device).manual_seed(int(h["seed"]) + 1_000_003))
        self._features = None
        self._train_features = None

    @property
    def cbp_state(self) -> dict[str, dict]:
        """Per-layer state (age, util, mean_act (branches, units), accum) by layer name."""
        return {l.name: st for l, st in zip(self.gnt.layers, self.gnt.states)}

    @property
    def replaced_total(self) -> int:
        return self.gnt.replaced_total

    # Record the post-activations of the training forward pass (the one whose loss is backpropagated).
    def forward(self, x):
        if not self.records_statistics:
            return super().forward(x)
        with self.network.capture() as cap:
            out = super().forward(x)
        self._features = {k: v.detach() for k, v in cap.items()}
        return out

    def loss(self, logits, y):
        self._train_features = self._features  # the forward that produced these logits
        return super().loss(logits, y)

    def record_training_features(self, features):
        super().record_training_features(features)
        self._train_features = features

    def after_update(self, x, y):
        super().after_update(x, y)
        feats, self._train_features = self._train_features, None
        if feats:
            self.generate_and_test(feats)

    def generate_and_test(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One generate-and-test round from post-activation ``features`` by layer name; returns the replaced unit
        indices by layer name."""
        # hparams stay the source of truth for the schedule (they may be changed between steps)
        self.gnt.maturity_threshold = int(self.hparams["maturity_threshold"])
        self.gnt.replacement_rate = float(self.hparams["replacement_rate"])
        replaced = self.gnt.step([features.get(l.name) for l in self.gnt.layers], self.optimizer)
        return {self.gnt.layers[i].name: idx for i, idx in replaced.items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cbp": self.gnt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "cbp" in state:
            self.gnt.load_state_dict(state["cbp"])
