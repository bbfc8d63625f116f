"""MAML baseline for continual streams (Finn, Abbeel and Levine, ICML 2017; NeuMoSync Section 3.8, Appendix C.4).

Meta-training: before the stream, the initial parameters are meta-trained on tasks sampled from the stream's task
distribution, i.e. the same stream rebuilt with a different stream seed (:class:`agents.common.meta.TaskSampler`),
by :func:`agents.common.meta.meta_train`. Continual phase: at the start of every task the network is reset to the
meta-initialisation (and the optimiser rebuilt), then trained by SGD on the stream.

Defaults from NeuMoSync Appendix C.4: 1,000 meta-training steps, inner SGD lr 1e-2 with 5 inner steps, meta-batch 4,
outer Adam lr 1e-3; the continual phase uses the inner learner (SGD, lr 1e-2). Support batches have the stream's
batch size; the query batch has ``query_size`` samples of the same task. Lower ``meta_steps`` for quick runs.
Meta-initialisations are cached per process (same env configuration and hyperparameters give the same one), so
``fresh()`` does not meta-train again.
"""

from __future__ import annotations

import copy

import torch

from agents.base import SupervisedAgent
from agents.common.meta import TaskSampler, meta_stream_seed, meta_train

__all__ = ["MAMLAgent", "MetaEnvMixin"]

_META_CACHE: dict[str, dict] = {}


class MetaEnvMixin(SupervisedAgent):
    """Keeps the env's configuration in ``env_spec`` so the agent (and its ``fresh()`` copies) can rebuild the
    stream under a meta-training seed."""

    DEFAULTS = dict(meta_steps=1000, inner_steps=5, inner_lr=1e-2, meta_batch=4, meta_lr=1e-3, query_size=64,
                    first_order=False, meta_samples_per_task=None, meta_seed=None)

    @classmethod
    def read_env(cls, env) -> dict:
        spec = super().read_env(env)
        u = getattr(env, "unwrapped", env)
        spec["env_config"] = dict(getattr(u, "config", {}) or {}) or None
        spec["batch_size"] = int(getattr(u, "batch_size", 16))
        return spec

    def task_sampler(self) -> TaskSampler:
        cfg = self.env_spec.get("env_config")
        if not cfg:
            raise ValueError(f"{self.NAME} meta-trains on the stream's task distribution: build it from a clenv "
                             "SupervisedStreamEnv (its configuration is needed to sample meta-training tasks)")
        seed = self.hparams["meta_seed"]
        seed = meta_stream_seed(self.hparams["seed"]) if seed is None else int(seed)
        return TaskSampler(cfg, seed, self.device, self.hparams["meta_samples_per_task"])

    def _cache_key(self) -> str:
        return repr((type(self).__name__, sorted(self.env_spec.items(), key=str),
                     sorted(self.hparams.items(), key=str)))

    def meta_kwargs(self) -> dict:
        h = self.hparams
        return dict(steps=h["meta_steps"], inner_steps=h["inner_steps"], inner_lr=h["inner_lr"],
                    meta_batch=h["meta_batch"], meta_lr=h["meta_lr"], batch_size=self.env_spec["batch_size"],
                    query_size=h["query_size"], first_order=bool(h["first_order"]), seed=int(h["seed"]))


class MAMLAgent(MetaEnvMixin):
    """Meta-learned initialisation, restored at every task."""

    NAME = "maml"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        key = self._cache_key()
        if key not in _META_CACHE:
            self.meta_history = meta_train(self.network, self.task_sampler(), **self.meta_kwargs())
            _META_CACHE[key] = {"init": copy.deepcopy(self.network.state_dict()), "history": self.meta_history}
        self.meta_init = {k: v.clone() for k, v in _META_CACHE[key]["init"].items()}
        self.meta_history = list(_META_CACHE[key]["history"])
        self.network.load_state_dict(self.meta_init)
        self.reset_optimizer()

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        self.network.load_state_dict(self.meta_init)
        self.reset_optimizer()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "meta_init": self.meta_init}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "meta_init" in state:
            self.meta_init = {k: v.clone() for k, v in state["meta_init"].items()}
