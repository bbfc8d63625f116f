"""Probes: one callback per family of measurements, each with its own state, each checkpointable, composable in a
list (``clenv.run(env, agent, callbacks=[HeldOutAccuracy(forgetting=True), ContinualEvaluation(10)])``).
:class:`clenv.Evaluation` builds them from one set of options.

- :class:`HeldOutAccuracy`: held-out accuracy after each task; with ``forgetting=True`` the accuracy matrix R.
- :class:`FastAdaptation`: LCA / FKT / BKT.
- :class:`ContinualEvaluation`: evaluation every k steps, the stability gap.
- :class:`PlasticityDiagnostics`: dormant units, ranks, weight norms at every task end.
- :class:`AgentTraces`: the agent's own ``trace()`` / ``diagnostics()``.
- :class:`MaskRecovery`: stored-mask and recovered-mask evaluation of mask-routed agents (FTN).
- :class:`AdapterRecall`: task adapters recalled from associative memories, task-incremental and multi-task switching.

What an agent must provide (duck typing; clenv never imports ``agents``): ``predict(x) -> logits`` in evaluation
mode without side effects, on inputs from ``preprocess(obs)`` (without it uint8 inputs are scaled to [0, 1]);
:class:`FastAdaptation` also ``clone()``, ``fresh()`` and optionally ``learn(x, y)``; :class:`PlasticityDiagnostics`
a ``network`` with ``unit_layers`` and ``capture()``. The env must provide ``unwrapped.test_batches(k, split=,
max_samples=)``, ``unwrapped.num_tasks`` and, for adaptation, ``unwrapped.eval_env()``.
"""

from clenv.probes.adaptation import FastAdaptation
from clenv.probes.adapter_recall import AdapterRecall
from clenv.probes.base import Probe, accuracy, agent_inputs
from clenv.probes.heldout import HeldOutAccuracy
from clenv.probes.masks import MaskRecovery
from clenv.probes.plasticity import PlasticityDiagnostics
from clenv.probes.stability import ContinualEvaluation
from clenv.probes.traces import AgentTraces

__all__ = ["Probe", "HeldOutAccuracy", "FastAdaptation", "ContinualEvaluation", "PlasticityDiagnostics",
           "AgentTraces", "MaskRecovery", "AdapterRecall", "accuracy", "agent_inputs"]
