"""The mask-routed agent machinery that FTN (:mod:`agents.ftn.agent`) and the LoRA pool agents
(:mod:`agents.adapters.agent`) share (002_b6d509c9f1140765.txt, Sections 2-3, Appendix D).

A mask-routed agent trains every batch through a binary mask over a pool of H components (FTN's per-neuron MLPs, or
LoRA-FTN's rank-r adapter components) and keeps:

- ``mask``: the mask the next forward pass routes through (the last training batch's, or the one set by
  :meth:`MaskRoutedAgent.using_mask`);
- ``stored_masks``: task id -> the mask its last training batch used (the *stored* mask of FTN's oracle protocol);
- ``tasks_seen`` / ``task_key`` / ``task_index``: the tasks in first-seen order (ids hidden: their ordinal), which
  FixedMask's pre-assigned blocks are numbered by.

It implements the interface :class:`clenv.probes.MaskRecovery` calls, ``stored_mask(task_id)``,
``recover_mask(x, y)`` and ``using_mask(mask)``, except ``recover_mask`` itself, which is the method's own (and
:meth:`MaskRoutedAgent.best_stored_mask`, the stored mask of lowest support loss, is the choice of FixedMask and
SupSup). A subclass supplies ``initial_mask()`` and ``support_loss(x, y, mask)``.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["MaskRoutedAgent"]


class MaskRoutedAgent:
    """Mixin for a :class:`agents.base.SupervisedAgent` subclass routed by one binary mask; list it before the
    supervised base (``class FTNAgent(MaskRoutedAgent, SupervisedAgent)``) so that its hooks run through ``super()``.

    The mask state (``mask``, ``stored_masks``, ``tasks_seen``, ``task_key``) is created after the base's constructor
    and is part of ``state_dict``; ``on_task_switch`` records the task (after the base's hook). The Adam reset at task
    boundaries (Remark 2.2) is the subclass's, which runs it after this hook.
    """

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.mask: torch.Tensor | None = self.initial_mask()
        self.stored_masks: dict[int, torch.Tensor] = {}
        self.tasks_seen: list[int] = []
        self.task_key = 0  # the env's id of the current task (its first-seen ordinal when ids are hidden)

    def initial_mask(self) -> torch.Tensor | None:
        """The mask before any training batch (None: every component on)."""
        return None

    @property
    def task_index(self) -> int:
        """Position of the current task in the order tasks were first seen (FixedMask's block number)."""
        return self.tasks_seen.index(self.task_key) if self.task_key in self.tasks_seen else 0

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        key = len(self.tasks_seen) if task_id is None else int(task_id)
        if key not in self.tasks_seen:
            self.tasks_seen.append(key)
        self.task_key = key

    def store_mask(self, mask: torch.Tensor) -> None:
        """Record ``mask`` as the current task's stored mask (a detached copy)."""
        self.stored_masks[self.task_key] = mask.detach().clone()

    # ------------------------------------------------------------------ the interface MaskRecovery calls
    def stored_mask(self, task_id: int) -> torch.Tensor | None:
        """The mask task ``task_id`` (the env's id) was last trained through; None if it was not trained."""
        return self.stored_masks.get(int(task_id))

    @contextlib.contextmanager
    def using_mask(self, mask: torch.Tensor):
        """Predictions inside the block route through ``mask``."""
        before = self.mask
        self.mask = mask.to(self.device, torch.float32)
        try:
            yield
        finally:
            self.mask = before

    def support_loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        """The task loss of the labelled batch ``(x, y)`` routed through ``mask`` (evaluation mode, no gradient, no
        statistic changed)."""
        raise NotImplementedError

    def best_stored_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The stored mask of lowest support loss on ``(x, y)`` (ties: the lowest task id); the current mask when
        nothing is stored yet. No task identity is used."""
        if not self.stored_masks:
            return self.mask.clone()
        losses = {t: self.support_loss(x, y, m) for t, m in sorted(self.stored_masks.items())}
        return self.stored_masks[min(losses, key=losses.get)].clone()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask": None if self.mask is None else self.mask.clone(),
                "tasks_seen": list(self.tasks_seen), "task_key": self.task_key,
                "stored_masks": {t: m.clone() for t, m in self.stored_masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.mask = None if state["mask"] is None else state["mask"].to(self.device).clone()
        self.tasks_seen = list(state["tasks_seen"])
        self.task_key = int(state["task_key"])
        self.stored_masks = {int(t): m.to(self.device).clone() for t, m in state["stored_masks"].items()}
