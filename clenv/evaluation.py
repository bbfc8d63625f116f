"""The evaluation suite: one callback that runs the probes you ask for during :func:`clenv.run` and puts every
metric in ``result.metrics`` (a flat ``dict[str, float]``) and the arrays behind them in ``result.records``.

Usage::

    ev = clenv.Evaluation(forgetting=True, adaptation=True, stability_every=10, plasticity=True)
    result = clenv.run(env, agent, seed=0, evaluation=ev)
    result.metrics["lca_f"], result.records["accuracy_matrix"]

``Evaluation.all()`` turns every probe on. A probe costs nothing unless it is asked for; the online metrics are
computed from what the loop records anyway.

Metric names (all floats; accuracies in [0, 1]):

- online (always): ``avg_online_acc``, ``online_acc_last{10,25,50,75,100}``, ``final_task_online_acc``
  (:mod:`clenv.metrics.online`);
- ``heldout=True``: ``test_acc`` (mean over tasks of the held-out accuracy right after the task, Figure 7 of
  NeuMoSync); per-task values in ``records["test_accuracy"]``;
- ``forgetting=True``: ``acc``, ``af_chaudhry``, ``af_neumosync``, ``bwt``, ``fwt``, ``fm``
  (:mod:`clenv.metrics.forgetting`); ``records["accuracy_matrix"]`` (R[i][j], rows: after task i) and
  ``records["random_init_accuracy"]``;
- ``adaptation=True``: ``lca_f``, ``lca_b``, ``lca_0``, ``lca_0_b``, ``fkt``, ``bkt``, ``fkt_gamma_half``,
  ``fkt_gamma``, ``bkt_gamma_half``, ``bkt_gamma``, ``gamma`` (:mod:`clenv.metrics.adaptation`);
  ``records["probe_b"]``, ``records["probe_forward"]``, ``records["probe_backward"]``, ``records["probe_scratch"]``;
- ``stability_every=k``: ``min_acc``, ``wc_acc``, ``avg_sg``, ``sg_{k}to{k+1}``, windowed forgetting / plasticity
  ``wf_{10,100}`` / ``wp_{10,100}`` (De Lange); with ``ngm_compat=True`` also
  ``ngm_avg_acc``, ``ngm_avg_min_acc``, ``ngm_wc_acc``, ``ngm_avg_sg``, ``ngm_sg_{k}to{k+1}`` on task 0's accuracy
  (:mod:`clenv.metrics.stability`); ``records["stability_step"|"stability_block"|"stability_acc"|
  "stability_min_acc"|"stability_wc_acc"]``;
- ``plasticity=True``: the last task's pooled ``dormant_ratio``, ``dead_fraction``, ``feature_rank``,
  ``weight_magnitude``, ``zero_grad_fraction``; every task's per-layer values in ``records["diagnostics"]``
  (:mod:`clenv.metrics.plasticity`);
- agent traces (``agent_traces=True``, on by default): an agent with ``trace() -> dict[str, float]`` is read
  every ``trace_every`` steps into ``records["agent_diagnostics"]`` (``{"step": [...], name: [...]}``; entries that
  are not scalars are skipped) and its last values become ``agent/{name}``; an agent with ``diagnostics() -> dict``
  is read at every task end into ``records["agent_trace"]`` (any JSON-able values, arrays included);
- ``probe_time_s``: seconds spent in probes.

What an agent must provide (duck typing; clenv never imports ``agents``):

- every probe: ``predict(x) -> logits`` in evaluation mode without side effects, on inputs from
  ``preprocess(obs)`` (without ``preprocess``, uint8 inputs are scaled to [0, 1]);
- ``adaptation``: ``clone()`` (an independent copy), ``fresh()`` (a newly initialised agent of the same kind) and
  ``learn(x, y)`` (one training step; without it the probe drives ``act`` / ``observe``); ``on_task_switch(k)`` is
  called on a probe copy before it trains on task k;
- ``plasticity``: ``network`` with ``unit_layers`` and ``capture()`` (``agents.backbones.Backbone``), and optionally
  ``forward(x)``.

What the env must provide: ``unwrapped.test_batches(k, split=, max_samples=)``, ``unwrapped.num_tasks`` and, for
``adaptation``, ``unwrapped.eval_env()`` whose ``reset(options={"task_id": k})`` replays task k.

Probes run under saved and restored torch / numpy / ``random`` global RNG states, on copies of the agent, and on a
separate evaluation env: turning them on does not change the main run's numbers.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from clenv.loop import Callback, RunResult
from clenv.metrics.adaptation import adaptation_metrics
from clenv.metrics.forgetting import forgetting_metrics
from clenv.metrics.online import WINDOWS, online_metrics
from clenv.metrics.stability import continual_eval_metrics, min_acc_curve, ngm_stability

__all__ = ["Evaluation", "probe_gamma"]


@contextlib.contextmanager
def _isolated_rng():
    """Run a probe without consuming the main run's global random streams."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def probe_gamma(env) -> tuple[int, str]:
    """The fast-adaptation budget gamma for ``env`` and where it came from.

    Table 5's gamma (``clenv.protocol(env).gamma``) applies when the env keeps its registered per-task budget
    (samples per task / class, epochs, batch size); otherwise the paper's rule, 20% of the steps of a task."""
    from clenv.registry import protocol

    u = getattr(env, "unwrapped", env)
    row = protocol(env)
    config = getattr(u, "config", {}) or {}
    budget_keys = ("samples_per_task", "samples_per_class", "epochs_per_task", "steps_per_task", "batch_size")
    if row is not None and row.gamma and all(config.get(k) == row.kwargs.get(k) for k in budget_keys
                                             if k in row.kwargs):
        return int(row.gamma), "table5"
    steps = u.steps_per_task(0) if hasattr(u, "steps_per_task") else None
    if steps is None:
        raise ValueError("cannot choose gamma: the env has no protocol row and no steps_per_task(); pass gamma=")
    return max(1, int(round(0.2 * steps))), "20% of steps per task"


class Evaluation(Callback):
    """Metrics and probes for one run (see the module docstring for names and the agent / env requirements).

    Args:
        windows: fractions of the last tasks for ``online_acc_last{p}``.
        heldout: held-out test accuracy of each task right after it was trained.
        forgetting: the full accuracy matrix R (every task's test subset after every task) and the random-init
            accuracies; implies ``heldout``.
        adaptation: LCA / FKT / BKT probes with budget ``gamma`` (default: :func:`probe_gamma`), accuracy measured
            at every ``probe_every``-th batch (plus gamma/2 and gamma) on ``probe_samples`` samples of the task's
            ``probe_split`` split (the paper's A_{b,k} is a training accuracy).
        stability_every: evaluate all tasks seen so far every k steps (and at every task end) on
            ``stability_samples`` held-out samples each; ``ngm_compat`` adds the NGM-SGD script's metrics.
        plasticity: per-layer diagnostics at every task end on ``plasticity_samples`` training samples of that task
            (ReDo ``tau``, srank ``delta``).
        agent_traces: record the agent's ``trace()`` every ``trace_every`` steps and ``diagnostics()`` per task.
        eval_samples: held-out samples per task for R and ``test_acc``.
        loggers: objects with ``log(scalars: dict, step: int)`` and optionally ``summary(result)`` / ``close()``
            (:mod:`clenv.loggers`).
    """

    def __init__(self, *, windows: Sequence[float] = WINDOWS, heldout: bool = False, forgetting: bool = False,
                 adaptation: bool = False, stability_every: int | None = None, ngm_compat: bool = False,
                 plasticity: bool = False, agent_traces: bool = True, gamma: int | None = None, probe_every: int = 1,
                 probe_samples: int = 256, probe_split: str = "train", eval_samples: int = 500,
                 stability_samples: int = 256, plasticity_samples: int = 500, tau: float = 0.1,
                 delta: float = 0.01, trace_every: int = 1, loggers: Iterable[Any] = ()):
        if stability_every is not None and int(stability_every) < 1:
            raise ValueError(f"stability_every must be >= 1 or None, got {stability_every}")
        if ngm_compat and stability_every is None:
            raise ValueError("ngm_compat=True needs stability_every (the NGM metrics are computed on its evaluations)")
        if int(probe_every) < 1 or int(trace_every) < 1:
            raise ValueError("probe_every and trace_every must be >= 1")
        if gamma is not None and int(gamma) < 1:
            raise ValueError(f"gamma must be >= 1, got {gamma}")
        if probe_split not in ("train", "test"):
            raise ValueError(f"probe_split must be 'train' or 'test', got {probe_split!r}")
        self.windows = tuple(windows)
        self.forgetting = bool(forgetting)
        self.heldout = bool(heldout) or self.forgetting
        self.adaptation = bool(adaptation)
        self.stability_every = None if stability_every is None else int(stability_every)
        self.ngm_compat = bool(ngm_compat)
        self.plasticity = bool(plasticity)
        self.agent_traces = bool(agent_traces)
        self.gamma = None if gamma is None else int(gamma)
        self.probe_every = int(probe_every)
        self.probe_samples = int(probe_samples)
        self.probe_split = probe_split
        self.eval_samples = int(eval_samples)
        self.stability_samples = int(stability_samples)
        self.plasticity_samples = int(plasticity_samples)
        self.tau, self.delta = float(tau), float(delta)
        self.trace_every = int(trace_every)
        self.loggers = list(loggers)

    @classmethod
    def all(cls, **overrides) -> "Evaluation":
        """Every probe on: held-out accuracy, forgetting, adaptation, stability every 10 steps with the NGM
        metrics, plasticity diagnostics and agent traces."""
        kw = dict(heldout=True, forgetting=True, adaptation=True, stability_every=10, ngm_compat=True,
                  plasticity=True, agent_traces=True)
        kw.update(overrides)
        return cls(**kw)

    @property
    def needs_probes(self) -> bool:
        return self.heldout or self.adaptation or self.stability_every is not None or self.plasticity

    # ------------------------------------------------------------------ callback hooks
    def on_run_start(self, env, agent, result: RunResult) -> None:
        self._u = getattr(env, "unwrapped", env)
        self._eval_env = None
        self._data: dict[tuple, list] = {}
        self._probe_time = 0.0
        self._step = 0
        T = int(getattr(self._u, "num_tasks", 1) or 1)
        self._T = T
        if self.needs_probes and not hasattr(self._u, "test_batches"):
            raise TypeError(f"{type(self._u).__name__} has no test_batches(task_id, split=, max_samples=): the "
                            "held-out, forgetting, adaptation, stability and plasticity probes need it")
        if self.adaptation:
            for name in ("clone", "fresh"):
                if not callable(getattr(agent, name, None)):
                    raise TypeError(f"adaptation probes need agent.{name}(); {type(agent).__name__} has none")
            if not hasattr(self._u, "eval_env"):
                raise TypeError("adaptation probes need env.unwrapped.eval_env() to replay tasks")
            if self.gamma is not None:
                self._gamma, self._gamma_source = self.gamma, "given"
            else:
                self._gamma, self._gamma_source = probe_gamma(env)
            g = self._gamma
            self._points = np.array(sorted(set(range(0, g + 1, self.probe_every)) | {g // 2, g}), dtype=np.int64)
            self._forward: dict[int, np.ndarray] = {}
        self._R = np.full((T, T), np.nan)
        self._b0 = np.full(T, np.nan)
        if self.forgetting:
            with self._timed():
                self._b0[:] = [self._accuracy(agent, self._subset(j, "test", self.eval_samples)) for j in range(T)]
        self._stab_steps: list[int] = []
        self._stab_block: list[int] = []
        self._stab_acc: list[np.ndarray] = []
        self._seen: list[int] = []
        self._diagnostics: list[dict] = []
        self._agent_diag: dict[str, list] = {"step": []}
        self._agent_trace: list[dict] = []
        if self.stability_every is not None:
            # The evaluation before any training: block 0 (its minimum includes the untrained start, as in NGM).
            self._stability_eval(agent, 0, 0)

    def on_step(self, env, agent, step: dict) -> None:
        n, task = int(step["step"]), int(step["task_id"])
        self._step = n
        if not self._seen or self._seen[-1] != task:
            self._seen.append(task)
            if self._stab_steps and self._stab_steps == [0] and self._stab_block[0] != task:
                self._stab_block[0] = task  # a run started on a later task (reset option task_id)
        if self.stability_every is not None:
            info = step.get("info", {}) or {}
            task_end = bool(info.get("task_switch", False)) or bool(step.get("terminated", False))
            if n % self.stability_every == 0 or task_end:
                self._stability_eval(agent, n, task)
        if self.agent_traces and n % self.trace_every == 0:
            tr = getattr(agent, "trace", None)
            if callable(tr):
                self._record_agent_diagnostics(n, tr())

    def on_task_end(self, env, agent, task_id: int, result: RunResult) -> None:
        i = int(task_id)
        scalars: dict[str, float] = {}
        if result.task_accuracy:
            scalars["online_task_acc"] = float(result.task_accuracy[-1])
        if self.heldout and 0 <= i < self._T:
            with self._timed():
                cols = range(self._T) if self.forgetting else [i]
                for j in cols:
                    self._R[i, j] = self._accuracy(agent, self._subset(j, "test", self.eval_samples))
            scalars["test_acc"] = float(self._R[i, i])
        if self.adaptation and i + 1 < self._T and (i + 1) not in self._forward:
            with self._timed():
                self._forward[i + 1] = self._probe(agent.clone(), i + 1)
        if self.plasticity:
            with self._timed():
                d = self._plasticity(agent, i)
            if d:
                self._diagnostics.append({"task": i, "step": self._step, **d})
                scalars.update({k: v for k, v in d.items() if "/" not in k})
        if self.agent_traces:
            diag = getattr(agent, "diagnostics", None)
            if callable(diag):
                self._agent_trace.append({"task": i, "step": self._step, **dict(diag())})
        self._log(scalars, self._step)

    def on_run_end(self, env, agent, result: RunResult) -> None:
        m: dict[str, float] = {}
        rec = result.records
        m.update(online_metrics(result.task_accuracy, self.windows))
        if self._step and (self.stability_every is not None) and self._stab_steps[-1] != self._step:
            self._stability_eval(agent, self._step, self._seen[-1] if self._seen else 0)
        seen = [t for t in dict.fromkeys(result.task_ids) if 0 <= t < self._T]
        if self.heldout and seen:
            test = np.array([self._R[t, t] for t in seen])
            rec["test_accuracy"] = test
            m["test_acc"] = float(np.nanmean(test))
        if self.forgetting and seen:
            R = self._R[np.ix_(seen, seen)]
            rec["accuracy_matrix"], rec["random_init_accuracy"] = R, self._b0[seen]
            m.update(forgetting_metrics(R, self._b0[seen]))
        if self.adaptation and seen:
            m.update(self._adaptation(agent, seen, rec))
        if self.stability_every is not None and self._stab_acc:
            acc = np.stack(self._stab_acc)
            block = np.array(self._stab_block)
            rec["stability_step"], rec["stability_block"], rec["stability_acc"] = np.array(self._stab_steps), block, acc
            cols = max(int(block.max()) + 1, 1)
            min_acc, wc = min_acc_curve(acc[:, :cols], block)
            rec["stability_min_acc"], rec["stability_wc_acc"] = min_acc, wc
            m.update(continual_eval_metrics(acc[:, :cols], block))
            if self.ngm_compat:
                m.update(ngm_stability(acc[:, 0], block))
        if self.plasticity and self._diagnostics:
            rec["diagnostics"] = list(self._diagnostics)
            last = self._diagnostics[-1]
            m.update({k: float(last[k]) for k in ("dormant_ratio", "dead_fraction", "feature_rank",
                                                  "weight_magnitude", "zero_grad_fraction") if k in last})
        if len(self._agent_diag["step"]):
            rec["agent_diagnostics"] = {k: np.asarray(v, dtype=np.float64) for k, v in self._agent_diag.items()}
            for k, v in self._agent_diag.items():
                if k != "step":
                    m[f"agent/{k}"] = float(v[-1])
        if self._agent_trace:
            rec["agent_trace"] = list(self._agent_trace)
        if self.adaptation:
            rec["probe_gamma_source"] = self._gamma_source
        m["probe_time_s"] = float(self._probe_time)
        result.metrics.update(m)
        self._log(m, result.steps)
        for lg in self.loggers:
            if hasattr(lg, "summary"):
                lg.summary(result)
            if hasattr(lg, "close"):
                lg.close()
        self._eval_env = None
        self._data = {}

    # ------------------------------------------------------------------ probes
    @contextlib.contextmanager
    def _timed(self):
        t0 = time.perf_counter()
        try:
            with _isolated_rng():
                yield
        finally:
            self._probe_time += time.perf_counter() - t0

    def _subset(self, task: int, split: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed subset of a task's samples (the first n of the split), cached as uint8 batches."""
        key = (task, split, n)
        if key not in self._data:
            self._data[key] = list(self._u.test_batches(task, split=split, max_samples=n))
        return self._data[key]

    @staticmethod
    def _prep(agent, x):
        pre = getattr(agent, "preprocess", None)
        if callable(pre):
            return pre(x)
        x = torch.as_tensor(x)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def _accuracy(self, agent, data) -> float:
        correct, total = 0, 0
        predict = getattr(agent, "predict", None)
        for x, y in data:
            xp = self._prep(agent, x)
            with torch.no_grad():
                logits = predict(xp) if callable(predict) else agent.forward(xp)
            correct += int((logits.argmax(1).to(y.device) == y).sum())
            total += int(y.numel())
        return correct / total if total else float("nan")

    def _probe_batches(self, task: int):
        """(obs, labels) of task ``task`` from the evaluation env, replaying the task when it runs out."""
        if self._eval_env is None:
            self._eval_env = self._u.eval_env()
        ev = self._eval_env
        space = ev.action_space
        dummy = np.zeros(space.shape, dtype=space.dtype)  # any valid action: the probe only needs the labels
        obs, info = ev.reset(options={"task_id": task})
        while True:
            nxt, _, term, trunc, info = ev.step(dummy)
            yield obs, info
            obs = ev.reset(options={"task_id": task})[0] if (term or trunc) else nxt

    def _train(self, agent, obs, info) -> None:
        learn, pre = getattr(agent, "learn", None), getattr(agent, "preprocess", None)
        if callable(learn) and callable(pre):
            x = pre(obs)
            learn(x, torch.as_tensor(np.asarray(info["labels"]), dtype=torch.int64, device=x.device))
        else:
            action = agent.act(obs, info)
            agent.observe(obs, action, 0.0, obs, False, False, info)

    def _probe(self, probe_agent, task: int) -> np.ndarray:
        """Accuracy of ``probe_agent`` on task ``task`` after b training batches, for every b of the grid."""
        switch = getattr(probe_agent, "on_task_switch", None)
        if callable(switch):
            switch(task)
        data = self._subset(task, self.probe_split, self.probe_samples)
        points = set(int(b) for b in self._points)
        curve = [self._accuracy(probe_agent, data)] if 0 in points else []
        batches = self._probe_batches(task)
        for b in range(1, self._gamma + 1):
            obs, info = next(batches)
            self._train(probe_agent, obs, info)
            if b in points:
                curve.append(self._accuracy(probe_agent, data))
        batches.close()
        return np.asarray(curve, dtype=np.float64)

    def _adaptation(self, agent, seen: list[int], rec: dict) -> dict[str, float]:
        T = len(seen)
        with self._timed():
            backward = np.stack([self._probe(agent.clone(), k) for k in seen[:-1]]) if T > 1 else None
            scratch = np.stack([self._probe(agent.fresh(), k) for k in seen])
        P = self._points.size
        forward = np.stack([self._forward[k] for k in seen[1:]]) if T > 1 else np.zeros((0, P))
        rec["probe_b"], rec["probe_scratch"] = self._points.copy(), scratch
        rec["probe_forward"] = forward
        rec["probe_backward"] = backward if backward is not None else np.zeros((0, P))
        return adaptation_metrics(forward if T > 1 else None, backward, scratch, self._points)

    def _stability_eval(self, agent, step: int, block: int) -> None:
        with self._timed():
            row = np.full(self._T, np.nan)
            tasks = set(self._seen) | {block}
            for j in sorted(t for t in tasks if 0 <= t < self._T):
                row[j] = self._accuracy(agent, self._subset(j, "test", self.stability_samples))
        self._stab_steps.append(int(step))
        self._stab_block.append(int(block))
        self._stab_acc.append(row)

    def _plasticity(self, agent, task: int) -> dict[str, float]:
        from clenv.metrics.plasticity import network_diagnostics

        net = getattr(agent, "network", None)
        if net is None or not hasattr(net, "capture"):
            return {}
        data = self._subset(task, "train", self.plasticity_samples)
        x = torch.cat([self._prep(agent, xb) for xb, _ in data])
        y = torch.cat([yb for _, yb in data]).to(x.device)
        fwd = getattr(agent, "forward", None)
        return network_diagnostics(net, x, y, forward=fwd if callable(fwd) else None, tau=self.tau, delta=self.delta)

    def _record_agent_diagnostics(self, step: int, values: dict) -> None:
        rec = self._agent_diag
        n = len(rec["step"])
        rec["step"].append(step)
        for k, v in values.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if k == "step" or isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                                     np.floating)):
                continue  # only scalar signals are traced per step ("step" is the loop's); arrays go in diagnostics()
            if k not in rec:
                rec[k] = [float("nan")] * n  # a signal that appears late is NaN before it
            rec[k].append(float(v))
        for k, v in rec.items():
            if len(v) < n + 1:
                v.append(float("nan"))

    def _log(self, scalars: dict, step: int) -> None:
        for lg in self.loggers:
            lg.log(scalars, step)
