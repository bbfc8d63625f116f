"""Loggers fed by :class:`clenv.Evaluation` (``Evaluation(loggers=[...])``).

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

__all__ = ["TensorBoardLogger", "ConsoleSummary", "format_summary"]


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
