"""The InferenceNetwork's layers: modulated Linear / Conv2d and the modulated PReLU + offset.

A MainNetwork (a :class:`agents.backbones.Backbone`) is turned into the InferenceNetwork *in place* by swapping the
class of its ``nn.Linear`` / ``nn.Conv2d`` modules and of its unit activations (:func:`modulate_backbone`). Parameters,
hooks and the ``unit_layers`` description all stay valid; each swapped layer gains the ConsolidatedNetwork copy of its
weights as buffers (``phi_weight``, ``phi_bias``) and reads its coefficients from a shared
:class:`ModulationContext` that the controller fills before every forward pass.

Per-sample weights are never built. For neuron i with per-sample coefficients (a_SM, a_WC)::

    y_i = (a_SM,i theta_i + a_WC,i phi_i) . z = a_SM,i (theta_i . z) + a_WC,i (phi_i . z)

and both products come from one matmul (or one convolution) with the stacked weights [theta; phi].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ModulationContext", "ModulatedLinear", "ModulatedConv2d", "ModulatedActivation", "modulate_backbone",
           "modulated_layers", "COEFFICIENTS"]

#: Order of the four coefficients along the controller's last axis.
COEFFICIENTS = ("sm", "wc", "al", "arm")


class ModulationContext:
    """Coefficients for the current forward pass, shared by every modulated module of one network.

    ``alphas[slot]`` is a dict ``{"sm", "wc", "al", "arm"} -> tensor (B or 1, units)``; a missing key means the
    mechanism is off (a_SM = 1, a_WC = 0, a_AL = 0 i.e. ReLU, a_ARM = 0). ``record`` asks layers to store per-unit
    activity statistics of the pass in ``stats`` (the neuron features' EMA input).
    """

    def __init__(self):
        self.alphas: dict[int, dict[str, torch.Tensor]] | None = None
        self.record = False
        self.stats: dict[int, torch.Tensor] = {}

    # Not part of any module state: a deep copy gets a fresh, empty context object shared by the copied modules.
    def __deepcopy__(self, memo):
        return ModulationContext()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


def _unit_stats(y: torch.Tensor) -> torch.Tensor:
    """(units, 3): mean pre-activation, mean |pre-activation|, fraction positive (over batch and space)."""
    flat = y.detach().transpose(0, 1).reshape(y.shape[1], -1)
    return torch.stack([flat.mean(1), flat.abs().mean(1), (flat > 0).float().mean(1)], dim=1)


class _Modulated:
    """Mixin: one slot of a :class:`ModulationContext`, plus the consolidated copy of the weights."""

    ctx: ModulationContext
    slot: int

    def _init_modulation(self, ctx: ModulationContext, slot: int) -> None:
        self.ctx, self.slot = ctx, slot
        self.register_buffer("phi_weight", self.weight.detach().clone())
        self.register_buffer("phi_bias", None if self.bias is None else self.bias.detach().clone())

    def _combine(self, op, x, expand):
        """``op(x, weight, bias)`` with theta and, when a_WC is on, phi stacked along the output axis."""
        alphas = None if self.ctx.alphas is None else self.ctx.alphas.get(self.slot)
        if alphas is None:  # unmodulated (a plain MainNetwork forward)
            y = op(x, self.weight, self.bias)
        else:
            sm, wc = alphas.get("sm"), alphas.get("wc")
            if wc is None:
                y = op(x, self.weight, self.bias)
                if sm is not None:
                    y = expand(sm) * y
            else:
                w = torch.cat([self.weight, self.phi_weight])
                b = None if self.bias is None else torch.cat([self.bias, self.phi_bias])
                y_theta, y_phi = op(x, w, b).chunk(2, dim=1)
                y = (y_theta if sm is None else expand(sm) * y_theta) + expand(wc) * y_phi
        if self.ctx.record:
            self.ctx.stats[self.slot] = _unit_stats(y)
        return y


class ModulatedLinear(_Modulated, nn.Linear):
    """``nn.Linear`` whose unit i computes (a_SM,i theta_i + a_WC,i phi_i) . z with per-sample coefficients."""

    def forward(self, x):
        return self._combine(F.linear, x, lambda a: a)


class ModulatedConv2d(_Modulated, nn.Conv2d):
    """``nn.Conv2d`` whose filter i computes (a_SM,i theta_i + a_WC,i phi_i) * z with per-sample coefficients."""

    def forward(self, x):
        return self._combine(self._conv_forward, x, lambda a: a[:, :, None, None])


class ModulatedActivation(nn.Module):
    """PReLU whose negative slope is a_AL (per sample, per unit), then the additive offset a_ARM.

    Replaces (by class swap) the ReLU-type activation of a unit layer; with no coefficients it is a ReLU."""

    ctx: ModulationContext
    slot: int

    def forward(self, z):
        alphas = None if self.ctx.alphas is None else self.ctx.alphas.get(self.slot)
        al = None if alphas is None else alphas.get("al")
        arm = None if alphas is None else alphas.get("arm")
        expand = (lambda a: a) if z.dim() == 2 else (lambda a: a[:, :, None, None])
        out = torch.relu(z) if al is None else torch.where(z >= 0, z, expand(al) * z)
        return out if arm is None else out + expand(arm)


def modulated_layers(network: nn.Module) -> list[nn.Module]:
    """Every modulated Linear / Conv2d of ``network`` in slot order."""
    return sorted((m for m in network.modules() if isinstance(m, _Modulated)), key=lambda m: m.slot)


def modulate_backbone(backbone: nn.Module, ctx: ModulationContext) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """Turn ``backbone`` into an InferenceNetwork in place; return ``(name, layer, activation)`` per neuron layer
    (the name is the unit layer's, e.g. ``fc0``, else the module path, e.g. ``head``).

    Neuron layers are every ``nn.Linear`` and ``nn.Conv2d`` (the head included: its units get a_SM / a_WC). Units of
    the backbone's ``unit_layers`` also get the modulated activation (a_AL, a_ARM); other activations (a ResNet's
    post-residual ReLUs) are left as they are.
    """
    units = {id(u.incoming): u for u in getattr(backbone, "unit_layers", [])}
    for u in units.values():
        k = getattr(u.activation, "width_factor", 1)
        if k != 1 or not isinstance(u.activation, (nn.ReLU, nn.PReLU)) and type(u.activation).__name__ != "_BlockTap":
            raise ValueError(f"NeuMoSync modulates ReLU-type units (its PReLU slope is a_AL); layer {u.name!r} has "
                             f"{type(u.activation).__name__}: build the backbone with activation='relu'")
    layers = []
    for name, m in backbone.named_modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ValueError(f"NeuMoSync does not modulate grouped convolutions ({name})")
            m.__class__ = ModulatedLinear if isinstance(m, nn.Linear) else ModulatedConv2d
            m._init_modulation(ctx, len(layers))
            act, label = None, name
            if id(m) in units:
                act, label = units[id(m)].activation, units[id(m)].name
                for p in list(act.parameters(recurse=False)):  # a PReLU's own slope is replaced by a_AL
                    p.requires_grad_(False)
                act.__class__ = ModulatedActivation
                act.ctx, act.slot = ctx, m.slot
            layers.append((label or name, m, act))
        elif isinstance(m, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)) and not isinstance(m, _Modulated):
            raise ValueError(f"NeuMoSync cannot modulate {type(m).__name__} ({name}); supported backbones: mlp, cnn, "
                             f"cnn_wide, resnet18, resnet50")
    return layers
