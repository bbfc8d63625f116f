"""The adapter <-> vector layout: what a memory stores for one task (004_49f6201e6e679480.txt, Section 3.1).

**The vector** of an agent (or a torch module) is the flattened adapter state of every adapted layer, in a fixed
order: the adapter layers in module order (``named_modules()``, the order :func:`agents.adapters.merging.merge_layers`
lists them, the outermost where one wraps another), and within a layer its trained parameters in the order the layer
registers them (``named_parameters()``: ``lora_A``, ``lora_B`` for LoRA; ``lora_B`` then the gate's for FlyLoRA /
NeuroLoRA, ``lora_A`` first when it is trained), then the floating-point buffers its training moves (FlyLoRA's
``expert_bias``, the merging code's rule: names starting with the layer's ``MERGE_AVERAGE`` prefixes, by default
``gate`` and ``expert_bias``). Frozen tensors (the base weights, FlyLoRA's frozen random A) are not in it: every task of
one agent shares them, so storing them would cost memory and, first in the vector, make every task's key the same.
Each tensor is flattened row-major; the vector has the common (promoted) dtype of its tensors.

**The key** is the vector's first floor(0.1 |vector|) entries, as the paper does ("k_t a small subset of theta_t
itself"); :func:`write_adapter` stores (key, the rest) and :func:`read_adapter` returns key (+) read(key), the paper's
``theta_hat = k_t (+) V softmax(beta K^T k_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from agents.adapters.memory.base import AssociativeMemory, as_vector
from agents.adapters.merging import merge_layers, trained_state

__all__ = ["KEY_FRACTION", "adapter_layout", "adapter_vector", "install_adapter_vector", "adapter_key", "key_length",
           "write_adapter", "read_adapter"]

#: The share of the vector's entries that forms its key (the paper's 10%).
KEY_FRACTION = 0.1


def _entries(agent_or_module) -> list[tuple[str, torch.Tensor, nn.Module]]:
    entries = [(f"{name}.{item}" if name else item, t, layer)
               for name, (layer, _space) in merge_layers(agent_or_module).items()
               for item, t, _kind in trained_state(layer)]
    if not entries:
        raise ValueError("the network's adapter layers have no trained state to store")
    return entries


def adapter_layout(agent_or_module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The vector's layout: (qualified name, shape) of every tensor in it, in its order (see the module docstring)."""
    return tuple((name, tuple(t.shape)) for name, t, _ in _entries(agent_or_module))


def adapter_vector(agent_or_module) -> torch.Tensor:
    """The flattened adapter state (a detached copy), in the layout's order."""
    tensors = [t.detach() for _, t, _ in _entries(agent_or_module)]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def install_adapter_vector(agent_or_module, vector, layout: Sequence[tuple[str, Sequence[int]]] | None = None
                           ) -> None:
    """Copy ``vector`` (as :func:`adapter_vector` makes it) into the adapters. ``layout``: the layout of the agent
    the vector came from (:func:`adapter_layout`), checked against this one's when given. Everything is checked
    before anything changes: a vector that is not a finite 1-D floating-point tensor, of another length, a layout
    that differs, merged layers, or a value that does not fit a tensor's dtype exactly installs nothing."""
    entries = _entries(agent_or_module)
    mine = tuple((name, tuple(t.shape)) for name, t, _ in entries)
    vector = as_vector("adapter vector", vector)
    if layout is not None:
        given = tuple((str(name), tuple(int(s) for s in shape)) for name, shape in layout)
        if given != mine:
            diff = [f"{a} != {b}" for a, b in zip(given, mine) if a != b][:3]
            if len(given) != len(mine):
                diff.append(f"{len(given)} tensors given, {len(mine)} installed")
            raise ValueError(f"the vector's layout does not match the installed adapter: {'; '.join(diff)}")
    total = sum(t.numel() for _, t, _ in entries)
    if vector.numel() != total:
        raise ValueError(f"the adapter vector has {vector.numel()} entries, but the installed adapter's layout holds "
                         f"{total} ({len(entries)} tensors, first {mine[0][0]} {mine[0][1]}); it came from another "
                         f"adapter configuration (rank, target modules, family)?")
    merged = sorted({name.rpartition(".")[0] for name, _, layer in entries if getattr(layer, "merged", False)})
    if merged:
        raise RuntimeError(f"cannot install adapters into merged layers {merged}: unmerge() them first")
    pieces, start = [], 0
    for name, t, _ in entries:
        piece = vector[start:start + t.numel()].reshape(t.shape)
        start += t.numel()
        cast = piece.to(t.dtype)
        if not torch.equal(cast.to(piece.dtype), piece):
            raise ValueError(f"the vector's entries for {name} do not fit its dtype {t.dtype} exactly")
        pieces.append(cast.to(t.device))
    with torch.no_grad():
        for (_, t, _), piece in zip(entries, pieces):
            t.copy_(piece)


def key_length(value_length: int) -> int:
    """floor(0.1 x the vector's length), at least 1."""
    n = math.floor(KEY_FRACTION * value_length)
    if n < 1:
        raise ValueError(f"a vector of {value_length} entries has no key: floor({KEY_FRACTION} x {value_length}) "
                         f"= 0 (at least {math.ceil(1 / KEY_FRACTION)} entries are needed)")
    return n


def adapter_key(vector) -> torch.Tensor:
    """The key of an adapter vector: its first floor(0.1 |vector|) entries (a view)."""
    vector = as_vector("adapter vector", vector)
    return vector[:key_length(vector.numel())]


def write_adapter(memory: AssociativeMemory, vector) -> torch.Tensor:
    """Write an adapter vector into ``memory`` as (its key, the rest); returns the key (what a later read needs)."""
    vector = as_vector("adapter vector", vector)
    n = key_length(vector.numel())
    memory.write(vector[:n], vector[n:])
    return vector[:n].clone()


def read_adapter(memory: AssociativeMemory, key) -> torch.Tensor:
    """The adapter vector recalled for ``key``: key (+) memory.read(key)."""
    key = as_vector("key", key)
    value = memory.read(key)
    return torch.cat([key.to(value.device, value.dtype), value])
