"""The evaluation suite in one object: ``clenv.Evaluation(...)`` builds the probe callbacks of :mod:`clenv.probes`
you ask for (and a :class:`clenv.loggers.LogFeed` for ``loggers``) and runs them in order during :func:`clenv.run`.
Every metric lands in ``result.metrics`` (a flat ``dict[str, float]``) and the arrays behind them in
``result.records``.

Usage::

    ev = clenv.Evaluation(forgetting=True, adaptation=True, stability_every=10, plasticity=True)
    result = clenv.run(env, agent, seed=0, evaluation=ev)
    result.metrics["lca_f"], result.records["accuracy_matrix"]

``Evaluation.all()`` turns every probe on. A probe costs nothing unless it is asked for. The online metrics
(``avg_online_acc``, ``online_acc_last{10,25,50,75,100}``, ``final_task_online_acc``; :mod:`clenv.metrics.online`)
are computed by the loop for every run. Metric names, per probe:

- ``heldout=True``: ``test_acc`` (:class:`~clenv.probes.HeldOutAccuracy`);
- ``forgetting=True``: ``acc``, ``af_chaudhry``, ``af_neumosync``, ``bwt``, ``fwt``, ``fm`` and the accuracy
  matrix (implies ``heldout``);
- ``adaptation=True``: ``lca_f``, ``lca_b``, ``lca_0``, ``lca_0_b``, ``fkt``, ``bkt``, ``fkt_gamma_half``,
  ``fkt_gamma``, ``bkt_gamma_half``, ``bkt_gamma``, ``gamma`` (:class:`~clenv.probes.FastAdaptation`);
- ``stability_every=k``: ``min_acc``, ``wc_acc``, ``avg_sg``, ``sg_{k}to{k+1}``, ``wf_{10,100}``, ``wp_{10,100}``,
  and with ``ngm_compat=True`` the ``ngm_*`` metrics (:class:`~clenv.probes.ContinualEvaluation`);
- ``plasticity=True``: ``dormant_ratio``, ``dead_fraction``, ``feature_rank``, ``weight_magnitude``,
  ``zero_grad_fraction`` (:class:`~clenv.probes.PlasticityDiagnostics`);
- ``masks=True``: ``acc`` / ``mse``, ``fm``, ``acc_stored`` / ``mse_stored``, ``fm_stored``, ``*_prior``,
  ``recall_error``, ``mask_overlap``, ``mask_recall`` (:class:`~clenv.probes.MaskRecovery`; its ``acc`` and ``fm``
  replace ``forgetting``'s when both are on);
- ``adapter_recall=True``: ``faa_gt``, ``faa_til_{m}``, ``d_til_{m}``, ``recall_error_{m}``, ``memory_bytes_{m}``,
  ``adapter_bytes`` and with ``mts=True`` ``task_acc``, ``faa_mts_{m}``, ``d_mts_{m}`` per memory ``m``
  (:class:`~clenv.probes.AdapterRecall`, at the run's end);
- ``agent_traces=True`` (the default): ``agent/{name}`` (:class:`~clenv.probes.AgentTraces`);
- ``probe_time_s``: seconds spent in probes.

Probes run under saved and restored global RNG states, on copies of the agent, and on a separate evaluation env:
turning them on does not change the main run's numbers. An Evaluation is checkpointable (its probes' states).
"""

from __future__ import annotations

from typing import Any, Iterable

from clenv.loggers import LogFeed
from clenv.loop import Callback, RunResult
from clenv.probes import (AdapterRecall, AgentTraces, ContinualEvaluation, FastAdaptation, HeldOutAccuracy,
                          MaskRecovery, PlasticityDiagnostics)
from clenv.protocols import probe_gamma

__all__ = ["Evaluation", "probe_gamma"]


class Evaluation(Callback):
    """The probes of one run, built from options (see the module docstring for the metric names).

    Args:
        heldout: held-out test accuracy of each task right after it was trained.
        forgetting: the full accuracy matrix R and the random-init accuracies; implies ``heldout``.
        adaptation: LCA / FKT / BKT probes with budget ``gamma`` (default: :func:`probe_gamma`), accuracy measured
            at every ``probe_every``-th batch (plus gamma/2 and gamma) on ``probe_samples`` samples of the task's
            ``probe_split`` split.
        stability_every: evaluate all tasks seen so far every k steps (and at every task end) on
            ``stability_samples`` held-out samples each; ``ngm_compat`` adds the NGM-SGD script's metrics.
        plasticity: per-layer diagnostics at every task end on ``plasticity_samples`` training samples of that task
            (ReDo ``tau``, srank ``delta``).
        masks: every task under its stored training mask and under a mask recovered from ``support_samples``
            labelled samples (FTN's two protocols), on ``eval_samples`` test samples per task.
        adapter_recall: at the run's end, every task with its adapter as each of the agent's memories recalls it
            (task-incremental), and with ``mts`` through the agent's task predictor (multi-task switching), on
            ``recall_samples`` test samples per task (None: all).
        agent_traces: record the agent's ``trace()`` every ``trace_every`` steps and ``diagnostics()`` per task.
        eval_samples: held-out samples per task for R and ``test_acc``.
        loggers: objects with ``log(scalars: dict, step: int)`` and optionally ``summary(result)`` / ``close()``
            (:mod:`clenv.loggers`), fed by one :class:`~clenv.loggers.LogFeed`.

    ``probes`` lists the callbacks it runs, in order.
    """

    def __init__(self, *, heldout: bool = False, forgetting: bool = False, adaptation: bool = False,
                 stability_every: int | None = None, ngm_compat: bool = False, plasticity: bool = False,
                 masks: bool = False, support_samples: int = 256, adapter_recall: bool = False, mts: bool = True,
                 recall_samples: int | None = None,
                 agent_traces: bool = True, gamma: int | None = None, probe_every: int = 1, probe_samples: int = 256,
                 probe_split: str = "train", eval_samples: int = 500, stability_samples: int = 256,
                 plasticity_samples: int = 500, tau: float = 0.1, delta: float = 0.01, trace_every: int = 1,
                 loggers: Iterable[Any] = ()):
        if ngm_compat and stability_every is None:
            raise ValueError("ngm_compat=True needs stability_every (the NGM metrics are computed on its evaluations)")
        probes: list[Callback] = []
        if heldout or forgetting:
            probes.append(HeldOutAccuracy(forgetting=forgetting, samples=eval_samples))
        if adaptation:
            probes.append(FastAdaptation(gamma=gamma, every=probe_every, samples=probe_samples, split=probe_split))
        if stability_every is not None:
            probes.append(ContinualEvaluation(stability_every, samples=stability_samples, ngm_compat=ngm_compat))
        if plasticity:
            probes.append(PlasticityDiagnostics(samples=plasticity_samples, tau=tau, delta=delta))
        if masks:
            probes.append(MaskRecovery(samples=eval_samples, support_samples=support_samples))
        if adapter_recall:
            probes.append(AdapterRecall(samples=recall_samples, mts=mts))
        if agent_traces:
            probes.append(AgentTraces(trace_every))
        loggers = list(loggers)
        if loggers:
            probes.append(LogFeed(loggers, sources=list(probes)))
        self.probes = probes

    @classmethod
    def all(cls, **overrides) -> "Evaluation":
        """Every probe on: held-out accuracy, forgetting, adaptation, stability every 10 steps with the NGM
        metrics, plasticity diagnostics and agent traces."""
        kw = dict(heldout=True, forgetting=True, adaptation=True, stability_every=10, ngm_compat=True,
                  plasticity=True, agent_traces=True)
        kw.update(overrides)
        return cls(**kw)

    def on_run_start(self, env, agent, result: RunResult) -> None:
        for p in self.probes:
            p.on_run_start(env, agent, result)

    def on_step(self, env, agent, step: dict) -> None:
        for p in self.probes:
            p.on_step(env, agent, step)

    def on_task_end(self, env, agent, task_id: int, result: RunResult) -> None:
        for p in self.probes:
            p.on_task_end(env, agent, task_id, result)

    def on_run_end(self, env, agent, result: RunResult) -> None:
        result.metrics.setdefault("probe_time_s", 0.0)
        for p in self.probes:
            p.on_run_end(env, agent, result)

    @property
    def options(self) -> list:
        """What each probe measures: (class name, options), in order (a resumed run must match)."""
        return [(type(p).__qualname__, getattr(p, "options", None)) for p in self.probes]

    def state_dict(self) -> dict:
        return {"probes": [(type(p).__qualname__, p.state_dict() if hasattr(p, "state_dict") else None)
                           for p in self.probes]}

    def load_state_dict(self, state: dict) -> None:
        saved = [name for name, _ in state["probes"]]
        mine = [type(p).__qualname__ for p in self.probes]
        if saved != mine:
            raise ValueError(f"the saved Evaluation ran probes {saved}, this one runs {mine}")
        for p, (_, st) in zip(self.probes, state["probes"]):
            if st is not None:
                p.load_state_dict(st)
