"""Recall of task adapters from associative memories (004_49f6201e6e679480.txt, Section 4, Table 1).

At the end of the run every task trained is evaluated on its held-out test split with its adapter as each memory
recalls it, under the paper's two protocols:

- **TIL** (task-incremental): the task's id is given, so its key recalls its adapter.
- **MTS** (multi-task switching, ``mts=True``): the agent's task predictor, trained here on the union of the tasks'
  training splits, predicts each test image's task; that task's key recalls the adapter that classifies it. An image
  whose task is mispredicted is still scored against its own label, so with local labels it can be right by chance,
  as in the paper's protocol.

Metrics (fractions, as every accuracy in clenv; FAA = the mean over tasks of the final accuracy): ``faa_gt`` (the
adapters from the exact store: the ground truth), per memory ``m`` other than the exact one ``faa_til_{m}``,
``d_til_{m}`` = ``faa_gt`` - ``faa_til_{m}`` and ``recall_error_{m}`` (the mean over tasks of ||theta_t -
recalled theta_t||_2); ``memory_bytes_{m}`` for every memory and ``adapter_bytes`` (every adapter stored as it is);
with ``mts``: ``task_acc`` (the share of test images assigned their own task) and, per memory including the exact one,
``faa_mts_{m}`` and ``d_mts_{m}`` = ``faa_gt`` - ``faa_mts_{m}``. ``records["adapter_recall"]`` holds the per-task
numbers behind them.

What the agent must provide (duck typing; clenv never imports ``agents``): ``commit_task()`` (write the running
task's adapter, once), ``stored_tasks``, ``memory_names`` (the first the exact store), ``recalled_adapter(task,
memory)``, ``recall_error(task, memory)``, ``using_adapter(vector)`` (a context manager), ``memory_bytes(memory)``,
``adapter_bytes``, ``predict(x)``, and for MTS ``fit_task_predictor(data)`` and ``predict_task(x)``
(:class:`agents.adapters.memory.agent.AdapterMemoryAgent` has them).
"""

from __future__ import annotations

import numpy as np
import torch

from clenv.probes.base import Probe, agent_inputs

__all__ = ["AdapterRecall"]


def _correct(agent, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (agent.predict(x).argmax(1).to(y.device) == y)


class AdapterRecall(Probe):
    """TIL and MTS accuracy of recalled adapters at the run's end (see the module docstring).

    Args:
        samples: held-out test samples per task (None: the whole test split).
        mts: also train the task predictor and measure the MTS protocol.
        predictor_samples: training samples per task the task predictor sees (None: the whole training split).
    """

    OPTIONS = ("samples", "mts", "predictor_samples")

    def __init__(self, *, samples: int | None = None, mts: bool = True, predictor_samples: int | None = None):
        super().__init__()
        for name, value in (("samples", samples), ("predictor_samples", predictor_samples)):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"{name} must be None (all) or an integer >= 1, got {value!r}")
        self.samples = None if samples is None else int(samples)
        self.predictor_samples = None if predictor_samples is None else int(predictor_samples)
        self.mts = bool(mts)

    def on_run_start(self, env, agent, result) -> None:
        missing = [n for n in ("commit_task", "recalled_adapter", "using_adapter", "memory_names", "stored_tasks")
                   if not hasattr(agent, n)]
        if self.mts:
            missing += [n for n in ("fit_task_predictor", "predict_task") if not hasattr(agent, n)]
        if missing:
            raise TypeError(f"AdapterRecall needs an agent that stores task adapters in memories (e.g. "
                            f"agents.make('adapter_memory', env)); {type(agent).__name__} lacks {missing}")
        super().on_run_start(env, agent, result)

    def _test(self, agent, task: int):
        n = self.samples if self.samples is not None else 10**9
        device = getattr(agent, "device", None)
        return [(agent_inputs(agent, x), y.to(device) if device is not None else y)
                for x, y in self.subset(task, "test", n)]

    def on_run_end(self, env, agent, result) -> None:
        with self.timed():
            agent.commit_task()
            tasks = [t for t in agent.stored_tasks if 0 <= t < self.num_tasks]
            tasks = list(dict.fromkeys(tasks))
            if tasks:
                self._measure(agent, tasks, result)
        super().on_run_end(env, agent, result)

    def _measure(self, agent, tasks: list[int], result) -> None:
        memories = list(agent.memory_names)
        exact = memories[0]
        recalled = {(t, m): agent.recalled_adapter(t, m) for t in tasks for m in memories}
        til = {m: [] for m in memories}
        for t in tasks:
            test = self._test(agent, t)
            for m in memories:
                with agent.using_adapter(recalled[t, m]):
                    correct = sum(int(_correct(agent, x, y).sum()) for x, y in test)
                til[m].append(correct / sum(len(y) for _, y in test))
        faa = {m: float(np.mean(til[m])) for m in memories}
        out = {"faa_gt": faa[exact], "adapter_bytes": float(agent.adapter_bytes)}
        errors = {m: [agent.recall_error(t, m) for t in tasks] for m in memories}
        for m in memories:
            out[f"memory_bytes_{m}"] = float(agent.memory_bytes(m))
            if m != exact:
                out[f"faa_til_{m}"] = faa[m]
                out[f"d_til_{m}"] = faa[exact] - faa[m]
                out[f"recall_error_{m}"] = float(np.mean(errors[m]))
        record = {"tasks": tasks, "memories": memories, "til_accuracy": til, "recall_error": errors}
        if self.mts and len(tasks) > 1:
            n = self.predictor_samples if self.predictor_samples is not None else 10**9
            data = {t: list(self.env.test_batches(t, split="train", max_samples=n)) for t in tasks}
            record["predictor"] = agent.fit_task_predictor(data)
            mts = {m: [] for m in memories}
            task_correct = []
            for t in tasks:
                test = self._test(agent, t)
                predicted = [agent.predict_task(x) for x, _ in test]
                total = sum(len(y) for _, y in test)
                task_correct.append(sum(int((p == t).sum()) for p in predicted) / total)
                for m in memories:
                    correct = 0
                    for task in sorted({int(v) for p in predicted for v in p.tolist()}):
                        with agent.using_adapter(recalled[task, m]):
                            for (x, y), p in zip(test, predicted):
                                rows = p == task
                                if rows.any():
                                    correct += int(_correct(agent, x[rows], y[rows]).sum())
                    mts[m].append(correct / total)
            out["task_acc"] = float(np.mean(task_correct))
            for m in memories:
                out[f"faa_mts_{m}"] = float(np.mean(mts[m]))
                out[f"d_mts_{m}"] = faa[exact] - out[f"faa_mts_{m}"]
            record.update(mts_accuracy=mts, task_accuracy=task_correct)
        result.records["adapter_recall"] = record
        result.metrics.update(out)
