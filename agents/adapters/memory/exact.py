"""The ground-truth memory: every pair stored as written ("adapters from disk" in 004_49f6201e6e679480.txt,
Table 1's FAA_GT). A read returns, bit for bit, the value of the stored key nearest to the query."""

from __future__ import annotations

import torch

from agents.adapters.memory.base import AssociativeMemory, RowStore, tensor_bytes

__all__ = ["ExactMemory"]


class ExactMemory(AssociativeMemory):
    """Keys and values kept as written. ``read(q)`` returns a copy of the value whose key is nearest to ``q`` in
    Euclidean distance (computed in float64); a query equal to a stored key has distance 0 and gets that key's value
    exactly. Among equally near keys (a key written twice) the latest write wins, as a dict overwrite would."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: RowStore | None = None
        self._values: RowStore | None = None

    def _store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        if self._keys is None:
            self._keys = RowStore(key.numel(), key.dtype, key.device)
            self._values = RowStore(value.numel(), value.dtype, value.device)
        self._keys.append(key)
        self._values.append(value)

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """The index of the stored key nearest to each query row (the latest among ties)."""
        keys = self._keys.rows.double()
        # the direct difference form: the matmul form can leave a small non-zero distance for an equal pair
        distance = torch.cdist(queries.double(), keys, compute_mode="donot_use_mm_for_euclid_dist")  # (n, N)
        # flip so that argmin's first-of-ties is the latest write
        return keys.shape[0] - 1 - distance.flip(1).argmin(dim=1)

    def _recall(self, queries: torch.Tensor) -> torch.Tensor:
        return self._values.rows[self.nearest(queries)].clone()

    def memory_size_bytes(self) -> int:
        """Every key and value as written: equal to :attr:`written_bytes`."""
        if self._keys is None:
            return 0
        return tensor_bytes(self._keys.rows, self._values.rows)
