"""Continual RL streams: a sequence of RL tasks as one Gymnasium env with the supervised envs' task-switch info.

A stream is ``num_tasks`` tasks of ``steps_per_task`` environment steps each. Episodes run inside a task; when a
task's step budget is spent the running episode is cut (``truncated=True``) and the next ``reset()`` starts the next
task. ``reset()`` without a seed therefore *continues* the stream (what ``clenv.run`` and tianshou's Collector do after
every episode end); ``reset(seed=s)`` starts it again. ``info["stream_done"]`` is True only on the step that ends the
last task, which is when :func:`clenv.run` stops; after it, a further ``reset()`` starts a new stream.

``info`` keys at reset and at every step (the supervised schema plus ``stream_done``): ``task_id`` (task of the
returned observation), ``task_switch`` (True on the reset that starts a task), ``labels`` (always an empty int64
array: RL has no labels), ``labels_task_id`` (task of this step's reward; -1 at reset), ``accuracy`` (0.0), ``step``
(env steps since the stream started), ``step_in_task``, ``stream_done``.

Task parameters are a pure function of (stream seed, task index), so ``reset(options={"task_id": k})`` on an env with
the same stream seed replays task k (one task's steps, then ``stream_done``).

Envs:
- :class:`ContinualCartPoleEnv`: gravity, pole length, pole mass and push force redrawn per task.
- :class:`TaskSequenceEnv`: any list of gymnasium ids (with kwargs) as the tasks of a stream.
- :func:`ContinualAcrobot`, :func:`ContinualMountainCar`: one physics, a new observation permutation / affine
  perturbation per task (:class:`clenv.envs.wrappers.TaskObservationPerturbation`).
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from clenv.envs.wrappers import TaskObservationPerturbation
from clenv.streams import check_reset, require_int, require_real, start_stream, task_rng

__all__ = ["ContinualRLEnv", "ContinualCartPoleEnv", "TaskSequenceEnv", "ContinualAcrobot", "ContinualMountainCar",
           "PermutedCartPole", "RevisitingObservationPerturbation", "RL_INFO_KEYS", "check_action"]

#: The keys every RL ``info`` carries: the supervised ``INFO_KEYS`` plus ``stream_done``.
RL_INFO_KEYS = ("task_id", "task_switch", "labels", "labels_task_id", "accuracy", "step", "step_in_task",
                "stream_done")


def check_action(space: spaces.Space, action) -> None:
    """Raise ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong shape or value) unless ``action`` is in
    ``space``. An explicit check, not an ``assert``: inner envs index with the action (Acrobot took -1 as +1
    torque) and their own asserts vanish under ``python -O``."""
    if isinstance(space, spaces.Discrete):
        lo, hi = int(space.start), int(space.start) + int(space.n) - 1
        a = action[()] if isinstance(action, np.ndarray) and action.ndim == 0 else action
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (numbers.Integral, np.integer)):
            raise TypeError(f"action must be an integer in {lo}..{hi} (action space {space}), got {action!r:.80} "
                            f"({type(action).__name__})")
        if not lo <= int(a) <= hi:
            raise ValueError(f"action must be in {lo}..{hi} (action space {space}), got {int(a)}")
        return
    if isinstance(space, spaces.Box):
        try:
            a = np.asarray(action)
        except (ValueError, TypeError) as err:
            raise TypeError(f"action must be an array of shape {space.shape}, got {action!r:.80} ({err})") from None
        if a.dtype.kind not in "iuf":
            raise TypeError(f"action must be real numbers (action space {space}), got dtype {a.dtype}")
        if a.shape != space.shape:
            raise ValueError(f"action must have shape {space.shape} (action space {space}), got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or inf; the step was refused and the stream did not advance")
        if (a < space.low).any() or (a > space.high).any():
            raise ValueError(f"action {a.tolist()} is outside the action space's bounds {space.low.tolist()}.."
                             f"{space.high.tolist()}; clip it (np.clip) before stepping")
        return
    try:
        ok = space.contains(action)
    except Exception as err:  # a space's own check can fail on a foreign type
        raise TypeError(f"action {action!r:.80} cannot be checked against the action space {space}: {err}") from None
    if not ok:
        raise ValueError(f"action {action!r:.80} is not in the action space {space}")



class ContinualRLEnv(gym.Env):
    """Base of the continual RL streams: the task schedule, episode bookkeeping and the info schema.

    Subclasses give :meth:`_make_task_env` (an inner env configured for task k) and set ``observation_space`` /
    ``action_space``. Inner envs are reset with seeds drawn from ``self.np_random``, so one seed fixes everything.

    Args:
        num_tasks: tasks in the stream.
        steps_per_task: environment steps per task (across episodes).
        max_episode_steps: an episode is truncated after this many steps (None: the inner env's own limit only).
    """

    metadata = {"render_modes": []}

    def __init__(self, *, num_tasks: int, steps_per_task: int, max_episode_steps: int | None):
        # Counts follow clenv's one rule (clenv.streams.require_int): integers, never floats or bools.
        self.num_tasks = require_int("num_tasks", num_tasks, minimum=1)
        self.steps_per_task = require_int("steps_per_task", steps_per_task, minimum=1)
        self.max_episode_steps = require_int("max_episode_steps", max_episode_steps, minimum=1, optional=True)
        self.stream_seed: int | None = None
        self._first_task, self._last_task = 0, self.num_tasks - 1
        self._task = 0
        self._step = 0
        self._step_in_task = 0
        self._episode_steps = 0
        self._inner: gym.Env | None = None
        self._inner_task = -1
        self._stream_over = True  # no stream yet: the first reset starts one
        self._episode_over = True

    # ------------------------------------------------------------------ subclass API
    def _make_task_env(self, task_id: int, rng: np.random.Generator) -> gym.Env:  # pragma: no cover - abstract
        raise NotImplementedError

    def _task_obs(self, obs, task_id: int):
        """Hook to transform an inner observation (identity here)."""
        return obs

    # ------------------------------------------------------------------ introspection
    @property
    def total_steps(self) -> int:
        """Steps in the current stream (all tasks, or the one task a ``task_id`` reset selected)."""
        return self.steps_per_task * (self._last_task - self._first_task + 1)

    def task(self, task_id: int) -> dict[str, Any]:
        """The parameters of task ``task_id`` under the current stream seed."""
        if self.stream_seed is None:
            raise RuntimeError("call reset() first: the stream seed is drawn at reset")
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        return self._task_params(task_id, task_rng(self.stream_seed, task_id))

    def _task_params(self, task_id: int, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def distinct_task(self, task_id: int) -> int:
        """The task that task ``task_id`` is a visit of (itself unless the stream revisits tasks); results group
        revisits by it (``env.get_wrapper_attr("distinct_task")`` finds a wrapper's override)."""
        return int(task_id)

    def eval_env(self) -> "ContinualRLEnv":
        """A new env with the same configuration and stream seed; ``reset(options={"task_id": k})`` replays task k."""
        if self.stream_seed is None:
            raise RuntimeError("call reset() first: the stream seed is drawn at reset")
        env = type(self)(**self.config)
        env.reset(seed=self.stream_seed, options={"stream_seed": self.stream_seed})
        return env

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a new episode. Without ``seed`` or options this continues the stream (the next task if the last
        episode used up the current task's budget); ``seed`` restarts it. ``options``: ``task_id`` replays only
        that task; ``stream_seed`` sets the stream directly. A refused reset (``ValueError`` / ``TypeError``)
        changes nothing."""
        seed, options = check_reset(self.num_tasks, seed, options)  # before super().reset reseeds np_random
        super().reset(seed=seed)
        restart = seed is not None or bool(options) or self._stream_over
        switch = False
        if restart:
            self._first_task, self._last_task = start_stream(self, seed, options)
            self._task, self._step, self._step_in_task = self._first_task, 0, 0
            self._inner_task = -1
            self._stream_over = False
            switch = True
        elif self._step_in_task >= self.steps_per_task:
            self._task += 1
            self._step_in_task = 0
            switch = True
        if self._inner_task != self._task:
            if self._inner is not None:
                self._inner.close()
            self._inner = self._make_task_env(self._task, task_rng(self.stream_seed, self._task))
            self._inner_task = self._task
        obs, _ = self._inner.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._episode_steps = 0
        self._episode_over = False
        info = self._info(switch, -1, False)
        return self._task_obs(obs, self._task), info

    def step(self, action):
        if self._episode_over:
            raise RuntimeError("the episode has ended; call reset() (which continues the stream)")
        check_action(self.action_space, action)
        obs, reward, terminated, truncated, _ = self._inner.step(action)
        self._step += 1
        self._step_in_task += 1
        self._episode_steps += 1
        task_over = self._step_in_task >= self.steps_per_task
        if self.max_episode_steps is not None and self._episode_steps >= self.max_episode_steps:
            truncated = True
        truncated = bool(truncated or task_over) and not bool(terminated)
        terminated = bool(terminated)
        stream_done = task_over and self._task == self._last_task
        self._episode_over = terminated or truncated
        self._stream_over = stream_done
        info = self._info(False, self._task, stream_done)
        return self._task_obs(obs, self._task), float(reward), terminated, truncated, info

    def close(self):
        if self._inner is not None:
            self._inner.close()
            self._inner = None
            self._inner_task = -1
        super().close()

    # ------------------------------------------------------------------ checkpoints
    _STATE_KEYS = ("config", "stream_seed", "first_task", "last_task", "task", "step", "step_in_task",
                   "episode_steps", "stream_over", "episode_over", "inner_task", "inner", "np_random")

    def state_dict(self) -> dict:
        """The stream position mid-episode, for :class:`clenv.Checkpoint`: the configuration (checked on load),
        stream seed, task cursor and counters, ``np_random`` (it seeds the next episodes) and a copy of the running
        inner env (its physics state, step counters and own generator)."""
        rng = self._np_random
        return {"config": copy.deepcopy(getattr(self, "config", {})), "stream_seed": self.stream_seed,
                "first_task": self._first_task, "last_task": self._last_task, "task": self._task, "step": self._step,
                "step_in_task": self._step_in_task, "episode_steps": self._episode_steps,
                "stream_over": self._stream_over, "episode_over": self._episode_over, "inner_task": self._inner_task,
                "inner": copy.deepcopy(self._inner),
                "np_random": None if rng is None else copy.deepcopy(rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`. Raises ``ValueError`` and changes nothing when the state is not a
        continual RL env's or was saved under another configuration."""
        missing = set(self._STATE_KEYS) - set(state)
        if missing:
            raise ValueError(f"not a continual RL env state: missing {sorted(missing)}")
        ours, theirs = getattr(self, "config", {}), dict(state["config"])
        if ours != theirs:
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k, "<unset>") != theirs.get(k, "<unset>"))
            raise ValueError("env state was saved with another configuration: "
                             + ", ".join(f"{k}={theirs.get(k, '<unset>')!r} (this env: {ours.get(k, '<unset>')!r})"
                                         for k in diff))
        if not 0 <= int(state["first_task"]) <= int(state["task"]) <= int(state["last_task"]) < self.num_tasks:
            raise ValueError(f"env state has task {state['task']} outside tasks {state['first_task']}.."
                             f"{state['last_task']} of a {self.num_tasks}-task stream")
        if self._inner is not None and self._inner is not state["inner"]:
            self._inner.close()
        self.stream_seed = state["stream_seed"]
        self._first_task, self._last_task = int(state["first_task"]), int(state["last_task"])
        self._task, self._step, self._step_in_task = int(state["task"]), int(state["step"]), int(state["step_in_task"])
        self._episode_steps, self._inner_task = int(state["episode_steps"]), int(state["inner_task"])
        self._stream_over, self._episode_over = bool(state["stream_over"]), bool(state["episode_over"])
        self._inner = copy.deepcopy(state["inner"])  # a copy: the saved state must stay as saved
        if state["np_random"] is not None:
            bit_generator = getattr(np.random, state["np_random"]["bit_generator"])()
            bit_generator.state = copy.deepcopy(state["np_random"])
            self.np_random = np.random.Generator(bit_generator)

    # ------------------------------------------------------------------ internals
    def _info(self, switch: bool, reward_task: int, stream_done: bool) -> dict:
        return {"task_id": int(self._task), "task_switch": bool(switch), "labels": np.zeros(0, np.int64),
                "labels_task_id": int(reward_task), "accuracy": 0.0, "step": int(self._step),
                "step_in_task": int(self._step_in_task), "stream_done": bool(stream_done)}


class ContinualCartPoleEnv(ContinualRLEnv):
    """CartPole whose physics change every ``steps_per_task`` steps.

    Per task, gravity, pole (half-)length, pole mass and push force are drawn log-uniformly from
    ``[default / spread, default * spread]`` (defaults 9.8, 0.5, 0.1, 10.0; task 0 included, so no task is special).

    Args:
        num_tasks, steps_per_task, max_episode_steps: see :class:`ContinualRLEnv` (CartPole-v1's 500 by default).
        spread: the factor bounding each parameter around its default (>= 1; 1 gives plain CartPole every task).
        vary: which parameters change, a subset of ``("gravity", "length", "masspole", "force_mag")``.
        distinct_tasks: when set, task k has the physics of task ``k % distinct_tasks``, so every task after the
            first ``distinct_tasks`` revisits one (``revisit_of(k)``); None: every task is new.
    """

    DEFAULTS = {"gravity": 9.8, "length": 0.5, "masspole": 0.1, "force_mag": 10.0}

    def __init__(self, num_tasks: int = 10, steps_per_task: int = 10_000, *, max_episode_steps: int | None = 500,
                 spread: float = 2.0, vary: Sequence[str] = ("gravity", "length", "masspole", "force_mag"),
                 distinct_tasks: int | None = None):
        super().__init__(num_tasks=num_tasks, steps_per_task=steps_per_task, max_episode_steps=max_episode_steps)
        spread = require_real("spread", spread, minimum=1.0)
        self.distinct_tasks = require_int("distinct_tasks", distinct_tasks, minimum=1, optional=True)
        if isinstance(vary, str) or not all(isinstance(v, str) for v in vary):
            raise TypeError(f"vary must be a list of parameter names such as ['gravity'], got {vary!r}")
        unknown = set(vary) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown CartPole parameter(s) {sorted(unknown)}; expected a subset of "
                             f"{sorted(self.DEFAULTS)}")
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        self._cartpole_cls = CartPoleEnv
        self.spread = float(spread)
        self.vary = tuple(vary)
        self.config = dict(num_tasks=self.num_tasks, steps_per_task=self.steps_per_task,
                           max_episode_steps=self.max_episode_steps, spread=self.spread, vary=list(self.vary),
                           distinct_tasks=self.distinct_tasks)
        probe = CartPoleEnv()
        self.observation_space = probe.observation_space
        self.action_space = probe.action_space

    def _task_params(self, task_id, rng):
        if self.distinct_tasks is not None and task_id >= self.distinct_tasks:
            # A revisit: task k has the physics of task k % distinct_tasks (drawn from that task's own stream).
            base = task_id % self.distinct_tasks
            return self._task_params(base, task_rng(self.stream_seed, base))
        log_s = np.log(self.spread)
        # Draw all four every task so that changing `vary` does not shift the others' values.
        draws = rng.uniform(-log_s, log_s, size=len(self.DEFAULTS))
        return {k: (float(v * np.exp(d)) if k in self.vary else float(v))
                for (k, v), d in zip(self.DEFAULTS.items(), draws)}

    def distinct_task(self, task_id: int) -> int:
        return int(task_id) if self.distinct_tasks is None else int(task_id) % self.distinct_tasks

    def _make_task_env(self, task_id, rng):
        env = self._cartpole_cls()
        p = self._task_params(task_id, rng)
        env.gravity, env.length, env.masspole, env.force_mag = p["gravity"], p["length"], p["masspole"], p["force_mag"]
        # CartPole caches these derived quantities in __init__.
        env.total_mass = env.masspole + env.masscart
        env.polemass_length = env.masspole * env.length
        return env


class TaskSequenceEnv(ContinualRLEnv):
    """A stream whose task k is ``gym.make(tasks[k % len(tasks)])``.

    Args:
        tasks: a list of gymnasium ids, or of ``{"id": ..., **kwargs}`` dicts (kwargs go to ``gym.make``). All tasks
            must share one observation space shape and one action space.
        num_tasks: stream length in tasks (default ``len(tasks)``; the list cycles when longer).
        steps_per_task, max_episode_steps: see :class:`ContinualRLEnv` (None keeps each id's own time limit).
    """

    def __init__(self, tasks: Sequence[str | dict] = ("CartPole-v1",), num_tasks: int | None = None,
                 steps_per_task: int = 10_000, *, max_episode_steps: int | None = None):
        if isinstance(tasks, (str, dict)):
            raise TypeError(f"tasks must be a list of gymnasium ids (or dicts), got {tasks!r}; pass [{tasks!r}]")
        if not tasks:
            raise ValueError("tasks must name at least one gymnasium id")
        self.tasks = [self._parse(t) for t in tasks]
        super().__init__(num_tasks=len(self.tasks) if num_tasks is None else num_tasks,
                         steps_per_task=steps_per_task, max_episode_steps=max_episode_steps)
        self.config = dict(tasks=[{"id": i, **kw} for i, kw in self.tasks], num_tasks=self.num_tasks,
                           steps_per_task=self.steps_per_task, max_episode_steps=self.max_episode_steps)
        first = self._build(0)
        self.observation_space, self.action_space = first.observation_space, first.action_space
        first.close()
        for k in range(1, len(self.tasks)):
            env = self._build(k)
            if env.observation_space.shape != self.observation_space.shape or env.action_space != self.action_space:
                raise ValueError(f"task {k} ({self.tasks[k][0]}) has observation space {env.observation_space} and "
                                 f"action space {env.action_space}; task 0 ({self.tasks[0][0]}) has "
                                 f"{self.observation_space} and {self.action_space}: all tasks must match")
            env.close()
        if isinstance(self.observation_space, spaces.Box) and len(self.tasks) > 1:
            # Tasks may bound the same shape differently: declare the union.
            lows, highs = [], []
            for k in range(len(self.tasks)):
                env = self._build(k)
                lows.append(env.observation_space.low), highs.append(env.observation_space.high)
                env.close()
            self.observation_space = spaces.Box(np.min(lows, 0), np.max(highs, 0), dtype=self.observation_space.dtype)

    @staticmethod
    def _parse(t) -> tuple[str, dict]:
        if isinstance(t, str):
            return t, {}
        if isinstance(t, dict) and "id" in t:
            kw = dict(t)
            return str(kw.pop("id")), kw
        raise TypeError(f"a task is a gymnasium id or a dict with an 'id' key, got {t!r}")

    def _build(self, index: int) -> gym.Env:
        env_id, kw = self.tasks[index]
        # The stream checks itself; the inner env's passive checker would only repeat warnings.
        return gym.make(env_id, disable_env_checker=True, **kw)

    def _task_params(self, task_id, rng):
        env_id, kw = self.tasks[task_id % len(self.tasks)]
        return {"id": env_id, **kw}

    def _make_task_env(self, task_id, rng):
        return self._build(task_id % len(self.tasks))


def _perturbed_sequence(env_id: str, num_tasks: int, steps_per_task: int, mode: str, max_episode_steps,
                        **perturb) -> gym.Env:
    from clenv.envs.wrappers import TaskObservationPerturbation

    base = TaskSequenceEnv([env_id], num_tasks=num_tasks, steps_per_task=steps_per_task,
                           max_episode_steps=max_episode_steps)
    return TaskObservationPerturbation(base, mode=mode, **perturb)


def ContinualAcrobot(num_tasks: int = 10, steps_per_task: int = 20_000, *, mode: str = "permute",
                     max_episode_steps: int | None = None, **perturb) -> gym.Env:
    """Acrobot-v1 with a new observation permutation (``mode="permute"``) or affine perturbation (``"affine"``)
    per task; ``perturb`` goes to :class:`clenv.envs.wrappers.TaskObservationPerturbation`."""
    return _perturbed_sequence("Acrobot-v1", num_tasks, steps_per_task, mode, max_episode_steps, **perturb)


def ContinualMountainCar(num_tasks: int = 10, steps_per_task: int = 50_000, *, mode: str = "affine",
                         max_episode_steps: int | None = None, **perturb) -> gym.Env:
    """MountainCar-v0 with a new observation perturbation per task (affine by default: with two dimensions a
    permutation has only one non-identity choice)."""
    return _perturbed_sequence("MountainCar-v0", num_tasks, steps_per_task, mode, max_episode_steps, **perturb)


class RevisitingObservationPerturbation(TaskObservationPerturbation):
    """:class:`clenv.envs.wrappers.TaskObservationPerturbation` whose task k uses the map of task
    ``k % distinct_tasks``: the stream revisits each of ``distinct_tasks`` input maps in turn."""

    def __init__(self, env: gym.Env, distinct_tasks: int, **kwargs):
        super().__init__(env, **kwargs)
        self.distinct_tasks = require_int("distinct_tasks", distinct_tasks, minimum=1)

    def transform(self, task_id: int):
        return super().transform(int(task_id) % self.distinct_tasks)

    def distinct_task(self, task_id: int) -> int:
        return int(task_id) % self.distinct_tasks


def PermutedCartPole(num_tasks: int = 12, steps_per_task: int = 6000, *, distinct_tasks: int = 3,
                     mode: str = "permute_affine", spread: float = 1.0, max_episode_steps: int | None = 500,
                     **perturb) -> gym.Env:
    """CartPole seen through ``distinct_tasks`` input maps (a permutation of the 4 observation dimensions, with
    ``mode="permute_affine"`` also a random sign, scale and offset per dimension), visited in turn
    (task k uses map ``k % distinct_tasks``), so every task after the first ``distinct_tasks`` is a revisit.
    ``spread > 1`` also switches the physics per distinct task (:class:`ContinualCartPoleEnv`); ``perturb`` goes to
    :class:`clenv.envs.wrappers.TaskObservationPerturbation` (``scale``, ``shift``, ``noise_std``)."""
    base = ContinualCartPoleEnv(num_tasks=num_tasks, steps_per_task=steps_per_task,
                                max_episode_steps=max_episode_steps, spread=spread, distinct_tasks=distinct_tasks)
    return RevisitingObservationPerturbation(base, distinct_tasks, mode=mode, **perturb)
