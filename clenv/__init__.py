"""clenv: continual-learning task streams as Gymnasium environments.

``import clenv`` registers every id in :data:`clenv.registry.ENV_TABLE` with gymnasium, so
``gym.make("RandomLabelFashionMNIST-v0")`` works; ``gym.make("clenv:RandomLabelFashionMNIST-v0")`` works without the
import. ``clenv.run(env, agent)`` is the one training loop. clenv never imports the ``agents`` package.

Layers: the library (``envs``, ``streams``, ``data``, ``registry``, ``protocols``, ``loop``, ``probes``,
``evaluation``, ``metrics``, ``results``, ``checkpoint``, ``loggers``, ``seeding``) never imports the application
layer, :mod:`clenv.app` (the ``clenv`` command: run specs, sweeps, reproduction, reports, plots, the papers'
tables).
"""

from clenv.registry import ENV_TABLE, env_ids, protocol, register_all

register_all()

__version__ = "0.1.0"


def __getattr__(name):  # heavy modules (torch) load on first use, not on import
    if name in ("run", "Callback", "RunResult", "TaskTracker", "LoopState"):
        from clenv import loop

        return getattr(loop, name)
    if name == "Evaluation":
        from clenv.evaluation import Evaluation

        return Evaluation
    if name in ("Checkpoint", "CheckpointError", "resume"):
        from clenv import checkpoint

        return getattr(checkpoint, name)
    if name in ("HeldOutAccuracy", "FastAdaptation", "ContinualEvaluation", "PlasticityDiagnostics", "AgentTraces"):
        from clenv import probes

        return getattr(probes, name)
    if name == "SupervisedStreamEnv":
        from clenv.envs.supervised import SupervisedStreamEnv

        return SupervisedStreamEnv
    raise AttributeError(f"module 'clenv' has no attribute {name!r}")


__all__ = ["ENV_TABLE", "env_ids", "protocol", "register_all", "run", "Callback", "RunResult", "TaskTracker",
           "LoopState", "SupervisedStreamEnv", "Evaluation", "HeldOutAccuracy", "FastAdaptation",
           "ContinualEvaluation", "PlasticityDiagnostics", "AgentTraces", "Checkpoint", "CheckpointError", "resume",
           "__version__"]
