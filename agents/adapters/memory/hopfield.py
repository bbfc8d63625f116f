"""A Modern Hopfield memory of (key, value) pairs (Ramsauer et al., ICLR 2021; shared/specs/methods.md 5.2), as
004_49f6201e6e679480.txt Section 3.1 uses it: a write appends the key to a matrix K and the value to a matrix V as
new columns; a read is one retrieval step with separate values,

    read(q) = V softmax(beta K^T q),    beta = 25 (the paper's Appendix A.2).

**The keys are normalised to unit L2 norm, and so is the query** (``normalize="l2"``, the default), so K^T q holds
cosine similarities in [-1, 1] and beta = 25 means the same thing whatever the adapters' scale. The paper does not say
whether it normalises; methods.md 5.2 says the keys should be normalised ("Values need not be normalised, but the keys
should be"), and un-normalised LoRA entries (about 1e-2 each) give K^T q near 0 for every pair, so beta = 25 would
blend every stored adapter into their mean. ``normalize="none"`` is the raw dot product, for comparison
(benchmarks/adapter_memory_scaling.py shows what it does). The values are stored as written, not normalised.

Why a stored key returns (nearly) its value: with unit keys, s_j = <k_j, k_i> and a gap delta = 1 - max_{j != i} s_j,
the weight softmax puts on the other patterns is at most (N - 1) exp(-beta delta), so
||read(k_i) - v_i|| <= (N - 1) exp(-beta delta) max_j ||v_j - v_i||. The similarities, the softmax and the weighted
sum are computed in float64 and the result is cast to the values' dtype.

One step, not iterated to a fixed point: the spec's ``hflayers`` default (``update_steps_max = 0``) and the paper's
single read. The memory's state is K and V: N (key_dim + value_dim) numbers, the size of storing every adapter.
"""

from __future__ import annotations

import torch

from agents.adapters.memory.base import AssociativeMemory, RowStore, finite_positive, tensor_bytes

__all__ = ["HopfieldMemory", "NORMALIZATIONS"]

NORMALIZATIONS = ("l2", "none")


class HopfieldMemory(AssociativeMemory):
    """Args:
        beta: the inverse temperature of the softmax (the paper's 25).
        normalize: ``"l2"`` (keys and query scaled to unit norm; cosine similarity) or ``"none"`` (raw dot product).
    """

    def __init__(self, beta: float = 25.0, normalize: str = "l2") -> None:
        super().__init__()
        self.beta = finite_positive("beta", beta)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.normalize = normalize
        self._keys: RowStore | None = None  # K^T: one stored (normalised) key per row
        self._values: RowStore | None = None  # V^T

    def _unit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return x
        norm = x.double().norm(dim=-1, keepdim=True)
        if (norm == 0).any():
            raise ValueError(f"{name} has norm 0 and cannot be scaled to unit norm (normalize='l2'); a zero key "
                             f"carries no address")
        return (x.double() / norm).to(x.dtype)

    def _check_pair(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self._unit("key", key.unsqueeze(0))

    def _store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        if self._keys is None:
            self._keys = RowStore(key.numel(), key.dtype, key.device)
            self._values = RowStore(value.numel(), value.dtype, value.device)
        self._keys.append(self._unit("key", key.unsqueeze(0))[0])
        self._values.append(value)

    def weights(self, queries: torch.Tensor) -> torch.Tensor:
        """softmax(beta K^T q) for each query row: (n, N), float64, rows summing to 1."""
        q = self._unit("query", queries).double()
        similarity = q @ self._keys.rows.double().T  # (n, N)
        return torch.softmax(self.beta * similarity, dim=1)

    def _recall(self, queries: torch.Tensor) -> torch.Tensor:
        return (self.weights(queries) @ self._values.rows.double()).to(self.dtype)

    def memory_size_bytes(self) -> int:
        """K and V: N (key_dim + value_dim) elements of the values' dtype (the buffers' spare capacity not counted)."""
        if self._keys is None:
            return 0
        return tensor_bytes(self._keys.rows, self._values.rows)
