"""Mask recovery: every task under its stored training mask (oracle) and under a mask recovered from a support batch.

The two evaluation protocols of Functional Task Networks (002_b6d509c9f1140765.txt, Section 3, Tables 1-5). A
mask-routed agent (duck typing; clenv does not import ``agents``) provides

- ``stored_mask(task_id) -> tensor | None``: the mask task ``task_id`` was trained through (None: not trained);
- ``recover_mask(x, y) -> tensor``: a mask found from a labelled support batch with no task identity;
- ``using_mask(mask)``: a context manager inside which ``predict`` routes through ``mask``.

Any other agent is measured too: both protocols are then its plain predictions, so NoMask-like baselines and every
other method sit in the same table.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clenv.metrics.forgetting import average_accuracy, forgetting_measure
from clenv.probes.base import Probe, agent_inputs

__all__ = ["MaskRecovery", "score"]


def score(agent, data, task_type: str) -> float:
    """Over (x, y) batches: accuracy of the argmax of ``agent.predict`` (``"classification"``), mean squared error
    of its first output (``"regression"``), or per-token cross-entropy in nats of its (batch, length, vocabulary)
    logits over the positions whose label is not -100 (``"language"``)."""
    total, n = 0.0, 0
    for x, y in data:
        with torch.no_grad():
            out = agent.predict(agent_inputs(agent, x))
        y = y.to(out.device)
        if task_type == "regression":
            total += float(((out[:, 0].float() - y.float()) ** 2).sum())
        elif task_type == "language":
            scored = y != -100
            total += float(F.cross_entropy(out.float().flatten(0, 1), y.flatten(), ignore_index=-100,
                                           reduction="sum"))
            n += int(scored.sum())
            continue
        else:
            total += float((out.argmax(1) == y).sum())
        n += int(y.numel())
    return total / n if n else float("nan")


class MaskRecovery(Probe):
    """At every task end, each task trained so far under both protocols: its stored mask (``*_stored``) and a mask
    recovered from ``support_samples`` labelled samples of its support split (the headline numbers).

    Metrics (``acc`` on classification streams, ``mse`` on regression ones, ``ce``, the per-token cross-entropy, on
    language streams; below ``acc`` stands for the stream's): ``acc`` / ``mse`` / ``ce`` and ``fm`` under mask
    recovery, ``acc_stored`` / ``mse_stored`` and ``fm_stored`` under the stored masks (the final row of each matrix
    averaged over tasks; FM as :func:`clenv.metrics.forgetting.forgetting_measure`), ``acc_prior`` /
    ``acc_stored_prior`` (the same over the tasks before the last, what Table 4 decomposes), ``recall_error`` (how
    much recovery loses against the stored masks on those tasks: stored - recovered accuracy, recovered - stored MSE),
    ``mask_overlap`` (mean pairwise |m_i & m_j| / k of the stored masks) and ``mask_recall`` (mean |recovered & stored|
    / k at the end). Records: ``perf_recovered`` and ``perf_stored`` (rows: after task i), ``masks_stored`` and
    ``masks_recovered`` (tasks x H, the final masks) and ``mask_grid`` (D of the D x D grid when the agent has one).

    Args:
        samples: held-out test samples per task.
        support_samples: labelled samples the recovery sees (the training batch size, 256, in the paper).
        support_split: the env's split they come from (None: ``"support"`` when the env has it, else ``"train"``).
    """

    OPTIONS = ("samples", "support_samples", "support_split")

    def __init__(self, *, samples: int = 1024, support_samples: int = 256, support_split: str | None = None):
        super().__init__()
        if int(samples) < 1 or int(support_samples) < 1:
            raise ValueError(f"samples and support_samples must be >= 1, got {samples}, {support_samples}")
        self.samples, self.support_samples, self.support_split = int(samples), int(support_samples), support_split

    def start(self, env, agent, fresh: bool) -> None:
        T = self.num_tasks
        self.task_type = getattr(self.env, "task_type", "classification")
        self.lower_is_better = self.task_type in ("regression", "language")
        self.stored = np.full((T, T), np.nan)
        self.recovered = np.full((T, T), np.nan)
        self.final_recovered: dict[int, torch.Tensor] = {}

    @property
    def metric(self) -> str:
        return {"regression": "mse", "language": "ce"}.get(self.task_type, "acc")

    def _support(self, task: int):
        split = self.support_split or ("support" if "support" in getattr(self.env, "splits", ()) else "train")
        x, y = self.subset(task, split, self.support_samples)[0]
        return x, y

    def on_task_end(self, env, agent, task_id: int, result) -> None:
        i = int(task_id)
        self.scalars = {}
        if not 0 <= i < self.num_tasks:
            return
        masked = all(callable(getattr(agent, n, None)) for n in ("stored_mask", "recover_mask", "using_mask"))
        with self.timed():
            for j in self.seen_tasks(result):
                test = self.subset(j, "test", self.samples)
                if not masked:
                    self.stored[i, j] = self.recovered[i, j] = score(agent, test, self.task_type)
                    continue
                stored = agent.stored_mask(j)
                if stored is None:
                    continue
                with agent.using_mask(stored):
                    self.stored[i, j] = score(agent, test, self.task_type)
                x, y = self._support(j)
                mask = agent.recover_mask(agent_inputs(agent, x), y.to(getattr(agent, "device", y.device)))
                self.final_recovered[j] = mask.detach().cpu()
                with agent.using_mask(mask):
                    self.recovered[i, j] = score(agent, test, self.task_type)
        self.scalars = {f"{self.metric}_recovered": float(self.recovered[i, i]),
                        f"{self.metric}_stored": float(self.stored[i, i])}

    def on_run_end(self, env, agent, result) -> None:
        seen = self.seen_tasks(result)
        if seen:
            better = not self.lower_is_better
            m = self.metric
            rec, sto = self.recovered[np.ix_(seen, seen)], self.stored[np.ix_(seen, seen)]
            result.records["perf_recovered"], result.records["perf_stored"] = rec, sto
            out = {m: average_accuracy(rec), "fm": forgetting_measure(rec, better),
                   f"{m}_stored": average_accuracy(sto), "fm_stored": forgetting_measure(sto, better)}
            if len(seen) > 1:
                out[f"{m}_prior"] = float(np.nanmean(rec[-1, :-1]))
                out[f"{m}_stored_prior"] = float(np.nanmean(sto[-1, :-1]))
                sign = 1.0 if better else -1.0
                out["recall_error"] = sign * (out[f"{m}_stored_prior"] - out[f"{m}_prior"])
            stored = [agent.stored_mask(t) if callable(getattr(agent, "stored_mask", None)) else None for t in seen]
            if all(s is not None for s in stored):
                S = torch.stack([s.detach().float().cpu() for s in stored])
                result.records["masks_stored"] = S.numpy()
                k = S.sum(1).clamp_min(1.0)
                overlap = (S @ S.T) / k[:, None]
                if len(seen) > 1:
                    off = ~torch.eye(len(seen), dtype=torch.bool)
                    out["mask_overlap"] = float(overlap[off].mean())
                if all(t in self.final_recovered for t in seen):
                    R = torch.stack([self.final_recovered[t].float() for t in seen])
                    result.records["masks_recovered"] = R.numpy()
                    out["mask_recall"] = float(((R * S).sum(1) / k).mean())
                grid = getattr(agent, "mask_grid", None)
                if grid is not None:
                    result.records["mask_grid"] = np.array(int(grid))
            result.metrics.update(out)
        super().on_run_end(env, agent, result)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stored": self.stored.copy(), "recovered": self.recovered.copy(),
                "final_recovered": {t: m.clone() for t, m in self.final_recovered.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stored, self.recovered = np.array(state["stored"]), np.array(state["recovered"])
        self.final_recovered = {int(t): m.clone() for t, m in state["final_recovered"].items()}
