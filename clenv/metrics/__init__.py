"""Pure metric functions on arrays (numpy in, floats / arrays out), plus torch diagnostics of a network.

- :mod:`clenv.metrics.online`: average online task accuracy and windows over the last x% of tasks.
- :mod:`clenv.metrics.forgetting`: the accuracy matrix R[i][j] -> ACC, AF (Chaudhry; NeuMoSync App. F), BWT, FWT, FM.
- :mod:`clenv.metrics.adaptation`: LCA_F / LCA_B / LCA_0, FKT / BKT from probe learning curves A^i_{b,k}.
- :mod:`clenv.metrics.stability`: continual-evaluation min-ACC / WC-ACC / stability gap, and the NGM-SGD script's
  block arithmetic (``ngm_stability``).
- :mod:`clenv.metrics.plasticity`: dormant ratio, srank, effective rank, weight magnitude, zero-gradient fraction
  (imports torch; loaded on first use).

:class:`clenv.Evaluation` runs the probes that produce these arrays during :func:`clenv.run`.
"""

from clenv.metrics.adaptation import adaptation_metrics, lca
from clenv.metrics.forgetting import (accuracy_curve, af_chaudhry, af_neumosync, average_accuracy, bwt,
                                      forgetting_measure, forgetting_metrics, fwt)
from clenv.metrics.online import online_metrics, window_accuracy, window_size
from clenv.metrics.stability import continual_eval_metrics, ngm_stability

__all__ = ["adaptation_metrics", "lca", "accuracy_curve", "af_chaudhry", "af_neumosync", "average_accuracy", "bwt",
           "forgetting_measure", "forgetting_metrics", "fwt", "online_metrics", "window_accuracy", "window_size",
           "continual_eval_metrics", "ngm_stability"]
