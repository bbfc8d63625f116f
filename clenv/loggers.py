"""Loggers, and the one place that feeds them: :class:`LogFeed` (``Evaluation(loggers=[...])`` builds it).

A logger has ``log(scalars: dict[str, float], step: int)``; ``summary(result)`` and ``close()`` are optional and run
at the end of the run. The result records are always kept in ``result.records`` (and saved by
:func:`clenv.results.save_run`); these loggers are extra views.

- :class:`TensorBoardLogger`: scalars to TensorBoard event files (needs the optional ``tensorboard`` package).
- :class:`ConsoleSummary`: a short table of the run's metrics printed at the end.
"""

from __future__ import annotations

import math
import sys
from typing import TextIO

__all__ = ["LogFeed", "TensorBoardLogger", "ConsoleSummary", "format_summary"]


class LogFeed:
    """A callback that feeds ``loggers``: at every task end the task's online accuracy (``online_task_acc``) and
    the ``scalars`` each of ``sources`` (probes, :class:`clenv.probes.Probe`) measured at that task end; at the end
    of the run every metric, then each logger's ``summary(result)`` and ``close()``. Place it after its sources."""

    def __init__(self, loggers, sources=()):
        self.loggers = list(loggers)
        self.sources = list(sources)

    def on_run_start(self, env, agent, result) -> None: ...

    def on_step(self, env, agent, step: dict) -> None: ...

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        scalars: dict[str, float] = {}
        if result.task_accuracy:
            scalars["online_task_acc"] = float(result.task_accuracy[-1])
        for src in self.sources:
            scalars.update(getattr(src, "scalars", {}) or {})
        self._log(scalars, result.steps)

    def on_run_end(self, env, agent, result) -> None:
        self._log({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}, result.steps)
        for lg in self.loggers:
            if hasattr(lg, "summary"):
                lg.summary(result)
            if hasattr(lg, "close"):
                lg.close()

    def _log(self, scalars: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(scalars, int(step))


class TensorBoardLogger:
    """Write every logged scalar to TensorBoard under ``log_dir`` (tags as given, e.g. ``lca_f``, ``fc0/srank``).
    Non-finite values are skipped."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch's writer needs the tensorboard package
            raise ImportError("TensorBoardLogger needs the optional 'tensorboard' package: "
                              "pip install 'clenv[tensorboard]'") from e
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: dict, step: int) -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def format_summary(result, keys=None) -> str:
    """A plain-text summary of a run: header line, then one ``name  value`` line per metric."""
    head = (f"{result.agent} on {result.env_id}  seed={result.seed}  steps={result.steps}  "
            f"tasks={len(result.task_accuracy)}  wall={result.wall_time:.1f}s")
    metrics = result.metrics if keys is None else {k: result.metrics[k] for k in keys if k in result.metrics}
    width = max((len(k) for k in metrics), default=0)
    lines = [head] + [f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items()]
    return "\n".join(lines)


class ConsoleSummary:
    """Print :func:`format_summary` of the run when it ends (to ``stream``, default stdout). Per-step logging is
    left to the progress bar."""

    def __init__(self, keys=None, stream: TextIO | None = None):
        self.keys = keys
        self.stream = stream

    def log(self, scalars: dict, step: int) -> None:
        pass

    def summary(self, result) -> None:
        print(format_summary(result, self.keys), file=self.stream or sys.stdout)
