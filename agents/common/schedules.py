"""Learning-rate schedules, written once: the factor on each parameter group's starting rate at a given step.
:class:`agents.base.SupervisedAgent` applies them (``lr_schedule``); agents with a training loop of their own (the
adapter memories' task predictor) call :func:`schedule_factor` directly."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "schedule_factor"]

SCHEDULES = (None, "cosine")


def schedule_factor(kind: str | None, step: int, total: int, *, final: float = 0.0, warmup: float = 0.0) -> float:
    """The factor on the starting learning rate at ``step`` of a schedule of ``total`` steps: 1 for ``kind=None``;
    for ``"cosine"`` a linear warm-up from 0 over the first ``warmup`` share of the steps (NeuroLoRA's 3%), then a
    cosine decay from 1 to ``final`` at the last step (``total - 1``), held at ``final`` after it."""
    if kind is None:
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown lr_schedule {kind!r}; expected one of {SCHEDULES}")
    total = max(1, int(total))
    ramp = int(math.ceil(warmup * total))
    if step < ramp:
        return (step + 1) / ramp
    frac = min(1.0, (step - ramp) / max(1, total - 1 - ramp))
    return final + 0.5 * (1.0 - final) * (1.0 + math.cos(math.pi * frac))
