"""The InferenceNetwork's layers: modulated Linear / Conv2d and the modulated PReLU + offset.

A MainNetwork (a :class:`agents.backbones.Backbone`) is turned into the InferenceNetwork *in place* by swapping the
class of its ``nn.Linear`` / ``nn.Conv2d`` modules and of its unit activations (:func:`modulate_backbone`). Parameters,
hooks and the ``unit_layers`` description all stay valid; each swapped layer gains the ConsolidatedNetwork copy of its
weights as buffers (``phi_weight``, ``phi_bias``) and reads its coefficients from a shared
:class:`ModulationContext` that the controller fills before every forward pass.

Per-sample weights are never built. For neuron i with per-sample coefficients (a_SM, a_WC)::

    y_i = (a_SM,i theta_i + a_WC,i phi_i) . z = a_SM,i (theta_i . z) + a_WC,i (phi_i . z)

so only two (units)-sized products per sample are formed. Convolutions use one convolution with the stacked filters
[theta; phi]. Linear layers compute both products and the mixing in one autograd node (:class:`_DualLinear`) whose
backward forms only the gradients that exist (theta, the input, the coefficients; none for the buffer phi); it uses
two GEMMs rather than one stacked GEMM (faster on CPU at batch 16; the measurement is in a comment there).
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

    ``alphas[slot]`` is a tuple ``(sm, wc, al, arm)`` of tensors (B or 1, units), ``None`` where the mechanism is off
    (a_SM = 1, a_WC = 0, a_AL = 0 i.e. ReLU, a_ARM = 0). ``record`` asks layers to keep their (detached)
    pre-activations of the pass in ``stats`` (the neuron features' EMA input, reduced after the step).
    """

    def __init__(self):
        self.alphas: dict[int, tuple] | None = None
        self.record = False
        self.stats: dict[int, torch.Tensor] = {}

    # Not part of any module state: a deep copy gets a fresh, empty context object shared by the copied modules.
    def __deepcopy__(self, memo):
        return ModulationContext()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()


_NONE = (None, None, None, None)


def unit_stats(y: torch.Tensor) -> torch.Tensor:
    """(units, 3): mean pre-activation, mean |pre-activation|, fraction positive (over batch and space)."""
    flat = y if y.dim() == 2 else y.transpose(0, 1).flatten(1).t()  # (samples, units)
    return torch.stack([flat.mean(0), flat.abs().mean(0), (flat > 0).float().mean(0)], dim=1)


class _DualLinear(torch.autograd.Function):
    """``sm * (x theta^T + b) + wc * (x phi^T + b_phi)`` as one autograd node.

    Backward: d theta = (g sm)^T x, d b = sum(g sm), d x = (g sm) theta + (g wc) phi, d sm = g (x theta^T + b),
    d wc = g (x phi^T + b_phi), the coefficient gradients summed to the coefficient's shape (a (1, units)
    coefficient is shared by the batch). No gradient is formed for phi (a buffer), which a GEMM against the stacked
    weights [theta; phi] under plain autograd would compute and discard.

    Theta and phi go through two GEMMs, not one against ``cat([theta, phi])``: at batch 16 on CPU the GEMM is bound by
    reading the weights, and materialising the stacked copy every step (theta changes every step) costs more than the
    second GEMM call."""
    # Measured: MLP layer 3072 -> 100, batch 16, forward + backward, one thread: 1.49 ms stacked vs 1.17 ms two GEMMs
    # vs 0.67 ms for the unmodulated layer.

    @staticmethod
    def forward(ctx, x, weight, bias, phi_weight, phi_bias, sm, wc):
        y_theta = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
        y_phi = x @ phi_weight.t() if phi_bias is None else torch.addmm(phi_bias, x, phi_weight.t())
        ctx.save_for_backward(x, weight, phi_weight, y_theta, y_phi, sm, wc)
        ctx.has_bias = bias is not None
        return torch.addcmul(sm * y_theta, wc, y_phi)

    @staticmethod
    def backward(ctx, g):
        x, weight, phi_weight, y_theta, y_phi, sm, wc = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_theta = g * sm
        gx = gw = gb = gsm = gwc = None
        if need[0]:
            gx = torch.addmm(g_theta @ weight, g * wc, phi_weight)
        if need[1]:
            gw = g_theta.t() @ x
        if ctx.has_bias and need[2]:
            gb = g_theta.sum(0)
        if need[5]:
            gsm = (g * y_theta).sum_to_size(sm.shape)
        if need[6]:
            gwc = (g * y_phi).sum_to_size(wc.shape)
        return gx, gw, gb, None, None, gsm, gwc


class _Modulated:
    """Mixin: one slot of a :class:`ModulationContext`, plus the consolidated copy of the weights."""

    ctx: ModulationContext
    slot: int

    def _init_modulation(self, ctx: ModulationContext, slot: int) -> None:
        self.ctx, self.slot = ctx, slot
        self.register_buffer("phi_weight", self.weight.detach().clone())
        self.register_buffer("phi_bias", None if self.bias is None else self.bias.detach().clone())

    def _alphas(self):
        return _NONE if self.ctx.alphas is None else self.ctx.alphas.get(self.slot, _NONE)

    def _record(self, y):
        if self.ctx.record:
            self.ctx.stats[self.slot] = y.detach()
        return y


class ModulatedLinear(_Modulated, nn.Linear):
    """``nn.Linear`` whose unit i computes (a_SM,i theta_i + a_WC,i phi_i) . z with per-sample coefficients."""

    def forward(self, x):
        sm, wc = self._alphas()[:2]
        if wc is None:
            y = F.linear(x, self.weight, self.bias)
            return self._record(y if sm is None else sm * y)
        if sm is None:
            sm = torch.ones_like(wc)
        if x.dim() != 2:  # the function is written for (batch, features)
            y = _DualLinear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.phi_weight,
                                     self.phi_bias, sm.reshape(-1, sm.shape[-1]), wc.reshape(-1, wc.shape[-1]))
            return self._record(y.view(*x.shape[:-1], -1))
        return self._record(_DualLinear.apply(x, self.weight, self.bias, self.phi_weight, self.phi_bias, sm, wc))


class ModulatedConv2d(_Modulated, nn.Conv2d):
    """``nn.Conv2d`` whose filter i computes (a_SM,i theta_i + a_WC,i phi_i) * z with per-sample coefficients."""

    def forward(self, x):
        sm, wc = self._alphas()[:2]
        if wc is None:
            y = self._conv_forward(x, self.weight, self.bias)
            return self._record(y if sm is None else sm[:, :, None, None] * y)
        # theta and phi stacked along the output channels: one convolution. The stacked weight is part of the graph
        # only through theta (phi is a buffer), so autograd's weight gradient of the phi half is discarded.
        w = torch.cat([self.weight, self.phi_weight])
        b = None if self.bias is None else torch.cat([self.bias, self.phi_bias])
        y_theta, y_phi = self._conv_forward(x, w, b).chunk(2, dim=1)
        y = y_theta if sm is None else sm[:, :, None, None] * y_theta
        return self._record(torch.addcmul(y, wc[:, :, None, None], y_phi))


class ModulatedActivation(nn.Module):
    """PReLU whose negative slope is a_AL (per sample, per unit), then the additive offset a_ARM.

    Replaces (by class swap) the ReLU-type activation of a unit layer; with no coefficients it is a ReLU."""

    ctx: ModulationContext
    slot: int

    def forward(self, z):
        alphas = _NONE if self.ctx.alphas is None else self.ctx.alphas.get(self.slot, _NONE)
        al, arm = alphas[2], alphas[3]
        if z.dim() != 2:
            al = None if al is None else al[:, :, None, None]
            arm = None if arm is None else arm[:, :, None, None]
        out = torch.relu(z) if al is None else torch.where(z >= 0, z, al * z)
        return out if arm is None else out + arm


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

