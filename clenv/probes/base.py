"""What every probe shares: timing under isolated RNGs, cached held-out subsets, the accuracy of an agent."""

from __future__ import annotations

import contextlib
import time

import torch

from clenv.data.scaling import to_unit_float
from clenv.loop import Callback, RunResult
from clenv.seeding import isolated_rng

__all__ = ["Probe", "agent_inputs", "accuracy"]


def agent_inputs(agent, x) -> torch.Tensor:
    """``x`` as the agent's network sees it: ``agent.preprocess(x)`` when it has one, else :func:`to_unit_float`."""
    pre = getattr(agent, "preprocess", None)
    return pre(x) if callable(pre) else to_unit_float(x)


def accuracy(agent, data) -> float:
    """Fraction of correct argmax predictions of ``agent.predict`` (else ``agent.forward``) over (x, y) batches. On
    language streams (logits (batch, length, vocabulary), labels (batch, length)) it is the per-token accuracy over
    the positions whose label is not -100, the stream's own reward."""
    correct, total = 0, 0
    predict = getattr(agent, "predict", None)
    for x, y in data:
        xp = agent_inputs(agent, x)
        with torch.no_grad():
            logits = predict(xp) if callable(predict) else agent.forward(xp)
        if logits.dim() == 3 and y.dim() == 2:  # next-token logits: argmax over the vocabulary, scored positions
            scored = y != -100
            correct += int(((logits.argmax(-1).to(y.device) == y) & scored).sum())
            total += int(scored.sum())
            continue
        correct += int((logits.argmax(1).to(y.device) == y).sum())
        total += int(y.numel())
    return correct / total if total else float("nan")


class Probe(Callback):
    """Base of the probe callbacks of :mod:`clenv.probes`.

    A probe measures the agent during :func:`clenv.run` without changing the run: it evaluates copies or runs in
    ``no_grad`` on the env's held-out data, under saved and restored global RNG states (:func:`isolated_rng`), and
    its seconds are added to ``result.metrics["probe_time_s"]``. ``scalars`` holds what it measured at the last task
    end (read by :class:`clenv.loggers.LogFeed`). Its state (``state_dict`` / ``load_state_dict``) is everything it
    measured so far, so a checkpointed run resumes it exactly; caches are rebuilt.

    Subclasses set ``needs_test_data`` when they read ``env.unwrapped.test_batches``, reset their state in
    :meth:`start` and extend :meth:`state_dict` / :meth:`load_state_dict` through ``super()``.
    """

    needs_test_data = True
    #: the constructor options that define what the probe measures (a resumed run must use the same)
    OPTIONS: tuple[str, ...] = ()

    def __init__(self):
        self.probe_time = 0.0
        self.scalars: dict[str, float] = {}
        self._data: dict[tuple, list] = {}

    @property
    def options(self) -> dict:
        return {k: getattr(self, k) for k in self.OPTIONS}

    # ------------------------------------------------------------------ callback hooks
    def on_run_start(self, env, agent, result: RunResult) -> None:
        self.env = getattr(env, "unwrapped", env)
        self.num_tasks = int(getattr(self.env, "num_tasks", 1) or 1)
        if self.needs_test_data and not hasattr(self.env, "test_batches"):
            raise TypeError(f"{type(self).__name__} needs env.unwrapped.test_batches(task_id, split=, max_samples=); "
                            f"{type(self.env).__name__} has none")
        self.probe_time, self.scalars, self._data = 0.0, {}, {}
        self.start(env, agent, fresh=result.steps == 0)

    def start(self, env, agent, fresh: bool) -> None:
        """Reset the probe's state for a run; ``fresh`` is False when the run continues a checkpoint (its state is
        loaded next), so measurements of the untrained agent are taken only when it is True."""

    def on_run_end(self, env, agent, result: RunResult) -> None:
        result.metrics["probe_time_s"] = result.metrics.get("probe_time_s", 0.0) + float(self.probe_time)
        self._data = {}

    def state_dict(self) -> dict:
        return {"probe_time": self.probe_time}

    def load_state_dict(self, state: dict) -> None:
        self.probe_time = float(state["probe_time"])

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def timed(self):
        """Time a measurement and keep it off the run's global random streams."""
        t0 = time.perf_counter()
        try:
            with isolated_rng():
                yield
        finally:
            self.probe_time += time.perf_counter() - t0

    def subset(self, task: int, split: str, n: int, context: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed subset of a task's samples (the first n of the split), cached as uint8 batches. ``context``: on a
        joint stream (task k = the union of contexts 0..k), the k-th context's own samples."""
        context = context and bool((getattr(self.env, "config", None) or {}).get("joint"))
        key = (task, split, n, context)
        if key not in self._data:
            kw = {"context": True} if context else {}
            self._data[key] = list(self.env.test_batches(task, split=split, max_samples=n, **kw))
        return self._data[key]

    def seen_tasks(self, result: RunResult) -> list[int]:
        """The tasks of the run in first-seen order that index the env's task range."""
        return [t for t in dict.fromkeys(result.task_ids) if 0 <= t < self.num_tasks]
