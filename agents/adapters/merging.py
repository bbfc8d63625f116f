"""Merging adapters trained independently on different tasks: task vectors, Task Arithmetic, TIES, installation.

A *task vector* (Ilharco et al., 2023, "Editing models with task arithmetic", ICLR) is what fine-tuning on one task
changed, relative to a reference: here a fresh agent of the same class, hyperparameters and seed (``agent.fresh()``),
which holds the same frozen base model and the same adapter initialisation. Its space depends on the adapter layer:

- plain LoRA layers (:class:`~agents.adapters.layer.LoRALayer`) merge in **weight space**: the vector holds
  ``<layer>.delta_weight``, the layer's ``Delta W = scaling B A`` minus the reference's, in ``nn.Linear``'s (out, in)
  orientation. Averaging the factors instead would be wrong: mean(B) mean(A) != mean(B A) when every task trains its
  own A (shared/specs/methods.md 5.1, pitfall 3).
- layers whose class says ``MERGE_SPACE = "parameters"`` (FlyLoRA's and NeuroLoRA's: one frozen random A shared by
  every agent of a seed, a trainable B from zero, optionally gate parameters) merge in **parameter space**: the vector
  holds each trainable parameter's difference from the reference (``<layer>.<parameter>``). That is only meaningful
  when their frozen tensors (A above all) are the reference's, which :func:`task_vector` checks; with A shared,
  summing B is summing the updates. What a layer lists in its optional ``MERGE_AVERAGE`` (prefixes of parameter and
  buffer names; by default :data:`DEFAULT_AVERAGE`, NeuroLoRA's gate, which the paper merges "by simple averaging",
  and FlyLoRA's load-balancing bias, a buffer that training moves) is in the vector too, and :func:`averaged_keys`
  names it so that the merges average it instead of summing it.
- any other trainable parameter of the network (outside an adapter layer) is a parameter difference too.

:func:`task_arithmetic` sums vectors with one coefficient; :func:`ties_merge` is TIES-Merging (Yadav et al., 2023,
"TIES-Merging: resolving interference when merging models", NeurIPS): trim each vector to its largest-magnitude
``density`` share of entries, elect each entry's sign as the sign of the trimmed vectors' sum, average the trimmed
entries that agree with it (a disjoint mean), scale. :func:`install_merged` puts a merged vector into a fresh agent:
weight-space updates are added into the frozen base weights (so the agent is a plain module again and its
``state_dict`` holds the merge: checkpointable), parameter-space ones onto the parameters. Every layout is checked
before anything changes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from agents.adapters.layer import LoRALayer

__all__ = ["task_vector", "task_arithmetic", "ties_merge", "install_merged", "merge_layers", "trained_state",
           "averaged_keys",
           "DEFAULT_AVERAGE", "WEIGHT_SPACE", "PARAMETER_SPACE"]

WEIGHT_SPACE, PARAMETER_SPACE = "weights", "parameters"
_DELTA = "delta_weight"


def _network(agent_or_module) -> nn.Module:
    net = getattr(agent_or_module, "network", agent_or_module)
    if not isinstance(net, nn.Module):
        raise TypeError(f"expected an adapter agent or a torch module, got {type(agent_or_module).__name__}")
    return net


def _space_of(module: nn.Module) -> str | None:
    space = getattr(type(module), "MERGE_SPACE", None)
    if space is None and isinstance(module, LoRALayer):
        return WEIGHT_SPACE
    if space is not None and space not in (WEIGHT_SPACE, PARAMETER_SPACE):
        raise ValueError(f"{type(module).__name__}.MERGE_SPACE must be {WEIGHT_SPACE!r} or {PARAMETER_SPACE!r}, "
                         f"got {space!r}")
    return space


def merge_layers(agent_or_module) -> dict[str, tuple[nn.Module, str]]:
    """The adapter layers of a network by qualified name, in module order, with the space each merges in (the
    outermost adapter layer where one wraps another)."""
    out: dict[str, tuple[nn.Module, str]] = {}
    inside: list[str] = []
    for name, module in _network(agent_or_module).named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        space = _space_of(module)
        if space is not None:
            out[name] = (module, space)
            inside.append(name + ".")
    if not out:
        raise ValueError("the network has no adapter layer to merge (no LoRALayer and no layer with MERGE_SPACE)")
    return out


def _key(layer: str, item: str) -> str:
    return f"{layer}.{item}" if layer else item


#: What a parameter-space layer without its own ``MERGE_AVERAGE`` averages: NeuroLoRA's gate parameters (the paper
#: merges them "by simple averaging") and FlyLoRA's load-balancing expert bias (a buffer the training forwards move).
DEFAULT_AVERAGE = ("gate", "expert_bias")


def _average_prefixes(layer: nn.Module) -> tuple[str, ...]:
    own = getattr(type(layer), "MERGE_AVERAGE", None)
    return tuple(DEFAULT_AVERAGE if own is None else own)


def trained_state(layer: nn.Module) -> list[tuple[str, torch.Tensor, str]]:
    """What training moves in one adapter layer, in registration order: its trainable parameters (kind
    ``"parameters"``), then the floating-point buffers its ``MERGE_AVERAGE`` prefixes name (``"buffer"``, e.g.
    FlyLoRA's expert bias). The task vectors here and the memory layout of :mod:`agents.adapters.memory` read it."""
    out = [(n, p, PARAMETER_SPACE) for n, p in layer.named_parameters() if p.requires_grad]
    prefixes = _average_prefixes(layer)
    out += [(n, b, "buffer") for n, b in layer.named_buffers()
            if prefixes and n.startswith(prefixes) and b.is_floating_point()]
    return out


def _layout(net: nn.Module) -> dict[str, tuple[str, nn.Module | torch.Tensor, tuple[int, ...]]]:
    """Every entry a task vector of ``net`` has: key -> (kind, the layer (``"weights"``) or the tensor
    (``"parameters"``: a trainable parameter; ``"buffer"``: a buffer a parameter-space layer averages), shape)."""
    layers = merge_layers(net)
    out: dict[str, tuple] = {}
    covered: set[int] = set()
    for name, (layer, space) in layers.items():
        covered |= {id(p) for p in layer.parameters()}
        if space == WEIGHT_SPACE:
            out[_key(name, _DELTA)] = (space, layer, (layer.out_features, layer.in_features))
            continue
        for item, t, kind in trained_state(layer):
            out[_key(name, item)] = (kind, t, tuple(t.shape))
    for pname, p in net.named_parameters():
        if p.requires_grad and id(p) not in covered:
            out[pname] = (PARAMETER_SPACE, p, tuple(p.shape))
    return out


def _delta_of(layer: nn.Module) -> torch.Tensor:
    if getattr(layer, "merged", False):
        raise ValueError("a merged LoRA layer's update lives in its base weight: unmerge() it before taking a task "
                         "vector")
    if getattr(layer, "mask", None) is not None:
        raise ValueError("a LoRA layer holds a component mask: clear it (set_component_mask(layers, None)) first")
    return layer.delta_weight().detach()


def _check_frozen(name: str, layer: nn.Module, ref_layer: nn.Module) -> None:
    """A parameter-space layer's frozen tensors (its random A above all) must be the reference's."""
    ref = dict(ref_layer.named_parameters()) | dict(ref_layer.named_buffers())
    averaged = _average_prefixes(layer)
    mine = [(n, t) for n, t in layer.named_parameters() if not t.requires_grad] + [
        (n, t) for n, t in layer.named_buffers() if not (averaged and n.startswith(averaged))]
    for tname, t in mine:
        r = ref.get(tname)
        if r is None or r.shape != t.shape or not torch.equal(r.detach().to(t.device), t.detach()):
            raise ValueError(f"the frozen {_key(name, tname)} of this agent is not the reference's: parameter-space "
                             f"task vectors need the same frozen projection (one seed, one set of hyperparameters); "
                             f"build the reference with agent.fresh() or the same agents.make(..., seed=) call")


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. tensors: compared by identity
        return a is b


def _check_same_agent(agent, reference) -> None:
    """Agents (not bare modules) must be of one class with the same hyperparameters, the seed included."""
    h, r = getattr(agent, "hparams", None), getattr(reference, "hparams", None)
    if h is None or r is None:
        return
    if type(agent) is not type(reference):
        raise ValueError(f"the reference is a {type(reference).__name__}, the agent a {type(agent).__name__}: a task "
                         f"vector is taken against a fresh agent of the same class (agent.fresh())")
    differ = sorted(k for k in set(h) | set(r) if k not in h or k not in r or not _same(h[k], r[k]))
    if differ:
        raise ValueError(f"the agent and its reference differ in hyperparameters {differ} (here "
                         + ", ".join(f"{k}={h.get(k)!r} vs {r.get(k)!r}" for k in differ[:4])
                         + "): take the task vector against agent.fresh(), the same class, hyperparameters and seed")


def task_vector(agent, reference_agent) -> dict[str, torch.Tensor]:
    """What training changed in ``agent`` against ``reference_agent`` (a fresh agent of the same class,
    hyperparameters and seed): ``<layer>.delta_weight`` for weight-space (plain LoRA) layers, ``<layer>.<parameter>``
    differences for parameter-space layers (after checking their frozen tensors are the reference's) and for any
    other trainable parameter. Detached copies, on the agent's device; raises ``ValueError`` on another layout."""
    _check_same_agent(agent, reference_agent)
    net, ref = _network(agent), _network(reference_agent)
    mine, theirs = _layout(net), _layout(ref)
    if mine.keys() != theirs.keys() or any(mine[k][2] != theirs[k][2] for k in mine):
        diff = sorted(k for k in mine.keys() | theirs.keys()
                      if k not in mine or k not in theirs or mine[k][2] != theirs[k][2])
        raise ValueError(f"the agent and its reference have different adapter layouts (entries {diff[:6]}): the "
                         f"reference must be the same agent class with the same hyperparameters")
    layers, ref_layers = merge_layers(net), merge_layers(ref)
    for name, (layer, space) in layers.items():
        if space == PARAMETER_SPACE:
            _check_frozen(name, layer, ref_layers[name][0])
    vector = {}
    with torch.no_grad():
        for key, (space, target, _) in mine.items():
            other = theirs[key][1]
            if space == WEIGHT_SPACE:
                mine_delta = _delta_of(target)
                vector[key] = (mine_delta - _delta_of(other).to(mine_delta.device)).clone()
            else:
                vector[key] = (target.detach() - other.detach().to(target.device)).clone()
    return vector


def averaged_keys(agent_or_module) -> list[str]:
    """The task-vector keys the merges should average rather than sum: what parameter-space layers name in their
    ``MERGE_AVERAGE`` (prefixes of parameter and buffer names; :data:`DEFAULT_AVERAGE` when a layer has none:
    NeuroLoRA's gate and FlyLoRA's expert bias)."""
    out = []
    for name, (layer, space) in merge_layers(agent_or_module).items():
        prefixes = _average_prefixes(layer)
        if space != PARAMETER_SPACE or not prefixes:
            continue
        out += [_key(name, pname) for pname, p in layer.named_parameters() if p.requires_grad
                and pname.startswith(prefixes)]
        out += [_key(name, bname) for bname, b in layer.named_buffers() if bname.startswith(prefixes)
                and b.is_floating_point()]
    return out


# ---------------------------------------------------------------------------------------------- the merges
def _checked(vectors: Sequence[Mapping[str, torch.Tensor]], average: Iterable[str]) -> tuple[list[str], set]:
    vectors = list(vectors)
    if not vectors:
        raise ValueError("no task vector to merge")
    keys = list(vectors[0])
    for i, v in enumerate(vectors[1:], 1):
        if set(v) != set(keys):
            missing, extra = sorted(set(keys) - set(v)), sorted(set(v) - set(keys))
            raise ValueError(f"task vector {i} has another layout than vector 0: missing {missing[:6]}, "
                             f"extra {extra[:6]}")
        wrong = [k for k in keys if tuple(v[k].shape) != tuple(vectors[0][k].shape)]
        if wrong:
            raise ValueError(f"task vector {i} has other shapes than vector 0 at {wrong[:6]}")
    average = set(average)
    unknown = sorted(average - set(keys))
    if unknown:
        raise ValueError(f"average names entries the vectors do not have: {unknown[:6]}")
    return keys, average


def _check_number(name: str, value, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value <= low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in ({low}, {high}], got {value!r}")
    return float(value)


def task_arithmetic(vectors: Sequence[Mapping[str, torch.Tensor]], scale: float = 1.0,
                    average: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Task Arithmetic: ``scale * sum_t vectors[t]`` per entry (the entries in ``average``: their plain mean)."""
    keys, average = _checked(vectors, average)
    scale = _check_number("scale", scale)
    with torch.no_grad():
        return {k: (torch.stack([v[k] for v in vectors]).mean(0) if k in average
                    else scale * torch.stack([v[k] for v in vectors]).sum(0)) for k in keys}


def ties_merge(vectors: Sequence[Mapping[str, torch.Tensor]], density: float = 0.2, scale: float = 1.0,
               average: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """TIES-Merging (Yadav et al., 2023) of task vectors, over all their entries at once (each vector flattened, as
    the authors' code does), except those in ``average`` (their plain mean):

    1. trim: keep each vector's ``round(density * n)`` largest-magnitude entries (at least one), zero the rest;
    2. elect: each entry's sign is the sign of the trimmed vectors' sum (the side with more total mass);
    3. disjoint mean: average each entry over the vectors whose trimmed value is non-zero with the elected sign
       (0 where none is);

    and multiply by ``scale``."""
    keys, average = _checked(vectors, average)
    density = _check_number("density", density, 0.0, 1.0)
    scale = _check_number("scale", scale)
    merged_keys = [k for k in keys if k not in average]
    out = {k: torch.stack([v[k] for v in vectors]).mean(0) for k in average}
    if not merged_keys:
        return {k: out[k] for k in keys}
    with torch.no_grad():
        flat = torch.stack([torch.cat([v[k].reshape(-1) for k in merged_keys]) for v in vectors])  # (T, n)
        n = flat.shape[1]
        keep = min(n, max(1, int(round(density * n))))
        top = flat.abs().topk(keep, dim=1).indices
        trimmed = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top))
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        count = agree.sum(0)
        merged = scale * (trimmed * agree).sum(0) / count.clamp_min(1).to(flat.dtype)
        start = 0
        for k in merged_keys:
            size = vectors[0][k].numel()
            out[k] = merged[start:start + size].reshape(vectors[0][k].shape).clone()
            start += size
    return {k: out[k] for k in keys}


def install_merged(agent, merged: Mapping[str, torch.Tensor]) -> None:
    """Put a merged task vector into ``agent``, a fresh agent of the vectors' reference (same class, hyperparameters
    and seed): each weight-space ``<layer>.delta_weight`` is added into that layer's frozen base weight (its own
    adapter, LoRA's B = 0, stays as the reference had it, so the result is reference + merge, and the merge is part
    of the network's ``state_dict``); each parameter-space entry is added onto its parameter. Names, shapes and
    values (finite) are checked first: on any mismatch, ``ValueError`` and nothing changes."""
    net = _network(agent)
    layout = _layout(net)
    missing, unexpected = sorted(layout.keys() - merged.keys()), sorted(merged.keys() - layout.keys())
    if missing or unexpected:
        raise ValueError(f"the merged vector does not fit this agent: missing {missing[:6]}, unexpected "
                         f"{unexpected[:6]} (merge vectors of this agent's class and hyperparameters)")
    for key, (space, target, shape) in layout.items():
        value = merged[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"merged entry {key!r} has shape {got}, this agent's is {shape}")
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"merged entry {key!r} must be finite floating point values")
        if space == WEIGHT_SPACE and getattr(target, "merged", False):
            raise ValueError(f"layer {key.rsplit('.', 1)[0]!r} is merged already: install into a fresh agent")
    with torch.no_grad():
        for key, (space, target, _) in layout.items():
            value = merged[key]
            if space == WEIGHT_SPACE:
                weight = target.base.weight
                delta = value.T if target.fan_in_fan_out else value
                weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
            else:
                target.add_(value.to(device=target.device, dtype=target.dtype))
    if hasattr(agent, "_cache"):
        agent._cache = None  # a forward cached before the install is stale
