"""NeuMoSync (neuromodulatory control for plasticity): the network and the agent.

:class:`NeuMoSyncNetwork` holds the MainNetwork theta (a backbone made modulatable in place, with the
ConsolidatedNetwork phi as buffers of its layers), the neuron features and the NeuroSync controller. Its ``forward``
runs the controller on the batch, hands the coefficients to the modulated layers and runs the InferenceNetwork::

    w_i = a_SM,i theta_i + a_WC,i phi_i,   a_SM = 1 + delta a_SM (Appendix I.2)
    out_i = PReLU_{a_AL,i}(w_i . z_i) + a_ARM,i

with coefficients per neuron and per input sample. :class:`NeuMoSyncAgent` trains theta, the controller and the
learnable features end to end with the base agent's step; its ``after_update`` hook then updates the neuron activity
EMAs and phi <- beta phi + (1 - beta) theta (Algorithm 1, Appendix J).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from agents.base import SupervisedAgent, seeded
from agents.neumosync.controller import build_controller
from agents.neumosync.layers import COEFFICIENTS, ModulationContext, modulate_backbone, unit_stats

__all__ = ["NeuMoSyncNetwork", "NeuMoSyncAgent"]

#: a_SM is emitted as a delta around 1 (I.2); the other three are used as emitted. Off mechanisms take these values.
_OFFSET = torch.tensor([1.0, 0.0, 0.0, 0.0])
_SUPPORTED = ("mlp", "cnn", "cnn_wide", "resnet18", "resnet50")


def _parse_coefficients(value) -> tuple[str, ...]:
    names = tuple(str(c).lower() for c in ((value,) if isinstance(value, str) else value))
    bad = [c for c in names if c not in COEFFICIENTS]
    if bad or not names:
        raise ValueError(f"coefficients must be a non-empty subset of {COEFFICIENTS}, got {value!r}")
    return names


class _CompiledForward:
    """``torch.compile`` of :meth:`NeuMoSyncNetwork._forward`, built on first use and held outside module state
    (copies and pickles start without it and compile their own). If compiling or running the compiled forward fails,
    it warns once, runs the eager forward and stays eager for this network."""

    def __init__(self):
        self.fn = None
        self.failed = False

    def __call__(self, net: "NeuMoSyncNetwork", x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return net._forward(x)
        if self.fn is None:
            self.fn = torch.compile(net._forward)
        try:
            return self.fn(x)
        except Exception as err:  # a compiler failure, not the model's: the eager forward below re-raises the latter
            out = net._forward(x)
            self.failed = True
            warnings.warn(f"NeuMoSync: torch.compile failed ({type(err).__name__}: {err}); running eager",
                          RuntimeWarning, stacklevel=3)
            return out

    def __deepcopy__(self, memo):
        return _CompiledForward()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


class NeuMoSyncNetwork(nn.Module):
    """MainNetwork + ConsolidatedNetwork + neuron features + NeuroSync controller, one module.

    It reads like the backbone it wraps (``unit_layers``, ``capture``, ``head``, ``features``), so plasticity
    diagnostics work unchanged; ``forward`` is the InferenceNetwork's.
    """

    def __init__(self, backbone: nn.Module, input_shape, controller: str = "transformer", feature_dim: int = 4,
                 coefficients=COEFFICIENTS, global_plasticity: bool = False, feature_ema: float = 0.99,
                 fused: bool = True, compile: bool = False, **controller_options):
        super().__init__()
        self.ctx = ModulationContext()
        self.backbone = backbone
        layers = modulate_backbone(backbone, self.ctx)
        self.layer_names = [name or "layer" for name, _, _ in layers]
        # The coefficients that act in each layer: a_AL and a_ARM act through its modulated activation, which the
        # head (logits) does not have.
        self.layer_coefficients = [COEFFICIENTS if act is not None else COEFFICIENTS[:2] for _, _, act in layers]
        self._layers = [m for _, m, _ in layers]  # slot order (module objects survive deep copies and .to())
        self.layer_sizes = [int(m.weight.shape[0]) for _, m, _ in layers]
        self.num_neurons = sum(self.layer_sizes)
        self.coefficients = _parse_coefficients(coefficients)
        self.global_plasticity = bool(global_plasticity)
        self.feature_ema = float(feature_ema)
        # Neuron features: learnable (k), position (layer, index in layer; both in [0, 1]), activity EMA (3).
        self.learnable = nn.Parameter(torch.randn(self.num_neurons, int(feature_dim)) * 0.1)
        pos = []
        for li, n in enumerate(self.layer_sizes):
            pos.append(torch.stack([torch.full((n,), li / max(1, len(self.layer_sizes) - 1)),
                                    torch.arange(n) / max(1, n - 1)], dim=1))
        self.register_buffer("position", torch.cat(pos).float())
        self.register_buffer("activity", torch.zeros(self.num_neurons, 3))
        self.controller = build_controller(controller, self.num_neurons, int(feature_dim) + 5, input_shape,
                                           query_dim=int(feature_dim) + 2, **controller_options)
        if hasattr(self.controller, "fused"):
            self.controller.fused = bool(fused)
        self.compile = bool(compile)
        self._compiled = _CompiledForward()
        mask = torch.tensor([c in self.coefficients for c in COEFFICIENTS])
        self.register_buffer("_mask", mask, persistent=False)
        self.register_buffer("_offset", _OFFSET.clone(), persistent=False)
        self.last_alphas: torch.Tensor | None = None  # (B or 1, N, 4), the last training pass, detached
        # Set by agents.base.frozen_statistics around forwards that are not the training step's (replay gradients,
        # probes): those must not feed the activity statistics or the trace.
        self.statistics_frozen = False

    # ------------------------------------------------------------------ backbone view
    @property
    def unit_layers(self):
        return self.backbone.unit_layers

    @property
    def head(self):
        return self.backbone.head

    @property
    def kind(self):
        return self.backbone.kind

    def capture(self):
        return self.backbone.capture()

    # ------------------------------------------------------------------ controller
    def neuron_features(self) -> torch.Tensor:
        """(N, k + 5): learnable vector, position, activity EMA (signed log scale keeps it bounded)."""
        act = torch.sign(self.activity) * torch.log1p(self.activity.abs())
        return torch.cat([self.learnable, self.position, act], dim=1)

    def alphas(self, x: torch.Tensor) -> torch.Tensor:
        """Effective coefficients (B or 1, N, 4) in the order (a_SM, a_WC, a_AL, a_ARM); off mechanisms hold their
        neutral value (1, 0, 0, 0)."""
        # 'none' reads no features (its table is the coefficients): skip building them
        raw = self.controller(self.neuron_features() if self.controller.uses_features else None, x)
        if self.global_plasticity:  # G.4: one a_SM and one a_WC for the whole network (per sample)
            raw = torch.cat([raw[..., :2].mean(1, keepdim=True).expand(-1, raw.shape[1], -1), raw[..., 2:]], -1)
        if len(self.coefficients) == len(COEFFICIENTS):
            return raw + self._offset
        return torch.where(self._mask, raw + self._offset, self._offset)

    def _split(self, alphas: torch.Tensor) -> dict[int, tuple]:
        """Per slot, the tuple (sm, wc, al, arm) of (B or 1, units) views; None for mechanisms that are off."""
        on = [c in self.coefficients for c in COEFFICIENTS]
        return {slot: tuple(a if keep else None for a, keep in zip(part.unbind(-1), on))
                for slot, part in enumerate(alphas.split(self.layer_sizes, dim=1))}

    @contextlib.contextmanager
    def _modulated(self, x):
        alphas = self.alphas(x)
        record = self.training and not getattr(self, "statistics_frozen", False)
        if record:
            self.last_alphas = alphas.detach()
        self.ctx.alphas, self.ctx.record = self._split(alphas), record
        try:
            yield
        finally:
            self.ctx.alphas, self.ctx.record = None, False

    def forward(self, x):
        if self.compile:
            return self._compiled(self, x)
        return self._forward(x)

    def _forward(self, x):
        with self._modulated(x):
            return self.backbone(x)

    def features(self, x):
        """The InferenceNetwork's penultimate representation."""
        with self._modulated(x):
            return self.backbone.features(x)

    # ------------------------------------------------------------------ slow state
    @torch.no_grad()
    def consolidate(self, beta: float) -> None:
        """phi <- beta phi + (1 - beta) theta for every modulated layer (one foreach call)."""
        thetas, phis = [], []
        for m in self._layers:
            thetas.append(m.weight), phis.append(m.phi_weight)
            if m.bias is not None:
                thetas.append(m.bias), phis.append(m.phi_bias)
        torch._foreach_lerp_(phis, thetas, 1.0 - float(beta))

    @torch.no_grad()
    def update_activity(self) -> None:
        """Fold the last training pass's per-unit statistics into the activity EMA."""
        stats = self.ctx.stats
        if len(stats) != len(self.layer_sizes):
            return
        ys = [stats[s] for s in range(len(self.layer_sizes))]
        if all(y.dim() == 2 for y in ys) and len({y.shape[0] for y in ys}) == 1:
            new = unit_stats(torch.cat(ys, 1))  # every layer in one reduction (MLP bodies)
        else:
            new = torch.cat([unit_stats(y) for y in ys])
        self.activity.lerp_(new, 1.0 - self.feature_ema)
        stats.clear()

    def overhead_parameters(self) -> int:
        """Parameters NeuMoSync adds to the MainNetwork: controller and learnable neuron features."""
        return sum(p.numel() for p in self.controller.parameters()) + self.learnable.numel()

    def main_parameters(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)


class NeuMoSyncAgent(SupervisedAgent):
    """NeuMoSync (Appendix J): a controller modulates every neuron of the MainNetwork per input.

    Hyperparameters beyond the base agent's (defaults: Table 7, Random-Label MNIST: Adam, lr 1e-3, e = 128):

    - ``beta`` (0.999): consolidation rate of phi;
    - ``controller``: ``auto`` (default: ``sparse`` on ResNet-18 / ResNet-50, ``transformer`` otherwise, see
      :meth:`default_controller`), ``transformer`` (paper), ``conv1d``, ``mlp`` (Table 2), ``sparse`` (E.1, for
      ResNets; ``sparse_fraction`` K, ``auto``: 0.1 on ResNet-18, 0.01 on ResNet-50), ``unconditioned`` (G.5),
      ``none`` (per-neuron learnable coefficients, 3.4.1) or ``lowrank`` (not the paper's: the encoder runs once
      per batch on neuron tokens and the image enters through a rank-d read-out, which costs less per step; see
      :class:`agents.neumosync.controller.LowRankController`; its cost is measured by benchmarks/neumosync_step.py
      and its accuracy by examples/neumosync_vs_base.py);
    - ``input_conditioned`` (True): image patch tokens enter the controller (False: G.5);
    - ``d_model`` (14), ``d_ff`` (128, the paper's e), ``heads`` (2), ``patch_size`` (5), ``feature_dim`` (k = 4);
    - ``coefficients``: the mechanisms on, a subset of ``("sm", "wc", "al", "arm")`` ('w/o' and 'only' ablations);
    - ``global_plasticity`` (False): one a_SM and one a_WC for all neurons (G.4);
    - ``reset_controller`` (False): re-initialise the controller at each task end (G.2);
    - ``feature_ema`` (0.99): rate of the neuron activity statistics; ``mlp_hidden``: the MLP controller's width;
    - ``neutral_init`` (True): the controller's output layer starts at zero, so training starts from the neutral
      coefficients a_SM = 1, a_WC = a_AL = a_ARM = 0 (I.2, Figure 4B; False: PyTorch's default initialisation, whose
      shared offsets let early task switches collapse the network to chance, see
      :meth:`agents.neumosync.controller._Base.neutralise`).

    The backbone's hidden activations become the modulated PReLU, so ``activation`` must be ``relu``.

    Stability: the paper does not clip gradients, so neither does the default. The loss spike at a task switch can
    send the coefficients to w ~ 0, after which the task stays at chance; the base agent's ``max_grad_norm`` (e.g.
    1.0) clips that spike. examples/neumosync_vs_base.py measures both settings.
    """

    NAME = "neumosync"
    DEFAULTS = dict(optimizer="adam", lr=1e-3, beta=0.999, controller="auto", input_conditioned=True,
                    d_model=14, d_ff=128, heads=2, patch_size=5, feature_dim=4, coefficients=COEFFICIENTS,
                    global_plasticity=False, reset_controller=False, sparse_fraction="auto", feature_ema=0.99,
                    mlp_hidden=32, neutral_init=True, fused=True, compile=False)

    @staticmethod
    def default_controller(backbone: str) -> tuple[str, float]:
        """The paper's controller and sparse fraction K for a backbone (Section 3.6, Appendix E.1): the sparse
        encoder-decoder with K = 0.1 on ResNet-18 and K = 0.01 on ResNet-50 (4,810 and ~26,000 neurons, too many for
        full self-attention), the full transformer otherwise (K then only matters if ``controller="sparse"``)."""
        if backbone == "resnet18":
            return "sparse", 0.1
        if backbone == "resnet50":
            return "sparse", 0.01
        return "transformer", 0.1

    def build_network(self) -> nn.Module:
        h = self.hparams
        name = h["backbone"] or self.env_spec["backbone"]
        if name not in _SUPPORTED:
            raise ValueError(f"NeuMoSync supports backbones {_SUPPORTED}, got {name!r}")
        # "auto" resolves by backbone; the resolved values are what hparams record (and what fresh() rebuilds).
        controller, fraction = self.default_controller(name)
        if h["controller"] == "auto":
            h["controller"] = controller
        if h["sparse_fraction"] == "auto":
            h["sparse_fraction"] = fraction
        if h["activation"] not in ("relu", "prelu"):
            raise ValueError(f"NeuMoSync replaces the activation by its modulated PReLU: use activation='relu', "
                             f"got {h['activation']!r}")
        if not 0.0 <= float(h["beta"]) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {h['beta']}")
        backbone = super().build_network()
        return NeuMoSyncNetwork(
            backbone, self.env_spec["input_shape"], controller=h["controller"], feature_dim=h["feature_dim"],
            coefficients=h["coefficients"], global_plasticity=h["global_plasticity"], feature_ema=h["feature_ema"],
            fused=h["fused"], compile=h["compile"],
            d=h["d_model"], d_ff=h["d_ff"], heads=h["heads"], patch=h["patch_size"],
            input_conditioned=h["input_conditioned"], sparse_fraction=h["sparse_fraction"],
            mlp_hidden=h["mlp_hidden"], seed=h["seed"], neutral_init=h["neutral_init"])

    # ------------------------------------------------------------------ hooks
    def after_update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().after_update(x, y)
        self.network.update_activity()
        self.network.consolidate(self.hparams["beta"])

    def on_task_switch(self, task_id) -> None:
        if self.hparams["reset_controller"] and self.num_updates > 0:
            self.reset_controller()
        super().on_task_switch(task_id)

    def reset_controller(self) -> None:
        """Re-initialise the controller (seeded by the update count) and drop its optimiser state (G.2)."""
        ctrl = self.network.controller
        with seeded(int(self.hparams["seed"]) * 100003 + self.num_updates):
            ctrl.reset_parameters()
        for p in ctrl.parameters():
            self.optimizer.state.pop(p, None)

    # ------------------------------------------------------------------ signals for evaluation callbacks
    def trace(self) -> dict[str, float]:
        """Per-layer means of the four coefficients over the last training step's batch and the layer's neurons
        (``alpha_sm/<layer>``, ...), plus the mean |a_SM| (``alpha_sm_abs/<layer>``, Figure 4A). a_AL and a_ARM are
        left out for layers without an activation (the head), where they have no effect. Empty before the first
        step."""
        a = self.network.last_alphas
        if a is None:
            return {}
        out, start = {}, 0
        net = self.network
        for name, n, acting in zip(net.layer_names, net.layer_sizes, net.layer_coefficients):
            part = a[:, start:start + n]
            means = part.mean((0, 1)).tolist()
            for c, v in zip(COEFFICIENTS, means):
                if c in acting:
                    out[f"alpha_{c}/{name}"] = float(v)
            out[f"alpha_sm_abs/{name}"] = float(part[..., 0].abs().mean())
            start += n
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Distributions of the coefficients at the last training step (Figures 4C, 14, 15): for each coefficient and
        layer, the per-neuron mean over the batch (``alpha[c][layer]``, shape (units,)), and the per-sample values
        (``samples[c][layer]``, shape (B or 1, units)); ``activity`` the neurons' activity EMA per layer. As in
        :meth:`trace`, a_AL and a_ARM are left out for layers without an activation."""
        a = self.network.last_alphas
        out: dict[str, Any] = {"layers": list(self.network.layer_names), "units": list(self.network.layer_sizes),
                               "alpha": {c: {} for c in COEFFICIENTS}, "samples": {c: {} for c in COEFFICIENTS},
                               "activity": {}, "step": self.num_updates, "task_id": self.task_id}
        start = 0
        net = self.network
        act = net.activity.detach().cpu().numpy()
        for name, n, acting in zip(net.layer_names, net.layer_sizes, net.layer_coefficients):
            out["activity"][name] = act[start:start + n].copy()
            if a is not None:
                part = a[:, start:start + n].cpu().numpy()
                for j, c in enumerate(COEFFICIENTS):
                    if c not in acting:
                        continue
                    out["alpha"][c][name] = part[..., j].mean(0)
                    out["samples"][c][name] = part[..., j].copy()
            start += n
        return out

    def parameter_overhead(self) -> dict[str, float]:
        """Table 18: MainNetwork parameters, NeuMoSync's added parameters, and their share of the whole network."""
        base, extra = self.network.main_parameters(), self.network.overhead_parameters()
        return {"base": base, "overhead": extra, "share": extra / (base + extra)}
