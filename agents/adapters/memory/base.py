"""The memory interface (004_49f6201e6e679480.txt, Section 3.1): a sequential ``write(key, value)`` after which every
earlier value stays retrievable, and a content-addressed ``read(query) -> value``.

Every memory checks its input the same way, before anything changes: keys, values and queries are 1-D floating-point
tensors (or what ``torch.as_tensor`` turns into one) with finite entries; the first write fixes the key length, the
value length and the dtype, and every later write and read must match them. A read of an empty memory is an error.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

__all__ = ["AssociativeMemory", "RowStore", "as_vector", "finite_positive", "tensor_bytes"]


def as_vector(name: str, x) -> torch.Tensor:
    """``x`` as a detached 1-D floating-point tensor with finite entries, or a ValueError / TypeError that says what
    is wrong. The data is not copied (callers that keep it clone it)."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D floating-point tensor, got {type(x).__name__}") from exc
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype} (convert it with .float())")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one flattened vector), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    bad = (~torch.isfinite(x)).nonzero()
    if bad.numel():
        first = bad[0].item()
        raise ValueError(f"{name} has {bad.numel()} non-finite entries (NaN or inf), the first at index {first}: "
                         f"{x[first].item()}")
    return x.detach()


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """The bytes the tensors' elements take (numel times element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class AssociativeMemory(ABC):
    """Base of the memories: the checks and the bookkeeping of :meth:`write` / :meth:`read`; a memory implements
    :meth:`_store` (one checked pair), :meth:`_recall` (a checked (n, key_dim) batch of queries) and
    :meth:`memory_size_bytes`.

    Attributes: ``key_dim``, ``value_dim``, ``dtype`` and ``device`` (None until the first write fixes them).
    """

    def __init__(self) -> None:
        self.key_dim: int | None = None
        self.value_dim: int | None = None
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        self._count = 0

    def __len__(self) -> int:
        """The number of pairs written."""
        return self._count

    def write(self, key, value) -> None:
        """Store ``value`` under ``key``. Every check runs before the memory changes."""
        key, value = as_vector("key", key), as_vector("value", value)
        if self._count == 0:
            if key.dtype != value.dtype:
                raise TypeError(f"key and value must share a dtype, got {key.dtype} and {value.dtype}")
        else:
            self._check_length("key", key, self.key_dim)
            self._check_length("value", value, self.value_dim)
            for name, x in (("key", key), ("value", value)):
                if x.dtype != self.dtype:
                    raise TypeError(f"{name} has dtype {x.dtype}, but this memory holds {self.dtype} (fixed by the "
                                    f"first write); convert it with .to({self.dtype})")
        self._check_pair(key, value)
        if self._count == 0:
            self.key_dim, self.value_dim, self.dtype, self.device = key.numel(), value.numel(), key.dtype, key.device
        self._store(key.to(self.device), value.to(self.device))
        self._count += 1

    def read(self, query) -> torch.Tensor:
        """The value recalled for ``query`` (a key-length vector), of the memory's value length and dtype."""
        return self.read_many(as_vector("query", query).unsqueeze(0))[0]

    def read_many(self, queries) -> torch.Tensor:
        """:meth:`read` for each row of an (n, key_dim) batch of queries: an (n, value_dim) tensor."""
        if self._count == 0:
            raise RuntimeError(f"{type(self).__name__} is empty: write(key, value) at least once before a read")
        if not isinstance(queries, torch.Tensor):
            queries = torch.as_tensor(queries)
        if queries.dim() != 2 or queries.shape[0] == 0:
            raise ValueError(f"queries must be a non-empty (n, {self.key_dim}) batch, got shape "
                             f"{tuple(queries.shape)}")
        rows = [as_vector(f"query {i}", q) for i, q in enumerate(queries)]
        for i, q in enumerate(rows):
            self._check_length(f"query {i}" if len(rows) > 1 else "query", q, self.key_dim)
        batch = torch.stack(rows).to(self.device, self.dtype)
        return self._recall(batch)

    @property
    def written_bytes(self) -> int:
        """What storing every written pair as it is costs: pairs x (key_dim + value_dim) x the element size."""
        if self._count == 0:
            return 0
        return self._count * (self.key_dim + self.value_dim) * torch.empty((), dtype=self.dtype).element_size()

    @abstractmethod
    def memory_size_bytes(self) -> int:
        """The bytes of the state the memory keeps to answer reads."""

    @abstractmethod
    def _store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one checked pair (on ``self.device``, of ``self.dtype``)."""

    @abstractmethod
    def _recall(self, queries: torch.Tensor) -> torch.Tensor:
        """Values for a checked (n, key_dim) batch of queries."""

    def _check_pair(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Checks a memory adds to every write, after the common ones and before anything changes (e.g. the key /
        value lengths it was built for)."""

    def _check_length(self, name: str, x: torch.Tensor, expected: int) -> None:
        if x.numel() != expected:
            raise ValueError(f"{name} has {x.numel()} entries, but this memory holds {name.split()[0]}s of "
                             f"{expected} (fixed by the first write)")

    def __repr__(self) -> str:
        shape = "empty" if not self._count else f"{self._count} pairs, key {self.key_dim}, value {self.value_dim}"
        return f"{type(self).__name__}({shape})"


def finite_positive(name: str, value, *, integer: bool = False) -> float | int:
    """A hyperparameter check: a finite number > 0 (an integer >= 1 with ``integer``; bools refused)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)



class RowStore:
    """Rows appended one at a time into a buffer that doubles when full, so N appends copy O(N) rows, not O(N^2).
    ``rows`` is the (n, dim) view of what was appended; the spare capacity is not part of the memory's state."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self._buffer = torch.empty(4, dim, dtype=dtype, device=device)
        self._n = 0

    def append(self, row: torch.Tensor) -> None:
        if self._n == self._buffer.shape[0]:
            grown = torch.empty(2 * self._n, self._buffer.shape[1], dtype=self._buffer.dtype,
                                device=self._buffer.device)
            grown[:self._n] = self._buffer
            self._buffer = grown
        self._buffer[self._n] = row
        self._n += 1

    @property
    def rows(self) -> torch.Tensor:
        return self._buffer[:self._n]
