"""Associative memories of task adapters (004_49f6201e6e679480.txt, Sections 3-4; issue 16): one interface,
``write(key, value)`` (sequential: earlier values stay retrievable) and ``read(query) -> value``
(:mod:`~agents.adapters.memory.base`), three memories behind it, and the adapter <-> vector layout they store.

- :class:`ExactMemory`: the ground truth ("adapters from disk"); a read returns the nearest stored key's value bit for
  bit.
- :class:`HopfieldMemory`: keys and values as matrices, ``read(q) = V softmax(beta K^T q)`` with beta = 25 and unit-norm
  keys and query (shared/specs/methods.md 5.2).
- :class:`BayesPCNMemory`: Yoo & Wood's (NeurIPS 2022) Bayesian predictive-coding memory, 4 layers, one particle,
  GELU, Adam inference (lr 0.01, 500 steps); its module docstring lists where it departs from the reference code.
- :mod:`~agents.adapters.memory.layout`: :func:`adapter_vector` / :func:`install_adapter_vector` (the flattened
  adapter state of every adapted layer, in module order), :func:`adapter_key` (its first 10%), and
  :func:`write_adapter` / :func:`read_adapter`, which store (key, rest) and recall key (+) read(key).

Each memory has ``memory_size_bytes()``; ``written_bytes`` is what storing every written pair as it is costs.
"""

from agents.adapters.memory.base import AssociativeMemory
from agents.adapters.memory.bayespcn import BayesPCNMemory
from agents.adapters.memory.exact import ExactMemory
from agents.adapters.memory.hopfield import HopfieldMemory
from agents.adapters.memory.layout import (KEY_FRACTION, adapter_key, adapter_layout, adapter_vector,
                                           install_adapter_vector, key_length, read_adapter, write_adapter)

__all__ = ["AssociativeMemory", "ExactMemory", "HopfieldMemory", "BayesPCNMemory", "KEY_FRACTION", "adapter_layout",
           "adapter_vector", "install_adapter_vector", "adapter_key", "key_length", "write_adapter", "read_adapter"]
