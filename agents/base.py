"""The agent contract and the supervised agent base that every supervised method builds on.

Contract (what ``clenv.run`` calls)::

    act(obs, info) -> action
    observe(obs, action, reward, next_obs, terminated, truncated, info) -> None   # learns here
    on_task_switch(task_id | None) -> None                                        # optional
    state_dict() / load_state_dict(state)                                         # checkpoints and probes

:class:`SupervisedAgent` writes the training step once. A method overrides hooks (public methods), each of which
calls ``super()`` so that methods compose by class composition (``agents.make("cbp+er", env)`` builds a class with
both as bases); docs/agents.md lists them with their signatures:

- ``read_env(env)`` (classmethod): the ``env_spec`` dict the agent is built from;
- ``backbone_options()``, ``build_network()``: the model (default: the env's paper backbone, see ``clenv.protocol``);
- ``parameters_to_optimize()``, ``build_optimizer()``: what trains and how;
- ``preprocess(obs)``, ``forward(x)``: inputs and logits;
- ``training_batch(x, y)``: the batch the step trains on (replay appends to it);
- ``loss(logits, y)``, ``regularizer()``: cross-entropy plus a loss term (L2, L2Init, EWC);
- ``before_update()``: after ``backward``, before ``optimizer.step`` (gradient projection: A-GEM);
- ``after_update(x, y)``: after the step (unit replacement: CBP, ReDo; EMAs: Hare & Tortoise, NeuMoSync);
- ``on_task_switch(task_id)``: task boundaries (reinitialisation, Fisher estimates, Shrink & Perturb);
- ``state_dict()`` / ``load_state_dict(state)``: the method's own state (the base saves every generator the agent
  owns by itself).

Forward passes that are not the training step run inside ``auxiliary_forward()`` and change no statistic;
``seed_explicit`` and ``reseed(seed)`` implement the agent's half of the run's seed rule.
"""

from __future__ import annotations

import contextlib
import copy
import random
import types
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.backbones import Backbone, build_backbone
from agents.common.schedules import SCHEDULES, schedule_factor
from clenv.data.scaling import host_tensor, to_unit_float

__all__ = ["Agent", "SupervisedAgent", "collect_defaults", "resolve_hparams", "seeded", "random_streams",
           "frozen_statistics"]

#: The random generator types an agent may own; their states are part of the agent's state (see random_streams).
RANDOM_TYPES = (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)
# Values that hold no generator of the agent's own: not walked into.
_LEAVES = (str, bytes, int, float, complex, bool, torch.Tensor, np.ndarray, torch.optim.Optimizer, type,
           types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, torch.device,
           torch.dtype)
# nn.Module internals that hold tensors or hooks, never generators.
_MODULE_SKIP = frozenset({"_parameters", "_buffers", "_non_persistent_buffers_set", "_modules", "_forward_hooks",
                          "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
                          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                          "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                          "_forward_pre_hooks_with_kwargs"})


def _foreign(value) -> bool:
    # An env or a space is the environment's, with its own seeding: an agent holding one does not own its RNG.
    try:
        import gymnasium
    except ImportError:  # pragma: no cover - gymnasium is a dependency
        return False
    return isinstance(value, (gymnasium.Env, gymnasium.spaces.Space))


def random_streams(obj) -> dict[str, Any]:
    """Every random generator reachable from ``obj``'s attributes (``torch.Generator``, ``np.random.Generator``,
    ``np.random.RandomState``, ``random.Random``), by attribute path (``"gnt.generator"``, ``"memory.rng"``,
    ``"network.controller._generator"``).

    The walk follows instance attributes, dict / list / tuple items and ``nn.Module`` children in insertion order,
    so two agents built the same way list the same paths in the same order; an object reached twice is listed once,
    under its first path. Envs and spaces are not walked (their randomness is the env's)."""
    found: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(value, path: str) -> None:
        if value is None or isinstance(value, _LEAVES) or id(value) in seen or _foreign(value):
            return
        seen.add(id(value))
        if isinstance(value, RANDOM_TYPES):
            found[path] = value
            return
        if isinstance(value, dict):
            for k, v in list(value.items()):
                if isinstance(k, (str, int)):
                    walk(v, f"{path}[{k!r}]")
            return
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
            return
        attrs = getattr(value, "__dict__", None)
        if not isinstance(attrs, dict):
            return
        prefix = f"{path}." if path else ""
        module = isinstance(value, nn.Module)
        for k, v in list(attrs.items()):
            if not (module and k in _MODULE_SKIP):
                walk(v, prefix + k)
        if module:
            for k, child in value._modules.items():
                walk(child, prefix + k)

    walk(obj, "")
    return found


def _stream_state(gen) -> tuple[str, Any]:
    if isinstance(gen, torch.Generator):
        return "torch", gen.get_state()
    if isinstance(gen, np.random.Generator):
        return "numpy", copy.deepcopy(gen.bit_generator.state)
    if isinstance(gen, np.random.RandomState):
        return "numpy_legacy", gen.get_state()
    return "python", gen.getstate()


def _set_stream_state(gen, kind: str, state) -> None:
    if kind == "torch":
        gen.set_state(state)
    elif kind == "numpy":
        gen.bit_generator.state = copy.deepcopy(state)
    elif kind == "numpy_legacy":
        gen.set_state(state)
    else:
        gen.setstate(state)


class Agent:
    """Base of every agent. ``NAME`` is the registry name; ``DEFAULTS`` the paper's hyperparameters (merged along
    the class hierarchy, so a subclass lists only what it adds or changes).

    State: ``state_dict()`` always carries the state of every random generator the agent owns (found by
    :func:`random_streams`: any ``torch.Generator`` / numpy / ``random.Random`` generator among its attributes, at any
    depth), and ``load_state_dict()`` restores them, so a method never saves its generators itself; it only has to
    create them when it is constructed (a generator created later has no counterpart in a freshly built agent and
    is refused on loading). Subclasses extend both methods through ``super()``.
    """

    NAME = "agent"
    DEFAULTS: dict[str, Any] = {}

    def act(self, obs, info):  # pragma: no cover - interface
        raise NotImplementedError

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:  # pragma: no cover
        raise NotImplementedError

    def on_task_switch(self, task_id) -> None:
        """Called before the first step of each task (``task_id`` None when ids are hidden)."""

    #: True iff ``seed`` was passed to the constructor (``agents.make(name, env, seed=3)``); the run seed seeds an
    #: agent made without one (``clenv.run`` calls :meth:`reseed`). Set by each base's constructor.
    seed_explicit = False

    def construction_env(self):
        """What :meth:`reseed` passes as ``env`` to rebuild this agent (a base that can rebuild without the env
        returns what its constructor accepts instead)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be rebuilt without its env")

    def reseed(self, seed: int) -> None:
        """Put the agent exactly in the state it would have had if it had been constructed with ``seed=seed`` (the
        other hyperparameters unchanged): network initialisation, optimiser state and every generator it owns, all
        rebuilt; ``hparams["seed"]`` records the seed. ``seed_explicit`` and ``hparam_source`` keep their values.
        Anything trained so far is discarded, so call it before the run (the loop does). The agent object stays the
        same, but its network, optimiser and other members are new objects: re-read ``agent.network`` after it. An
        untrained agent (no update yet) that already has this seed is left as it is, which is the same state."""
        hparams = getattr(self, "hparams", {})
        untrained = getattr(self, "num_updates", 1) == 0 and getattr(self, "num_env_steps", 0) == 0
        if untrained and int(hparams.get("seed", -1)) == int(seed):
            return
        twin = type(self)(self.construction_env(), **{**hparams, "seed": int(seed)})
        keep = {k: self.__dict__[k] for k in ("hparam_source", "seed_explicit") if k in self.__dict__}
        self.__dict__.clear()
        self.__dict__.update(twin.__dict__)
        self.__dict__.update(keep)

    def state_dict(self) -> dict:
        return {"random_streams": {path: _stream_state(g) for path, g in random_streams(self).items()}}

    def load_state_dict(self, state: dict) -> None:
        for gen, kind, st in self.matching_streams(state):
            _set_stream_state(gen, kind, st)

    def matching_streams(self, state: dict) -> list[tuple[Any, str, Any]]:
        """(generator, kind, saved state) for every generator of ``state`` (a ``state_dict()``); raises
        ``ValueError`` if the saved generators are not this agent's (nothing is changed). Empty for a state saved
        without generators."""
        saved = state.get("random_streams")
        if saved is None:
            return []
        now = random_streams(self)
        missing, extra = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
        wrong = [p for p in saved if p in now and _stream_state(now[p])[0] != saved[p][0]]
        if missing or extra or wrong:
            raise ValueError(f"{type(self).__name__}: the saved random generators do not match this agent's "
                             f"(saved only: {missing}; this agent only: {extra}; other type: {wrong}); a method "
                             f"must create its generators when it is constructed")
        return [(now[p], kind, st) for p, (kind, st) in saved.items()]


@contextlib.contextmanager
def frozen_statistics(module: nn.Module):
    """Forward passes of ``module`` inside the block leave its running statistics as they are.

    BatchNorm layers stop updating their running mean / variance and batch count (in train mode they still normalise
    with the batch's statistics, as the training step does; in eval mode they use the running ones as always); every
    submodule with a ``statistics_frozen`` attribute (e.g. :class:`agents.neumosync.NeuMoSyncNetwork`, whose neuron
    activity statistics are fed by training passes) sees it True. Both are restored on exit, nested blocks included.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    flagged = [m for m in module.modules() if hasattr(m, "statistics_frozen")]
    before = [m.statistics_frozen for m in flagged]
    for m in norms:
        m.track_running_stats = False
    for m in flagged:
        m.statistics_frozen = True
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
        for m, b in zip(flagged, before):
            m.statistics_frozen = b


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's global RNG seeded to ``seed`` and restore it afterwards: network
    (re)initialisations are reproducible without disturbing any other random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def collect_defaults(cls) -> dict[str, Any]:
    """``DEFAULTS`` merged along the MRO; the most derived class wins."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(getattr(klass, "DEFAULTS", {}) or {})
    return merged


def resolve_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
    """The class's merged defaults overridden by ``hparams``; an unknown name is a clear error."""
    defaults = collect_defaults(cls)
    unknown = set(hparams) - set(defaults)
    if unknown:
        raise TypeError(f"unknown hyperparameter(s) {sorted(unknown)} for agent {cls.NAME!r}; valid: "
                        f"{sorted(defaults)}")
    return {**defaults, **hparams}


def _steps_per_task(u) -> list[int] | None:
    """Each task's steps as the env states them (``steps_per_task(k)`` or an int for every task), None when it does
    not: what a learning-rate schedule spans."""
    steps, n = getattr(u, "steps_per_task", None), int(getattr(u, "num_tasks", 1) or 1)
    try:
        if callable(steps):
            return [int(steps(k)) for k in range(n)]
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            return [int(steps)] * n
    except (RuntimeError, ValueError, TypeError):  # an env that can only say after reset()
        return None
    return None


def _optimizer(name: str, params, lr: float, momentum: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    # The networks here are small, so per-tensor Python loops dominate a step: SGD uses the foreach kernels, Adam the
    # fused one (3x cheaper than foreach for NeuMoSync's 26 tensors on CPU).
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'adam' or 'adamw'")


class SupervisedAgent(Agent):
    """Cross-entropy training on each observed batch, one optimiser step per environment step.

    Hyperparameters (``DEFAULTS``): ``backbone`` (None: the env's paper backbone), ``activation``, ``hidden``,
    ``layernorm``, ``optimizer`` (sgd / adam / adamw), ``lr``, ``momentum``, ``weight_decay``, ``betas``,
    ``max_grad_norm`` (None: no clipping; else the global gradient norm is clipped to it before every optimiser step,
    after ``before_update``), ``lr_schedule`` (None: constant; ``"cosine"``: :func:`agents.common.schedules.
    schedule_factor` on every parameter group's rate, down to ``lr_final`` / ``lr`` of it, after a linear warm-up over
    the ``lr_warmup`` share of the steps), ``lr_schedule_scope`` (``"task"``: the schedule restarts at every task and
    spans its steps; ``"stream"``: one schedule over the whole stream), ``seed`` (network initialisation), ``device``
    (None: the env's).
    """

    NAME = "base"
    #: Whether this class's hooks are written for :class:`agents.seed_stack.SeedStack` (vectorised seeds); each
    #: method class that supports it says so in its own body (see ``agents.seed_stack.supports_seed_stacking``).
    SEED_STACKING = True
    DEFAULTS = dict(backbone=None, activation="relu", hidden=(100, 100), layernorm=False, optimizer="sgd", lr=1e-2,
                    momentum=0.0, weight_decay=0.0, betas=(0.9, 0.999), max_grad_norm=None, lr_schedule=None,
                    lr_final=0.0, lr_warmup=0.0, lr_schedule_scope="task", seed=0, device=None)

    def __init__(self, env, **hparams):
        self.hparams = resolve_hparams(type(self), hparams)
        self.seed_explicit = "seed" in hparams
        clip = self.hparams["max_grad_norm"]
        if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
            raise ValueError(f"max_grad_norm must be a positive number or None (no clipping), got {clip!r}")
        self._check_schedule()
        # ``env`` may be an env or the ``env_spec`` dict of another agent (how fresh() rebuilds without the env).
        self.env_spec = dict(env) if isinstance(env, dict) else self.read_env(env)
        self.device = torch.device(self.hparams["device"] or self.env_spec["device"])
        self.num_outputs = self.env_spec["num_outputs"]
        with seeded(int(self.hparams["seed"])):
            self.network = self.build_network().to(self.device)
        self.optimizer = self.build_optimizer()
        self.task_id: int | None = None
        self.num_updates = 0
        self.schedule_step = 0  # steps into the learning-rate schedule (its task's, or the stream's)
        self.auxiliary = False  # True inside auxiliary_forward(): the forward pass is not the training step's
        self._cache: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ construction hooks
    @classmethod
    def read_env(cls, env) -> dict:
        """The ``env_spec`` dict the agent is built from (input shape, outputs, action type, paper backbone,
        task awareness, number of tasks, device). Called once by the constructor, before ``build_network``; a
        method that needs more of the env extends it (``spec = super().read_env(env)``) so that ``fresh()`` and
        ``reseed()`` can rebuild the agent from the dict alone."""
        from clenv import protocol

        u = getattr(env, "unwrapped", env)
        space = u.observation_space
        x_space = space["x"] if hasattr(space, "spaces") and "x" in getattr(space, "spaces", {}) else space
        num = getattr(u, "num_classes", None)
        if num is None:
            num = int(u.action_space.nvec[0]) if hasattr(u.action_space, "nvec") else int(u.action_space.shape[-1])
        row = protocol(env)
        return {"input_shape": tuple(x_space.shape[1:]), "num_outputs": int(num),
                "steps_per_task": _steps_per_task(u),
                "action_type": getattr(u, "action_type", "labels"),
                "backbone": row.backbone if row and row.backbone else "mlp",
                "task_aware": bool(getattr(u, "task_aware", False)),
                "task_type": str(getattr(u, "task_type", "classification")),
                "num_tasks": int(getattr(u, "num_tasks", 1)), "device": str(getattr(u, "device", "cpu"))}

    def construction_env(self) -> dict:
        return dict(self.env_spec)

    def _check_schedule(self) -> None:
        h = self.hparams
        if h["lr_schedule"] not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {h['lr_schedule']!r}")
        if h["lr_schedule_scope"] not in ("task", "stream"):
            raise ValueError(f"lr_schedule_scope must be 'task' or 'stream', got {h['lr_schedule_scope']!r}")
        for name in ("lr_final", "lr_warmup"):
            v = h[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if not h["lr_warmup"] < 1:
            raise ValueError(f"lr_warmup is a share of the schedule's steps in [0, 1), got {h['lr_warmup']!r}")

    def schedule_steps(self) -> int:
        """The length of the learning-rate schedule: the running task's steps (``lr_schedule_scope="task"``) or the
        stream's, from the env's ``steps_per_task`` (1 when the env does not say)."""
        steps = self.env_spec.get("steps_per_task")
        if not steps:
            return 1
        if self.hparams["lr_schedule_scope"] == "stream":
            return int(sum(steps))
        t = self.task_id if isinstance(self.task_id, int) and 0 <= self.task_id < len(steps) else 0
        return int(steps[t])

    def apply_lr_schedule(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Set every parameter group's rate (of ``optimizer``, default the agent's) for the step about to be taken:
        its starting rate (``initial_lr``, the rate it was built with) times the schedule's factor; the final factor
        is ``lr_final / lr``."""
        h = self.hparams
        if h["lr_schedule"] is None:
            return
        factor = schedule_factor(h["lr_schedule"], self.schedule_step, self.schedule_steps(),
                                 final=float(h["lr_final"]) / float(h["lr"]), warmup=float(h["lr_warmup"]))
        for group in (optimizer or self.optimizer).param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor

    def backbone_options(self) -> dict:
        h = self.hparams
        opts = {"activation": h["activation"], "layernorm": h["layernorm"]}
        if (h["backbone"] or self.env_spec["backbone"]) == "mlp":
            opts["hidden"] = h["hidden"]  # checked (positive widths) and made a tuple by build_backbone
        return opts

    def build_network(self) -> nn.Module:
        name = self.hparams["backbone"] or self.env_spec["backbone"]
        return build_backbone(name, self.env_spec["input_shape"], self.num_outputs, **self.backbone_options())

    def parameters_to_optimize(self):
        return [p for p in self.network.parameters() if p.requires_grad]

    def build_optimizer(self) -> torch.optim.Optimizer:
        h = self.hparams
        return _optimizer(h["optimizer"], self.parameters_to_optimize(), h["lr"], h["momentum"], h["weight_decay"],
                          h["betas"])

    def reset_optimizer(self) -> None:
        self.optimizer = self.build_optimizer()

    # ------------------------------------------------------------------ data
    def preprocess(self, obs) -> torch.Tensor:
        """uint8 observation batch -> float tensor in [0, 1] on the agent's device. A tensor already there (an env
        with ``output="torch"`` on the agent's device) is not copied through the host. Records whether the batch
        came as a tensor, which :meth:`to_action` answers in kind (``act`` preprocesses just before it)."""
        x = obs["x"] if isinstance(obs, dict) else obs
        self._tensor_batch = isinstance(x, torch.Tensor)
        return to_unit_float(x, self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a preprocessed batch (override for modulated or multi-head networks)."""
        return self.network(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in evaluation mode without gradients (probes, held-out accuracy); an auxiliary forward, so it
        changes no statistic of the agent."""
        was = self.network.training
        self.network.eval()
        try:
            with self.auxiliary_forward():
                return self.forward(x)
        finally:
            self.network.train(was)

    @contextlib.contextmanager
    def auxiliary_forward(self):
        """Forward passes inside the block are not the training step's (a replay memory's gradient, a probe, a
        score): they leave every running statistic of the agent unchanged. BatchNorm running statistics and the
        statistics of networks with a ``statistics_frozen`` flag are frozen (:func:`frozen_statistics`), and
        ``self.auxiliary`` is True, which a method that records statistics from its forward pass checks (see
        :attr:`records_statistics`). Gradients and train / eval mode are whatever the caller has."""
        before = self.auxiliary
        self.auxiliary = True
        try:
            with frozen_statistics(self.network):
                yield
        finally:
            self.auxiliary = before

    @property
    def records_statistics(self) -> bool:
        """Whether the forward pass running now is a training forward whose statistics a method may record
        (activations for CBP's utilities, HAT's gates): train mode, gradients on, not an auxiliary forward."""
        return self.network.training and torch.is_grad_enabled() and not self.auxiliary

    # ------------------------------------------------------------------ contract
    def act(self, obs, info):
        x = self.preprocess(obs)
        if not self.network.training:
            self.network.train()
        logits = self.forward(x)  # kept with its graph: observe() trains on this same forward pass
        self._cache = (obs, x, logits)
        return self.to_action(logits)

    def to_action(self, logits: torch.Tensor) -> np.ndarray | torch.Tensor:
        """The env's action for a batch of logits: the logits themselves (``action_type="logits"``) or the labels.

        In the kind of the batch last preprocessed (the one ``act`` answers): a tensor on the agent's device when
        the env served a tensor (``output="torch"``, the default on a GPU; the env checks and scores it on its
        device, so the action never goes through the host), else a numpy array, as a numpy env expects."""
        kind = self.env_spec["action_type"]
        if kind == "logits":
            pred = logits.detach().float()
        elif kind == "predictions":  # regression: one real output per sample
            pred = logits.detach()[:, 0].float()
        else:
            pred = logits.argmax(1)  # argmax carries no graph: no detach needed
        if getattr(self, "_tensor_batch", False):
            return pred
        return pred.numpy() if pred.device.type == "cpu" else pred.cpu().numpy()

    @property
    def regression(self) -> bool:
        """Whether the env asks for real-valued predictions (MSE) rather than classes (cross-entropy)."""
        return self.env_spec.get("task_type") == "regression"

    def targets(self, labels) -> torch.Tensor:
        """``info["labels"]`` as the loss wants them: int64 classes, or float32 regression targets, on the agent's
        device (a tensor already there with that dtype is used as it is: no copy, no host round trip)."""
        dtype = torch.float32 if self.regression else torch.int64
        if isinstance(labels, torch.Tensor):
            return labels.to(device=self.device, dtype=dtype)
        return host_tensor(np.asarray(labels), self.device).to(dtype=dtype)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        y = self.targets(info["labels"])
        if y.numel() == 0:
            return
        cached = self._cache
        self._cache = None
        if cached is not None and cached[0] is obs:
            x, logits = cached[1], cached[2]
        else:
            x, logits = self.preprocess(obs), None
        self.learn(x, y, logits)

    def learn(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """The one training step: loss on ``training_batch``, backward, ``before_update``, step, ``after_update``."""
        if not self.network.training:
            self.network.train()
        xb, yb = self.training_batch(x, y)
        if logits is None or xb is not x or not logits.requires_grad:
            logits = self.forward(xb)
        loss = self.loss(logits, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.before_update()
        if self.hparams["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           float(self.hparams["max_grad_norm"]))
        self.apply_lr_schedule()
        self.optimizer.step()
        self.num_updates += 1
        self.schedule_step += 1
        self.after_update(x, y)
        return loss.detach()

    # ------------------------------------------------------------------ method hooks (cooperative)
    def training_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        data, reg = self.task_loss(logits, y), self.regularizer()
        # no regulariser: skip adding a constant 0, an autograd node forward and backward on every step
        return data if isinstance(reg, (int, float)) and reg == 0 else data + reg

    def task_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The data term: cross-entropy on classes, mean squared error of the first output on regression targets."""
        if self.regression:
            return F.mse_loss(outputs[:, 0], y)
        return F.cross_entropy(outputs, y)

    def regularizer(self) -> torch.Tensor | float:
        return 0.0

    def stacked_regularizer(self, stack) -> torch.Tensor | float:
        """The sum over seeds of :meth:`regularizer`, written on the stacked parameters of ``stack``
        (:class:`agents.seed_stack.SeedStack`); a method with a loss term that supports seed stacking extends it."""
        return 0.0

    def record_training_features(self, features: dict[str, torch.Tensor]) -> None:
        """This step's training-forward post-activations by unit-layer name, when the forward ran elsewhere (a
        :class:`agents.seed_stack.SeedStack`); a method that scores units from them (CBP) keeps them."""

    def before_update(self) -> None:
        pass

    def after_update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def on_task_switch(self, task_id) -> None:
        if self.num_updates > 0:
            self.check_finite()
        self.task_id = task_id
        if self.hparams["lr_schedule_scope"] == "task":
            self.schedule_step = 0

    def check_finite(self, detail: str = "") -> None:
        """Raise ``FloatingPointError`` if a parameter of the network is not finite: training diverged, and every
        later step would score chance accuracy without saying so. Checked at each task switch and at the run's end
        (one read of one flag per task, never per step); ``detail`` is added to the message."""
        params = list(self.network.named_parameters())
        if not params or params[0][1].device.type == "meta":  # nothing to read (a shape-only run)
            return
        finite = torch.stack([torch.isfinite(p).all() for _, p in params])
        if bool(finite.all()):  # one device-to-host read per task
            return
        bad = [n for (n, _), ok in zip(params, finite.tolist()) if not ok]
        raise self.diverged(f"parameters {', '.join(bad)} are not finite", detail)

    def diverged(self, what: str, detail: str = "") -> FloatingPointError:
        """The error :meth:`check_finite` (and a method's own finiteness check) raises: agent, task, what, detail."""
        return FloatingPointError(f"{type(self).NAME}: training diverged before the end of task {self.task_id}: "
                                  f"{what}{detail}")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(), "num_updates": self.num_updates, "task_id": self.task_id,
                "schedule_step": self.schedule_step}

    def load_state_dict(self, state: dict) -> None:
        self.matching_streams(state)  # refuse foreign generators before anything changes
        self.network.load_state_dict(state["network"])
        # A copy: torch's optimiser keeps the given tensors (no copy), and its in-place updates would then write into
        # the state passed in (another agent's, in a clone or a round trip).
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.num_updates = state.get("num_updates", 0)
        self.task_id = state.get("task_id")
        self.schedule_step = state.get("schedule_step", 0)
        super().load_state_dict(state)  # the generators, last: nothing above may replace one after it is set

    def clone(self) -> "SupervisedAgent":
        """An independent deep copy (network, optimiser state, method state): what probes train."""
        self._cache = None
        return copy.deepcopy(self)

    @classmethod
    def stack_seeds(cls, agents: list["SupervisedAgent"]):
        """The :class:`agents.seed_stack.SeedStack` that trains ``agents`` (this class, one per seed) as one batched
        computation; ``clenv.run(env, agent, seeds=[...])`` calls it. Raises ``ValueError`` for a class that does
        not support it, naming those that do."""
        from agents.seed_stack import SeedStack

        return SeedStack(agents)

    def fresh(self) -> "SupervisedAgent":
        """A freshly initialised agent of the same class and hyperparameters (LCA_0's reference)."""
        return type(self)(self.env_spec, **self.hparams)
