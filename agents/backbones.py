"""The papers' networks, built once and described uniformly for plasticity machinery.

Every backbone is a :class:`Backbone`: an ``nn.Module`` whose ``unit_layers`` list each hidden layer of units (an MLP
unit or a conv filter) with the module producing it (``incoming``), the optional norm after it, the activation whose
output is the unit's feature, and the module consuming it (``outgoing``, with ``out_map`` giving which input
columns / channels of ``outgoing`` each unit feeds). CBP, ReDo, the dormant-unit and rank diagnostics and NeuMoSync
all read that one description. The output layer is ``head`` and is never a unit layer.

Backbones (NeuMoSync Appendix C.1, C.5, F): ``mlp`` (100-100), ``cnn`` (8-16-32-64 conv + max-pool, then a linear
head), ``cnn_wide`` (256-128-64-32 conv + two FC 256, the forgetting experiments), ``resnet18``, ``resnet50``
(torchvision's, with a small-image stem) and ``vit`` (the compact ViT of Table 14).
Activations: ``relu``, ``tanh``, ``crelu`` (concat ReLU(z), ReLU(-z): width doubles), ``prelu`` (one learnable
negative slope per neuron), ``fourier`` (Deep Fourier features: concat sin z, cos z).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["Backbone", "UnitLayer", "build_backbone", "BACKBONES", "ACTIVATIONS", "CReLU", "FourierFeatures"]


class CReLU(nn.Module):
    """Concatenated ReLU along the feature / channel axis: [ReLU(z), ReLU(-z)] (Abbas et al. 2023)."""

    width_factor = 2

    def forward(self, z):
        return torch.cat([torch.relu(z), torch.relu(-z)], dim=1)


class FourierFeatures(nn.Module):
    """Deep Fourier features: [sin z, cos z] along the feature axis (Lewandowski et al., ICLR 2025)."""

    width_factor = 2

    def forward(self, z):
        return torch.cat([torch.sin(z), torch.cos(z)], dim=1)


def _prelu(width: int) -> nn.Module:
    return nn.PReLU(num_parameters=width, init=0.25)  # per-neuron slope; PyTorch's default init


ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda w: nn.ReLU(),
    "tanh": lambda w: nn.Tanh(),
    "crelu": lambda w: CReLU(),
    "prelu": _prelu,
    "fourier": lambda w: FourierFeatures(),
}


def _width_factor(act: nn.Module) -> int:
    return getattr(act, "width_factor", 1)


@dataclass
class UnitLayer:
    """One hidden layer of units. ``out_map[i]`` lists the input columns (Linear) or channels (Conv) of
    ``outgoing`` that unit i feeds (two per unit after CReLU / Fourier, H*W per channel after a flatten)."""

    name: str
    incoming: nn.Module
    outgoing: nn.Module
    activation: nn.Module
    out_map: torch.Tensor
    norm: nn.Module | None = None

    @property
    def num_units(self) -> int:
        return int(self.out_map.shape[0])

    def unit_activity(self, features: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-unit activity |h| (B, units) from this layer's activation output: spatial positions are
        averaged and the branches of a width-doubling activation summed."""
        f = features.abs()
        if f.dim() > 2:
            f = f.flatten(2).mean(2)
        k = _width_factor(self.activation)
        return f.view(f.shape[0], k, -1).sum(1) if k > 1 else f


def _out_map(units: int, factor: int, per_unit: int = 1) -> torch.Tensor:
    """Columns of the next layer fed by each unit: branch b of unit i occupies block (b*units + i)."""
    cols = []
    for b in range(factor):
        base = (b * units + torch.arange(units))[:, None] * per_unit
        cols.append(base + torch.arange(per_unit)[None])
    return torch.cat(cols, dim=1)


class Backbone(nn.Module):
    """A network plus the description of its hidden units; ``forward(x)`` takes float inputs (B, C, H, W)."""

    def __init__(self, body: nn.Module, head: nn.Module, unit_layers: list[UnitLayer], name: str):
        super().__init__()
        self.body = body
        self.head = head
        self.unit_layers = unit_layers
        self.kind = name

    @staticmethod
    def _make_hook(store, name):
        def hook(module, inputs, output):
            store[name] = output
        return hook

    def forward(self, x):
        return self.head(self.body(x))

    def features(self, x) -> torch.Tensor:
        """The penultimate representation (input of the head)."""
        return self.body(x)

    @contextlib.contextmanager
    def capture(self):
        """Within the block, forward passes record each unit layer's post-activation output (not detached) in the
        yielded dict, keyed by layer name."""
        # Hooks live only inside the block: hooks kept on the modules would be shared by deep copies (clone())
        # and record into the original's dict.
        store: dict[str, torch.Tensor] = {}
        handles = [layer.activation.register_forward_hook(self._make_hook(store, layer.name))
                   for layer in self.unit_layers]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()


class _Flatten(nn.Flatten):
    pass


def _mlp(input_shape, num_outputs, hidden=(100, 100), activation="relu", layernorm=False, **_):
    # An MLP is the conv net with no conv layers: flatten, then the dense stack.
    return _conv_net(input_shape, num_outputs, channels=(), fc=tuple(hidden), activation=activation,
                     layernorm=layernorm, name="mlp")


def _conv_net(input_shape, num_outputs, channels, fc=(), activation="relu", layernorm=False, name="cnn",
              batchnorm=False, **_):
    # A conv stack needs (C, H, W); with no conv layers (the MLP) any input shape is flattened.
    c_in, h, w = input_shape if channels else (int(math.prod(input_shape)), 1, 1)
    layers: list[nn.Module] = []
    convs, acts, norms = [], [], []
    for c in channels:
        conv = nn.Conv2d(c_in, c, 3, padding=1)
        norm = nn.BatchNorm2d(c) if batchnorm else (nn.GroupNorm(1, c) if layernorm else None)
        act = ACTIVATIONS[activation](c)
        layers += [conv] + ([norm] if norm is not None else []) + [act, nn.MaxPool2d(2, ceil_mode=True)]
        convs.append(conv), acts.append(act), norms.append(norm)
        c_in = c * _width_factor(act)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    layers.append(_Flatten())
    width = c_in * h * w
    spatial = h * w
    lin_layers, lin_acts, lin_norms = [], [], []
    for f in fc:
        lin = nn.Linear(width, f)
        norm = nn.LayerNorm(f) if layernorm else None
        act = ACTIVATIONS[activation](f)
        layers += [lin] + ([norm] if norm is not None else []) + [act]
        lin_layers.append(lin), lin_acts.append(act), lin_norms.append(norm)
        width = f * _width_factor(act)
    body = nn.Sequential(*layers)
    head = nn.Linear(width, num_outputs)
    units = []
    consumers = convs[1:] + ([lin_layers[0]] if lin_layers else [head])
    for i, conv in enumerate(convs):
        per = spatial if i == len(convs) - 1 else 1
        units.append(UnitLayer(f"conv{i}", conv, consumers[i], acts[i],
                               _out_map(channels[i], _width_factor(acts[i]), per), norms[i]))
    outs = lin_layers[1:] + [head]
    for i, lin in enumerate(lin_layers):
        units.append(UnitLayer(f"fc{i}", lin, outs[i], lin_acts[i], _out_map(fc[i], _width_factor(lin_acts[i])),
                               lin_norms[i]))
    return Backbone(body, head, units, name)


def _cnn(input_shape, num_outputs, channels=(8, 16, 32, 64), **kw):
    return _conv_net(input_shape, num_outputs, channels, **kw)


def _cnn_wide(input_shape, num_outputs, channels=(256, 128, 64, 32), fc=(256, 256), **kw):
    return _conv_net(input_shape, num_outputs, channels, fc=fc, name="cnn_wide", **kw)


def _resnet(depth):
    def build(input_shape, num_outputs, **_):
        import torchvision.models as tvm

        net = (tvm.resnet18 if depth == 18 else tvm.resnet50)(num_classes=num_outputs)
        if input_shape[-1] <= 64:  # small images: 3x3 stem, no max-pool (the usual CIFAR adaptation)
            net.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False)
        head = net.fc
        net.fc = nn.Identity()
        # Units whose reset cannot leak through a skip connection: the first conv of each residual block.
        units = []
        for lname in ("layer1", "layer2", "layer3", "layer4"):
            for bi, block in enumerate(getattr(net, lname)):
                tap, bn = _BlockTap(), block.bn1
                block.bn1 = nn.Sequential(bn, tap)
                block.relu = nn.ReLU()  # torchvision's in-place ReLU would overwrite the tap's output autograd needs
                # The tap is the unit's activation: the block must not apply its own ReLU after it (a modulated
                # activation, NeuMoSync's, passes negative values on to conv2). Same function for a ReLU tap.
                block.__class__ = _TappedBottleneck if hasattr(block, "conv3") else _TappedBasicBlock
                units.append(UnitLayer(f"{lname}.{bi}.conv1", block.conv1, block.conv2, tap,
                                       _out_map(block.conv1.out_channels, 1), bn))
        return Backbone(net, head, units, f"resnet{depth}")

    return build


class _BlockTap(nn.Module):
    """The activation of a residual block's first conv units, placed after its BN (``bn1 = Sequential(bn, tap)``):
    ReLU, read by unit-level tools (CBP, ReDo) and replaced by NeuMoSync's modulated activation."""

    def forward(self, x):
        return torch.relu(x)


class _TappedBasicBlock(nn.Module):
    """torchvision's BasicBlock forward (a block's class is swapped to this; its modules are unchanged) with the
    activation after ``bn1`` being the tap inside ``bn1`` instead of the block's ReLU."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.relu(out + identity)


class _TappedBottleneck(nn.Module):
    """torchvision's Bottleneck forward with the tap inside ``bn1`` as the activation of ``conv1``'s units."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _CompactViT(nn.Module):
    """The compact ViT of NeuMoSync Table 14: 16x16 conv patches to 32-d, projected to 64, learnable CLS, 16
    positional features per patch mapped to 64, 3 pre-LN blocks with 4 heads and FFN 256, no dropout."""

    def __init__(self, input_shape, patch=16, d_model=64, depth=3, heads=4, d_ff=256):
        super().__init__()
        c, h, w = input_shape
        patch = min(patch, h, w)
        self.patch_embed = nn.Conv2d(c, 32, patch, patch)
        self.proj = nn.Linear(32, d_model)
        g = (h // patch) * (w // patch)
        self.pos_features = nn.Parameter(torch.randn(g, 16) * 0.02)
        self.pos_map = nn.Linear(16, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        t = self.proj(self.patch_embed(x).flatten(2).transpose(1, 2)) + self.pos_map(self.pos_features)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.norm(self.encoder(t)[:, 0])


def _vit(input_shape, num_outputs, **kw):
    body = _CompactViT(input_shape, **{k: v for k, v in kw.items() if k in ("patch", "d_model", "depth", "heads", "d_ff")})
    return Backbone(body, nn.Linear(body.norm.normalized_shape[0], num_outputs), [], "vit")


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "cnn_wide": _cnn_wide,
    "resnet18": _resnet(18),
    "resnet50": _resnet(50),
    "vit": _vit,
}


def build_backbone(name: str, input_shape: tuple[int, ...], num_outputs: int, **options) -> Backbone:
    """Build backbone ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_outputs`` logits."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    act = options.get("activation", "relu")
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    for key in ("hidden", "channels", "fc"):
        if key in options:
            options[key] = _widths(key, options[key], allow_empty=key == "fc")
    return BACKBONES[name](tuple(input_shape), int(num_outputs), **options)


def _widths(key: str, value, allow_empty: bool) -> tuple[int, ...]:
    """Layer widths as a tuple of positive ints; anything else is an error naming the option."""
    widths = (value,) if isinstance(value, numbers.Integral) else value
    try:
        widths = tuple(widths)
    except TypeError:
        raise ValueError(f"{key} must be a sequence of positive layer widths, e.g. (100, 100); got {value!r}") from None
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1]
    if bad or (not widths and not allow_empty):
        what = f"widths {bad} are not positive integers" if bad else "no layer"
        raise ValueError(f"{key}={value!r}: {what}; every layer needs at least one unit, e.g. {key}=(100, 100)")
    return tuple(int(w) for w in widths)
