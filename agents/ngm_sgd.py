"""NGM-SGD: entropy-driven (noradrenergic) gain modulation, and the baselines the authors ran against it.

Rodriguez-Garcia, Ghosh and Ramaswamy, "Noradrenergic-inspired gain modulation attenuates the stability gap in
joint training" (arXiv 2507.14056; v3 "Dynamic gain neuromodulation attenuates the stability gap under joint
training"), as read in the authors' training scripts (shared/specs/methods.md section 1).

Mechanism (spec 1.1-1.3). Every gain-modulated layer computes ``z = (x W^T) * g + b``: a per-output-neuron gain
``g`` scales the rows of ``W`` only (never the bias, which is frozen at zero). ``g`` is a buffer: no gradient, no
optimiser, no weight decay. Before each *training* forward pass every gain layer updates

    g <- gamma * g + (1 - gamma) * g0 + eta * H_prev

with ``H_prev`` the batch-mean softmax entropy (nats) of the previous training step's logits (0 at the first step),
computed after that step's optimiser update from the logits it trained on. Evaluation applies ``g`` without updating
it; so does every auxiliary forward (``predict``, ER's answering pass, probes), because the update fires only on a
forward for which ``records_statistics`` holds, and at most once per training step. With replay (``"ngm_sgd+er"``)
the entropy is taken over the stream rows of the training batch only, so the replayed samples never drive the gain.

Networks (spec 1.2): on an MLP env, the authors' 784-400-400-10 MLP with every layer gain-modulated and frozen zero
biases; on a ResNet env, the slim ResNet-18 of Lopez-Paz & Ranzato (GEM; nf = 20, global average pooling, 160
features) with the gain on the linear head only (a gain on a BatchNorm-followed conv is a no-op), the head's weight
drawn from N(0, 0.05^2) and its bias frozen at zero.

Optimisers as in the scripts (spec 1.4): NGM-SGD plain SGD lr 0.01 (on the ResNet: backbone momentum 0.9, head
momentum 0, ``head_momentum``); ``sgd`` (momentum 0), ``momentum_sgd`` (0.9) and ``adam`` (lr 0.01, the scripts'
value) train the same networks without gain dynamics. Ablations of v3 (spec 1.8): ``momentum_sgd_reset`` (optimiser
state cleared at every task switch, an oracle), ``ngm_entropy_lr`` (the same gain dynamics drive the learning rate,
``lr_t = lr * g_t ** lr_power``, instead of the weights; the exponent is our reading: 2 gives the step NGM takes in
W_eff coordinates, spec 1.5) and ``ngm_fixed_gain`` (gains held at g0 with NGM's optimiser settings).

Theory (spec 1.5): ``dL/dW_ij = g_i dL/dW_eff,ij``, so one SGD step on W moves ``W_eff = diag(g) W`` by
``lr * g_i^2 * dL/dW_eff``; under a constant entropy H the gain settles at ``g0 + eta * H / (1 - gamma)``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.backbones import Backbone, UnitLayer
from agents.base import SupervisedAgent

__all__ = ["GainLinear", "SlimResNet18", "build_authors_network", "gain_layers", "AuthorsNetworkAgent",
           "SGDAgent", "MomentumSGDAgent", "AdamAgent", "MomentumSGDResetAgent", "NGMSGDAgent",
           "NGMEntropyLRAgent", "NGMFixedGainAgent", "mean_entropy"]


class GainLinear(nn.Module):
    """``z = (x W^T) * g + b``: a linear layer whose output neuron i is scaled by the gain ``g_i``.

    ``weight`` is the only parameter. ``gains`` (initialised at ``g0``) and the zero ``bias`` are buffers: they are
    in the state dict but get no gradient and are never seen by an optimiser (spec 1.9, pitfalls 2 and 5: the gain
    scales W only). ``weight_std``: None gives PyTorch's ``nn.Linear`` initialisation, else N(0, weight_std^2)."""

    def __init__(self, in_features: int, out_features: int, g0: float = 1.0, weight_std: float | None = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        if weight_std is None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        else:
            nn.init.normal_(self.weight, 0.0, float(weight_std))
        self.register_buffer("bias", torch.zeros(self.out_features))
        self.register_buffer("gains", torch.full((self.out_features,), float(g0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) * self.gains + self.bias

    @torch.no_grad()
    def effective_weight(self) -> torch.Tensor:
        """``W_eff = diag(g) W``, the weights the forward pass applies."""
        return self.gains[:, None] * self.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gains=per-neuron (buffer)"


class _BasicBlock(nn.Module):
    """The slim ResNet's residual block (GEM's ``BasicBlock``): two 3x3 convs with BN, a 1x1 conv + BN shortcut
    when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SlimResNet18(nn.Module):
    """The reduced ResNet-18 of GEM (Lopez-Paz & Ranzato 2017) that the NGM scripts use: a 3x3 stem of ``nf``
    filters, four stages of two blocks with nf, 2nf, 4nf, 8nf filters (strides 1, 2, 2, 2), global average pooling:
    ``8 * nf`` features (160 for nf = 20) for any input size (32x32 CIFAR, 84x84 mini-ImageNet)."""

    def __init__(self, in_channels: int = 3, nf: int = 20):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU())
        stages, c = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            width = nf * 2 ** i
            stages += [_BasicBlock(c, width, stride), _BasicBlock(width, width, 1)]
            c = width
        self.stages = nn.Sequential(*stages)
        self.out_features = c

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_authors_network(backbone: str, input_shape: tuple[int, ...], num_outputs: int, *,
                          hidden=(400, 400), nf: int = 20, g0: float = 1.0) -> Backbone:
    """The NGM scripts' network for ``backbone`` as a :class:`agents.backbones.Backbone` whose gain layers are
    :class:`GainLinear`: ``"mlp"`` (flatten, ``hidden`` ReLU layers, every layer gain-modulated, zero frozen
    biases) or ``"resnet18"`` (:class:`SlimResNet18` with a gain-modulated head, weight N(0, 0.05^2))."""
    if backbone == "mlp":
        widths = (hidden,) if isinstance(hidden, numbers.Integral) else tuple(hidden)
        if not widths:
            raise ValueError("hidden must name at least one layer width for the NGM MLP, e.g. (400, 400)")
        widths = tuple(_positive_int("hidden width", w) for w in widths)
        width = int(math.prod(input_shape))
        layers, linears, acts = [nn.Flatten()], [], []
        for w in widths:
            lin, act = GainLinear(width, w, g0), nn.ReLU()
            layers += [lin, act]
            linears.append(lin), acts.append(act)
            width = w
        head = GainLinear(width, num_outputs, g0)
        outs = linears[1:] + [head]
        units = [UnitLayer(f"fc{i}", lin, outs[i], acts[i], torch.arange(widths[i])[:, None])
                 for i, lin in enumerate(linears)]
        return Backbone(nn.Sequential(*layers), head, units, "ngm_mlp")
    if backbone == "resnet18":
        if len(input_shape) != 3:
            raise ValueError(f"the slim ResNet-18 needs image inputs (C, H, W), got shape {tuple(input_shape)}")
        body = SlimResNet18(int(input_shape[0]), _positive_int("nf", nf))
        return Backbone(body, GainLinear(body.out_features, num_outputs, g0, weight_std=0.05), [], "ngm_resnet18")
    raise ValueError(f"the NGM agents run the authors' networks: backbone 'mlp' (784-400-400-10 MLP) or 'resnet18' "
                     f"(slim ResNet-18, nf=20); got {backbone!r}")


def gain_layers(network: nn.Module) -> list[GainLinear]:
    """The :class:`GainLinear` layers of ``network`` in forward order."""
    return [m for m in network.modules() if isinstance(m, GainLinear)]


def mean_entropy(logits: torch.Tensor) -> float:
    """Batch mean of the Shannon entropy (nats) of ``softmax(logits)``: ``Categorical(logits=).entropy().mean()``."""
    with torch.no_grad():
        logp = F.log_softmax(logits.detach().float(), dim=1)
        return float(-(logp.exp() * logp).sum(1).mean())


class AuthorsNetworkAgent(SupervisedAgent):
    """The networks and optimisers of the NGM scripts, without gain dynamics (gains stay at ``g0``).

    Extra hyperparameters: ``nf`` (slim ResNet width), ``g0``, ``head_momentum`` (None: ``momentum``; the SGD
    momentum of the head's parameter group), ``momentum_reset`` (clear the optimiser state at every task switch
    after the first: the v3 oracle ablation). ``hidden`` defaults to the scripts' (400, 400)."""

    NAME = "ngm_network"
    DEFAULTS = dict(hidden=(400, 400), optimizer="sgd", lr=1e-2, momentum=0.0, nf=20, g0=1.0, head_momentum=None,
                    momentum_reset=False)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        h = self.hparams
        if not isinstance(h["momentum_reset"], bool):
            raise TypeError(f"momentum_reset must be True or False, got {h['momentum_reset']!r}")

    def build_network(self) -> nn.Module:
        h = self.hparams
        g0 = h["g0"]
        if isinstance(g0, bool) or not isinstance(g0, numbers.Real) or not g0 > 0:
            raise ValueError(f"g0 must be a positive number, got {g0!r}")
        name = h["backbone"] or self.env_spec["backbone"]
        return build_authors_network(name, self.env_spec["input_shape"], self.num_outputs, hidden=h["hidden"],
                                     nf=h["nf"], g0=float(g0))

    def build_optimizer(self) -> torch.optim.Optimizer:
        h = self.hparams
        head_m = h["head_momentum"]
        if head_m is None or h["optimizer"] != "sgd" or head_m == h["momentum"]:
            if head_m is not None and h["optimizer"] != "sgd":
                raise ValueError(f"head_momentum applies to optimizer='sgd' only, got optimizer={h['optimizer']!r}")
            return super().build_optimizer()
        if isinstance(head_m, bool) or not isinstance(head_m, numbers.Real) or head_m < 0:
            raise ValueError(f"head_momentum must be a number >= 0 or None, got {head_m!r}")
        train = set(map(id, self.parameters_to_optimize()))
        head = [p for p in self.network.head.parameters() if id(p) in train]
        head_ids = set(map(id, head))
        body = [p for p in self.parameters_to_optimize() if id(p) not in head_ids]
        groups = [{"params": body}, {"params": head, "momentum": float(head_m)}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=h["lr"], momentum=h["momentum"],
                               weight_decay=h["weight_decay"], foreach=True)

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.hparams["momentum_reset"] and self.num_updates > 0:
            self.reset_optimizer()

    def gains(self) -> torch.Tensor:
        """Every gain of the network concatenated (one entry per gain-modulated output neuron)."""
        return torch.cat([m.gains for m in gain_layers(self.network)])


class SGDAgent(AuthorsNetworkAgent):
    """Plain SGD (lr 0.01, momentum 0) on the authors' network: the scripts' "SGD" baseline."""

    NAME = "sgd"


class MomentumSGDAgent(AuthorsNetworkAgent):
    """SGD with momentum 0.9 (lr 0.01) on the authors' network: the scripts' "MSGD" baseline."""

    NAME = "momentum_sgd"
    DEFAULTS = dict(momentum=0.9)


class MomentumSGDResetAgent(MomentumSGDAgent):
    """Momentum-SGD whose optimiser state is cleared at every task switch (v3's oracle ablation)."""

    NAME = "momentum_sgd_reset"
    DEFAULTS = dict(momentum_reset=True)


class AdamAgent(AuthorsNetworkAgent):
    """Adam at lr 0.01 (the scripts' value, high for Adam) on the authors' network."""

    NAME = "adam"
    DEFAULTS = dict(optimizer="adam", lr=1e-2)


class NGMSGDAgent(AuthorsNetworkAgent):
    """NGM-SGD (see the module docstring). Hyperparameters: ``gamma`` (0.9), ``g0`` (1), ``eta`` (per benchmark,
    :mod:`agents.paper_hparams`; 0.4 is Split MNIST's), ``gain_mode`` (``"weights"``: the method; ``"lr"``: the
    dynamics scale the learning rate by ``g ** lr_power`` instead; ``"fixed"``: gains held at g0).

    ``gain_on``: which layers are modulated (``"auto"``: every layer of the MLP, the head of the ResNet; ``"all"``;
    ``"head"``).

    Traces (``trace()``): ``gain`` (the mean modulated gain, or the learning-rate gain in ``"lr"`` mode) after the last
    update and ``entropy`` (H of the last training step, nats)."""

    NAME = "ngm_sgd"
    DEFAULTS = dict(gamma=0.9, eta=0.4, gain_mode="weights", lr_power=2.0, gain_on="auto")
    GAIN_MODES = ("weights", "lr", "fixed")
    GAIN_ON = ("auto", "all", "head")

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        h = self.hparams
        gamma, eta, power = h["gamma"], h["eta"], h["lr_power"]
        for name, value in (("gamma", gamma), ("eta", eta), ("lr_power", power)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1) (the gain's decay per step), got {gamma!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (the entropy drive's scale), got {eta!r}")
        if h["gain_mode"] not in self.GAIN_MODES:
            raise ValueError(f"gain_mode must be one of {self.GAIN_MODES}, got {h['gain_mode']!r}")
        if h["gain_on"] not in self.GAIN_ON:
            raise ValueError(f"gain_on must be one of {self.GAIN_ON}, got {h['gain_on']!r}")
        self._drive: float | None = 0.0  # H_prev for the next training forward (0 at the first step); None: spent
        self.last_entropy = 0.0
        self.lr_gain = float(h["g0"])  # the gain of gain_mode="lr" (the layers' gains stay at g0 there)
        self._stream_rows: int | None = None

    # ------------------------------------------------------------------ the gain update
    def modulated_layers(self) -> list[GainLinear]:
        """The layers whose gains follow the dynamics: every gain layer (``gain_on="all"``; ``"auto"`` on the
        MLP) or the head only (``"head"``; ``"auto"`` on the ResNet, whose only gain layer is the head). The
        others keep g0."""
        layers = gain_layers(self.network)
        return [self.network.head] if self.hparams["gain_on"] == "head" else layers

    def step_gain(self, entropy: float) -> None:
        """One application of ``g <- gamma g + (1 - gamma) g0 + eta H`` with ``H = entropy`` (to every gain layer,
        or to the learning-rate gain in ``"lr"`` mode; nothing in ``"fixed"`` mode)."""
        h = self.hparams
        mode = h["gain_mode"]
        gamma, g0, eta = float(h["gamma"]), float(h["g0"]), float(h["eta"])
        if mode == "weights":
            with torch.no_grad():
                for layer in self.modulated_layers():
                    layer.gains.mul_(gamma).add_((1.0 - gamma) * g0 + eta * float(entropy))
        elif mode == "lr":
            self.lr_gain = gamma * self.lr_gain + (1.0 - gamma) * g0 + eta * float(entropy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Before the training forward pass, once per step, with the previous step's entropy (pitfall 1); never in
        # eval mode, without gradients or in an auxiliary pass (pitfall 3).
        if self._drive is not None and self.records_statistics:
            self.step_gain(self._drive)
            self._drive = None
        return super().forward(x)

    def training_batch(self, x, y):
        self._stream_rows = int(x.shape[0])  # replay (ER) appends after these rows
        return super().training_batch(x, y)

    def loss(self, logits, y):
        rows = self._stream_rows if self._stream_rows is not None else logits.shape[0]
        self._step_logits = logits[:rows].detach()
        return super().loss(logits, y)

    def before_update(self) -> None:
        super().before_update()
        if self.hparams["gain_mode"] == "lr":
            base = float(self.hparams["lr"]) * self.lr_gain ** float(self.hparams["lr_power"])
            for group in self.optimizer.param_groups:
                group["lr"] = base

    def after_update(self, x, y) -> None:
        super().after_update(x, y)
        logits = getattr(self, "_step_logits", None)
        if logits is not None:
            # After optimizer.step(), from the logits this step trained on (pre-update weights): spec 1.1.
            self.last_entropy = mean_entropy(logits)
            self._drive = self.last_entropy
        self._step_logits, self._stream_rows = None, None

    # ------------------------------------------------------------------ observability and state
    def current_gain(self) -> float:
        """The gain the next forward pass applies (the mean over gain neurons; in ``"lr"`` mode the lr gain)."""
        if self.hparams["gain_mode"] == "lr":
            return float(self.lr_gain)
        return float(torch.cat([m.gains for m in self.modulated_layers()]).mean())

    def trace(self) -> dict[str, float]:
        return {"gain": self.current_gain(), "entropy": float(self.last_entropy)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ngm": {"drive": self._drive, "last_entropy": float(self.last_entropy),
                                                "lr_gain": float(self.lr_gain)}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        ngm = state["ngm"]
        self._drive = None if ngm["drive"] is None else float(ngm["drive"])
        self.last_entropy, self.lr_gain = float(ngm["last_entropy"]), float(ngm["lr_gain"])


class NGMEntropyLRAgent(NGMSGDAgent):
    """v3 ablation: the entropy drives the learning rate directly (``lr_t = lr * g_t ** lr_power``), the weights are
    not gain-modulated."""

    NAME = "ngm_entropy_lr"
    DEFAULTS = dict(gain_mode="lr")


class NGMFixedGainAgent(NGMSGDAgent):
    """v3 ablation: the gains held at g0 (NGM's optimiser settings, no dynamics)."""

    NAME = "ngm_fixed_gain"
    DEFAULTS = dict(gain_mode="fixed")
