"""Reservoir-sampling replay buffer (spec 6.2; mammoth ``utils/buffer.py`` semantics).

With capacity M and n the number of stream samples seen before the current one (counted for every sample, stored or
not): if n < M the sample goes to slot n; otherwise j ~ Uniform{0..n} (inclusive) and the sample replaces slot j when
j < M. Every stream sample is then in the buffer with probability M / (n + 1). A batch is inserted in one vectorised
call whose result equals inserting its samples one by one (a later sample wins a slot drawn twice).

Inputs are stored as given: uint8 images stay uint8 (four times less memory than float) and are never augmented by the
buffer; whoever samples decides how to preprocess (spec 6.2: store un-augmented inputs).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ReservoirBuffer", "ReplayMemoryMixin"]


class ReservoirBuffer:
    """Fixed-capacity reservoir of (input, label, task id) triples on one device."""

    def __init__(self, capacity: int, seed: int = 0, device: str | torch.device = "cpu"):
        if int(capacity) < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.seen = 0  # n: stream samples offered so far
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.task: torch.Tensor | None = None

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor = -1) -> None:
        """Offer a batch to the reservoir."""
        b = int(x.shape[0])
        if b == 0:
            return
        x, y = x.detach().to(self.device), torch.as_tensor(y, device=self.device).long()
        t = torch.as_tensor(task_id, device=self.device).long().expand(b) if torch.as_tensor(task_id).dim() == 0 \
            else torch.as_tensor(task_id, device=self.device).long()
        if self.x is None:
            self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype, device=self.device)
            self.y = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
            self.task = torch.full((self.capacity,), -1, dtype=torch.long, device=self.device)
        n = self.seen + np.arange(b)  # the 0-based count of each sample
        slots = np.where(n < self.capacity, n, -1)
        full = n >= self.capacity
        if full.any():
            j = self.rng.integers(0, n[full] + 1)  # inclusive upper bound n
            slots[full] = np.where(j < self.capacity, j, -1)
        self.seen += b
        keep = slots >= 0
        src, dst = np.nonzero(keep)[0], slots[keep]
        if dst.size == 0:
            return
        # Sequential semantics: where a slot is drawn twice in the batch, the later sample wins.
        _, last = np.unique(dst[::-1], return_index=True)
        pick = len(dst) - 1 - last
        src_t = torch.as_tensor(src[pick], device=self.device)
        dst_t = torch.as_tensor(dst[pick], device=self.device)
        self.x[dst_t] = x[src_t]
        self.y[dst_t] = y[src_t]
        self.task[dst_t] = t[src_t]

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``min(k, len)`` stored samples drawn uniformly without replacement: (x, y, task id)."""
        size = len(self)
        if size == 0:
            raise ValueError("the replay buffer is empty")
        idx = torch.as_tensor(self.rng.choice(size, size=min(int(k), size), replace=False), device=self.device)
        return self.x[idx], self.y[idx], self.task[idx]

    def state_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "task": self.task, "seen": self.seen,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        # Copies: add() writes into the tensors in place, which must not change the state they came from.
        self.x, self.y, self.task = (None if state[k] is None else state[k].clone() for k in ("x", "y", "task"))
        self.seen = int(state["seen"])
        self.rng.bit_generator.state = state["rng"]


class ReplayMemoryMixin:
    """Agent mixin (for :class:`agents.base.SupervisedAgent` subclasses) owning one reservoir memory.

    After each update, the batch just trained on is offered to the reservoir (so a sample is never replayed in its own
    step, spec 6.2 pitfall 1), as the raw observation (uint8 images, no agent-side augmentation). ER and A-GEM both
    inherit it, so ``er+agem`` shares one memory and inserts once per step.
    """

    DEFAULTS = dict(buffer_size=4000, replay_batch_size=64)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.memory = ReservoirBuffer(self.hparams["buffer_size"], seed=int(self.hparams["seed"]) + 4_000_037,
                                      device=self.device)
        self._raw_obs: torch.Tensor | None = None

    def preprocess(self, obs):
        raw = obs["x"] if isinstance(obs, dict) else obs
        self._raw_obs = torch.as_tensor(raw, device=self.device)
        return super().preprocess(obs)

    def memory_batch(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A replay batch, preprocessed like a stream batch: (float inputs, labels)."""
        x, y, _ = self.memory.sample(k or int(self.hparams["replay_batch_size"]))
        return super().preprocess(x), y  # the base conversion, without recording it as the stream's raw batch

    def after_update(self, x, y):
        super().after_update(x, y)
        raw = self._raw_obs
        if raw is None or raw.shape[0] != x.shape[0]:
            raw = x  # learn() called directly with preprocessed inputs
        stored = self.memory.x.dtype if self.memory.x is not None else None
        if stored == torch.uint8 and raw.dtype != torch.uint8:
            raw = (raw * 255.0).round_().clamp_(0, 255).to(torch.uint8)  # inverse of the [0, 1] scaling
        elif stored is not None and stored != torch.uint8 and raw.dtype == torch.uint8:
            raw = super().preprocess(raw)
        self.memory.add(raw, y, -1 if self.task_id is None else int(self.task_id))
        self._raw_obs = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "memory" in state:
            self.memory.load_state_dict(state["memory"])
