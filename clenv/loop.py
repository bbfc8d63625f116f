"""The one loop: ``run(env, agent)`` drives any agent through any clenv stream, supervised or RL.

Per step: ``action = agent.act(obs, info)``; ``env.step(action)``; ``agent.observe(...)`` (where it learns); callbacks
see every transition. At a task switch the agent's optional ``on_task_switch(task_id)`` is called before it acts on
the new task's first observation.

Episodic RL streams (whose env says ``info["stream_done"]`` is False at an episode end) are reset and continued; a
supervised stream is one episode.
"""

from __future__ import annotations

import array
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np

from clenv.metrics.online import online_metrics, window_size, window_accuracy
from clenv.seeding import set_global_rng_state

__all__ = ["run", "run_seeds", "Callback", "RunResult", "TaskTracker", "LoopState", "agent_name", "apply_seed_rule", "stateful",
           "return_metrics", "revisit_metrics"]


class Callback:
    """Hooks into :func:`run`. Override what you need; every method is optional."""

    def on_run_start(self, env, agent, result: "RunResult") -> None: ...

    def on_step(self, env, agent, step: dict) -> None: ...

    def on_task_end(self, env, agent, task_id: int, result: "RunResult") -> None: ...

    def on_run_end(self, env, agent, result: "RunResult") -> None: ...

    def on_step_boundary(self, env, agent, state: "LoopState") -> None:
        """Between two steps: after a step's callbacks, task-end hooks and the agent's ``on_task_switch``, before the
        agent acts on the next observation (also once before the first step). :class:`clenv.Checkpoint` saves here;
        called only on callbacks that override it."""

    # A callback that keeps state a resumed run needs defines ``state_dict()`` / ``load_state_dict(state)``: a
    # checkpoint saves it, and :func:`run` restores it after ``on_run_start`` when it continues from a saved state.


class _Agent(Protocol):
    def act(self, obs, info): ...

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None: ...


@dataclass
class RunResult:
    """What a run produced.

    ``task_accuracy[k]`` is the average online (prequential) reward of the k-th task in stream order (the accuracy,
    for supervised streams); ``step_reward`` / ``step_task`` hold every step; ``metrics`` is filled by evaluation
    callbacks; ``records`` holds extra per-step or per-task series they log. For episodic (RL) streams
    ``task_return[k]`` is the mean return of the episodes that ended in the k-th task (NaN if none did) and
    ``records["episodes"]`` lists every episode as ``(task_id, return, length)``.
    """

    env_id: str | None
    agent: str
    seed: int | None
    task_ids: list[int] = field(default_factory=list)
    task_accuracy: list[float] = field(default_factory=list)
    task_steps: list[int] = field(default_factory=list)
    num_task_switches: int = 0
    task_return: list[float] = field(default_factory=list)
    steps: int = 0
    episodes: int = 0
    wall_time: float = 0.0
    step_reward: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    step_task: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    metrics: dict[str, float] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def average_accuracy(self) -> float:
        """Average online task accuracy (mean over tasks of each task's mean online accuracy)."""
        return float(np.mean(self.task_accuracy)) if self.task_accuracy else float("nan")

    def last_fraction_accuracy(self, fraction: float) -> float:
        """Average online accuracy over the last ``fraction`` of tasks (the papers' last-25% column: 0.25)."""
        return window_accuracy(self.task_accuracy, fraction)


class TaskTracker:
    """Accumulates per-step rewards into per-task means; shared by the loop and anyone replaying records."""

    def __init__(self):
        # array.array appends: a step's record is two C appends (float32 and int32, as the result stores them)
        # instead of two numpy item assignments, which cost more per step after a training step has run
        self._reward = array.array("f")
        self._task = array.array("i")
        self.order: list[int] = []
        self._sums: list[float] = []
        self._counts: list[int] = []

    def add(self, task_id: int, reward: float) -> None:
        self._reward.append(reward)
        self._task.append(task_id)
        if not self.order or self.order[-1] != task_id:
            self.order.append(task_id)
            self._sums.append(0.0)
            self._counts.append(0)
        self._sums[-1] += reward
        self._counts[-1] += 1

    @property
    def n(self) -> int:
        """Steps recorded."""
        return len(self._reward)

    def running(self) -> float:
        return self._sums[-1] / self._counts[-1] if self._counts else float("nan")

    def fill(self, result: RunResult) -> None:
        result.task_ids = list(self.order)
        result.task_accuracy = [s / c for s, c in zip(self._sums, self._counts)]
        result.task_steps = list(self._counts)
        result.step_reward = np.array(self._reward, dtype=np.float32)
        result.step_task = np.array(self._task, dtype=np.int32)
        result.steps = self.n

    def state_dict(self) -> dict:
        return {"reward": np.array(self._reward, dtype=np.float32), "task": np.array(self._task, dtype=np.int32),
                "order": list(self.order),
                "sums": list(self._sums), "counts": list(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        self._reward = array.array("f", np.asarray(state["reward"], dtype=np.float32).tobytes())
        self._task = array.array("i", np.asarray(state["task"], dtype=np.int32).tobytes())
        self.order, self._sums, self._counts = list(state["order"]), list(state["sums"]), list(state["counts"])


def stateful(cb) -> bool:
    """Whether a callback keeps state that a resumed run must get back (it has ``state_dict`` / ``load_state_dict``)."""
    return callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None))


@dataclass
class LoopState:
    """The loop's position between two steps.

    Callbacks see it in :meth:`Callback.on_step_boundary`; :meth:`state_dict` is what a checkpoint saves of the loop,
    and ``run(start=LoopState.from_state_dict(...))`` continues from it. ``callback_states`` (the states of the
    stateful callbacks, :func:`stateful`, in their order) and ``rng`` (:func:`clenv.seeding.global_rng_state`) are
    restored by :func:`run` after the callbacks' ``on_run_start``."""

    obs: Any
    info: dict
    current_task: Any
    episodes: list
    ep_return: float
    ep_len: int
    tracker: TaskTracker
    result: RunResult
    elapsed: float
    callbacks: list = field(default_factory=list)
    callback_states: list = field(default_factory=list)
    rng: dict | None = None

    @property
    def step(self) -> int:
        """Steps taken so far."""
        return self.tracker.n

    def state_dict(self) -> dict:
        """The loop's part of a checkpoint (the env's, the agent's and the RNGs' are saved beside it)."""
        res = self.result
        return {"obs": self.obs, "info": self.info, "current_task": self.current_task,
                "episodes": list(self.episodes), "ep_return": self.ep_return, "ep_len": self.ep_len,
                "elapsed": float(self.elapsed), "tracker": self.tracker.state_dict(),
                "result": {"seed": res.seed, "num_task_switches": res.num_task_switches, "episodes": res.episodes,
                           "metrics": copy.deepcopy(res.metrics), "records": copy.deepcopy(res.records)},
                "callbacks": [cb.state_dict() for cb in self.callbacks if stateful(cb)]}

    @classmethod
    def from_state_dict(cls, state: dict, result: RunResult, rng: dict | None = None) -> "LoopState":
        tracker = TaskTracker()
        tracker.load_state_dict(state["tracker"])
        r = state["result"]
        result.seed = r["seed"]
        result.num_task_switches, result.episodes = r["num_task_switches"], r["episodes"]
        result.metrics.update(copy.deepcopy(r["metrics"]))
        result.records.update(copy.deepcopy(r["records"]))
        return cls(state["obs"], state["info"], state["current_task"], list(state["episodes"]), state["ep_return"],
                   state["ep_len"], tracker, result, state["elapsed"], [], list(state["callbacks"]), rng)


def agent_name(agent) -> str:
    """The name results and checkpoints use for an agent: its ``NAME``, else its class name."""
    return getattr(agent, "NAME", None) or type(agent).__name__


def apply_seed_rule(agent, seed: int | None) -> None:
    """The one seeding rule: the run seed also seeds an agent that was made without an explicit ``seed``
    (``agent.seed_explicit`` False; ``agent.reseed(seed)`` re-initialises it as if made with that seed). Agents
    that say nothing are left as they are."""
    if seed is None or getattr(agent, "seed_explicit", True):
        return
    reseed = getattr(agent, "reseed", None)
    if callable(reseed):
        reseed(int(seed))


def run(env, agent: _Agent, *, seed: int | None = None, progress: bool = True, callbacks: Iterable[Callback] = (),
        total_steps: int | None = None, evaluation: Callback | None = None, reset_options: dict | None = None,
        desc: str | None = None, start: LoopState | None = None, seeds: Iterable[int] | None = None
        ) -> RunResult | list[RunResult]:
    """Run ``agent`` on the stream ``env`` from reset to the stream's end (or ``total_steps``).

    Args:
        env: a clenv env (``gym.make("RandomLabelFashionMNIST-v0")``) or any env with the same info keys.
        agent: anything with ``act(obs, info)`` and ``observe(obs, action, reward, next_obs, terminated, truncated,
            info)``; ``on_task_switch(task_id)`` is called when present.
        seed: passed to ``env.reset``; the same seed gives the same stream. It also seeds an agent made without an
            explicit ``seed`` (:func:`apply_seed_rule`).
        progress: a progress bar showing the task and its running accuracy.
        callbacks: :class:`Callback` objects (metrics, probes, loggers, checkpoints).
        total_steps: stop after this many steps (default: the end of the stream).
        evaluation: a :class:`clenv.Evaluation` (or any callback); its metrics land in ``result.metrics``.
        start: continue from this loop state instead of resetting the env (the env and the agent already hold the
            matching state); :func:`clenv.resume` builds it from a checkpoint. ``total_steps`` still counts from the
            run's start.
        seeds: train one run per seed as one batched computation instead (:func:`run_seeds`); returns a list.
    Returns:
        a :class:`RunResult` with per-task online accuracy and the number of task switches (a list of them, one per
        seed, with ``seeds``).
    """
    if total_steps is not None and int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if seeds is not None:
        if seed is not None or start is not None:
            raise ValueError("pass either seed (and start) or seeds, not both")
        return run_seeds(env, agent, seeds, progress=progress, callbacks=callbacks, total_steps=total_steps,
                         evaluation=evaluation, reset_options=reset_options, desc=desc)
    callbacks = list(callbacks) + ([evaluation] if evaluation is not None else [])
    unwrapped = getattr(env, "unwrapped", env)
    if start is not None:
        result, tracker, obs, info = start.result, start.tracker, start.obs, start.info
        if total_steps is not None and tracker.n >= int(total_steps):
            raise ValueError(f"the run is at step {tracker.n}: total_steps={total_steps} is already reached")
        tracker.fill(result)  # callbacks' on_run_start sees how far the run is (steps > 0: a resumed run)
    else:
        apply_seed_rule(agent, seed)
        result = RunResult(env_id=None, agent=agent_name(agent), seed=seed)
        tracker = TaskTracker()
        obs, info = env.reset(seed=seed, options=reset_options)
    _describe(result, env, agent)
    on_switch = getattr(agent, "on_task_switch", None)
    limit = int(total_steps) if total_steps is not None else _stream_length(unwrapped)
    bar = _progress_bar(progress, limit, desc or f"{result.agent} on {result.env_id or type(unwrapped).__name__}")
    if bar is not None and tracker.n:
        bar.update(tracker.n)
    t0 = time.perf_counter()
    for cb in callbacks:
        cb.on_run_start(env, agent, result)
    if start is not None:
        keeping = [cb for cb in callbacks if stateful(cb)]
        if len(keeping) != len(start.callback_states):
            raise ValueError(f"the saved run had {len(start.callback_states)} stateful callbacks, this one has "
                             f"{len(keeping)}")
        for cb, st in zip(keeping, start.callback_states):
            cb.load_state_dict(st)
        if start.rng is not None:  # last: nothing after this may draw from the global streams before the step
            set_global_rng_state(start.rng)
        current_task, episodes, ep_return, ep_len = start.current_task, list(start.episodes), start.ep_return, \
            start.ep_len
        t0 -= start.elapsed
    else:
        if on_switch is not None and info.get("task_switch", False):
            on_switch(info.get("task_id"))
        current_task = info.get("task_id", 0)
        episodes: list[tuple[int, float, int]] = []
        ep_return, ep_len = 0.0, 0
    boundary = [cb for cb in callbacks if _overrides(cb, "on_step_boundary")]
    try:
        while True:
            if boundary:
                state = LoopState(obs, info, current_task, episodes, ep_return, ep_len, tracker, result,
                                  time.perf_counter() - t0, callbacks)
                for cb in boundary:
                    cb.on_step_boundary(env, agent, state)
            action = agent.act(obs, info)
            next_obs, reward, terminated, truncated, next_info = env.step(action)
            agent.observe(obs, action, reward, next_obs, terminated, truncated, next_info)
            task_of_reward = next_info.get("labels_task_id", current_task)
            tracker.add(task_of_reward, float(reward))
            ep_return, ep_len = ep_return + float(reward), ep_len + 1
            if terminated or truncated:
                episodes.append((int(task_of_reward), ep_return, ep_len))
                ep_return, ep_len = 0.0, 0
            if callbacks:
                step = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs,
                        "terminated": terminated, "truncated": truncated, "info": next_info, "task_id": task_of_reward,
                        "step": tracker.n}
                for cb in callbacks:
                    cb.on_step(env, agent, step)
            if bar is not None and (tracker.n % 50 == 0 or terminated):
                bar.update(tracker.n - bar.n)
                bar.set_postfix_str(f"task {task_of_reward} acc {tracker.running():.3f}", refresh=False)
            stream_done = (terminated or truncated) and next_info.get("stream_done", True)
            if stream_done or tracker.n >= limit:
                break
            if terminated or truncated:  # an episode of an RL stream ended; the stream goes on
                result.episodes += 1
                next_obs, next_info = env.reset()
            if next_info.get("task_switch", False) and next_info.get("task_id") != current_task:
                result.num_task_switches += 1
                tracker.fill(result)
                for cb in callbacks:
                    cb.on_task_end(env, agent, current_task, result)
                current_task = next_info.get("task_id")
                if on_switch is not None:
                    on_switch(current_task)
            obs, info = next_obs, next_info
    finally:
        if bar is not None:
            bar.close()
    result.wall_time = time.perf_counter() - t0
    return _finish(result, tracker, episodes, env, agent, current_task, callbacks)


def run_seeds(env, agent, seeds: Iterable[int], *, progress: bool = True, callbacks=(), total_steps: int | None = None,
              evaluation: Callback | None = None, reset_options: dict | None = None,
              desc: str | None = None) -> list[RunResult]:
    """Seeds vectorised: the runs ``run(env, agent_k, seed=s_k)`` for every seed, trained as one batched computation.

    Each seed gets its own env (``env`` itself for the first, then ``gymnasium.make(env.spec)``; an env id string is
    made once per seed; a list gives one env per seed) and its own agent (``agent`` for the first, then copies of it
    taken before the run; a list gives one agent per seed), seeded by the usual rule (:func:`apply_seed_rule`). ``agent.stack_seeds(agents)`` must return an object with
    ``act(observations) -> actions`` (one per seed), ``observe(observations, infos)`` and ``sync()`` (called after
    the agents' task-switch hooks); ``agents.seed_stack.SeedStack`` is the supervised agents' one, and agents that
    cannot stack raise a ``ValueError`` saying which can. Every seed's stream must switch tasks at the same steps
    (supervised streams do: steps per task are part of the configuration); episodic (RL) streams are refused.

    ``evaluation`` and the ``callbacks`` (a sequence, or a function ``seed -> callbacks``) are deep-copied per seed
    before the run, so each seed's probes keep their own state and see their own env and agent. Results come back
    in ``seeds`` order and equal the sequential runs' up to floating-point rounding (bit-identical on CPU for the
    supported agents, tested). Each result's ``wall_time`` is its share (the whole time over the number of seeds);
    ``records["vectorised"]`` holds the seeds trained together and their whole wall time.
    """
    import gymnasium as gym

    seeds = [int(_seed_value(s)) for s in seeds]
    if not seeds:
        raise ValueError("seeds must list at least one seed")
    if total_steps is not None and int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if isinstance(env, str):
        envs = [gym.make(env) for _ in seeds]
    elif isinstance(env, (list, tuple)):
        envs = list(env)
    else:
        spec = getattr(env, "spec", None)
        if spec is None and len(seeds) > 1:
            raise ValueError("run_seeds needs an env made with gymnasium.make (or an env id) to make one per seed")
        envs = [env] + [gym.make(spec) for _ in seeds[1:]]
    agents = list(agent) if isinstance(agent, (list, tuple)) else [agent] + [copy.deepcopy(agent) for _ in seeds[1:]]
    if len(envs) != len(seeds) or len(agents) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds need as many envs and agents, got {len(envs)} and {len(agents)}")
    agent = agents[0]
    stack_seeds = getattr(agent, "stack_seeds", None)
    if not callable(stack_seeds):
        raise ValueError(f"agent {agent_name(agent)!r} cannot train seeds as one computation (it has no stack_seeds)")
    for a, s in zip(agents, seeds):
        apply_seed_rule(a, s)
    stack = stack_seeds(agents)
    per_seed = []
    for s in seeds:
        cbs = list(callbacks(s)) if callable(callbacks) else copy.deepcopy(list(callbacks))
        per_seed.append(cbs + ([copy.deepcopy(evaluation)] if evaluation is not None else []))
    results = [RunResult(env_id=None, agent=agent_name(agent), seed=s) for s in seeds]
    trackers = [TaskTracker() for _ in seeds]
    first = [e.reset(seed=s, options=reset_options) for e, s in zip(envs, seeds)]
    obs, infos = [o for o, _ in first], [i for _, i in first]
    lengths = {_stream_length(e.unwrapped) for e in envs}
    if len(lengths) != 1:
        raise ValueError(f"the seeds' streams have different lengths {sorted(lengths)}; they must run in step")
    limit = int(total_steps) if total_steps is not None else lengths.pop()
    for e, a, r, cbs in zip(envs, agents, results, per_seed):
        _describe(r, e, a)
        for cb in cbs:
            cb.on_run_start(e, a, r)
    _switch_all(agents, stack, infos)
    current = [i.get("task_id", 0) for i in infos]
    name = results[0].env_id or type(envs[0].unwrapped).__name__
    bar = _progress_bar(progress, limit, desc or f"{results[0].agent} x{len(seeds)} seeds on {name}")
    t0 = time.perf_counter()
    try:
        while True:
            actions = stack.act(obs)
            steps = [e.step(a) for e, a in zip(envs, actions)]
            next_obs = [st[0] for st in steps]
            next_infos = [st[4] for st in steps]
            stack.observe(obs, next_infos)
            ends = {bool(st[2] or st[3]) for st in steps}
            if len(ends) != 1:
                raise RuntimeError("the seeds' streams ended at different steps; they must run in step")
            for k, (e, a, st, tracker, cbs) in enumerate(zip(envs, agents, steps, trackers, per_seed)):
                _, reward, terminated, truncated, info = st
                task = info.get("labels_task_id", current[k])
                tracker.add(task, float(reward))
                if (terminated or truncated) and not info.get("stream_done", True):
                    raise ValueError("run_seeds supports streams that are one episode (supervised streams), not "
                                     "episodic RL streams")
                if cbs:
                    step = {"obs": obs[k], "action": actions[k], "reward": reward, "next_obs": next_obs[k],
                            "terminated": terminated, "truncated": truncated, "info": info, "task_id": task,
                            "step": tracker.n}
                    for cb in cbs:
                        cb.on_step(e, a, step)
            n = trackers[0].n
            if bar is not None and (n % 50 == 0 or True in ends):
                bar.update(n - bar.n)
                mean = float(np.mean([t.running() for t in trackers]))
                bar.set_postfix_str(f"task {current[0]} acc {mean:.3f} (mean of {len(seeds)})", refresh=False)
            if True in ends or n >= limit:
                break
            switching = {bool(i.get("task_switch", False) and i.get("task_id") != c)
                         for i, c in zip(next_infos, current)}
            if len(switching) != 1:
                raise RuntimeError("the seeds' streams switched tasks at different steps; they must run in step")
            if True in switching:
                for k, (e, a, r, tracker, cbs) in enumerate(zip(envs, agents, results, trackers, per_seed)):
                    r.num_task_switches += 1
                    tracker.fill(r)
                    for cb in cbs:
                        cb.on_task_end(e, a, current[k], r)
                current = [i.get("task_id") for i in next_infos]
                _switch_all(agents, stack, next_infos)
            obs, infos = next_obs, next_infos
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    out = []
    for k, (e, a, r, tracker, cbs) in enumerate(zip(envs, agents, results, trackers, per_seed)):
        r.wall_time = wall / len(seeds)  # each seed's share, so that summing runs gives the time spent
        r.records["vectorised"] = {"seeds": list(seeds), "wall_time": wall}
        out.append(_finish(r, tracker, [], e, a, current[k], cbs))
    return out


def _switch_all(agents, stack, infos) -> None:
    """Every seed's agent enters its new task (when the stream says one began), then the stack re-synchronises."""
    if not infos[0].get("task_switch", False):
        return
    for a, info in zip(agents, infos):
        on_switch = getattr(a, "on_task_switch", None)
        if on_switch is not None:
            on_switch(info.get("task_id"))
    stack.sync()


def _seed_value(s):
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
        raise ValueError(f"seeds must be integers, got {s!r}")
    return s


def _describe(result: RunResult, env, agent) -> None:
    """The result's env id and configuration (the env's ``config``, the agent's hyperparameters)."""
    spec = getattr(env, "spec", None)
    result.env_id = spec.id if spec is not None else None
    result.config = {"env": dict(getattr(getattr(env, "unwrapped", env), "config", {}) or {}),
                     "agent": dict(getattr(agent, "hparams", {}) or {}), **{k: v for k, v in result.config.items()
                                                                             if k not in ("env", "agent")}}


def _finish(result: RunResult, tracker: TaskTracker, episodes: list, env, agent, current_task, callbacks) -> RunResult:
    """The end of a run: per-task means and returns, the online metrics, the last task-end and run-end hooks."""
    check = getattr(agent, "check_finite", None)
    if callable(check):  # the last task's divergence, which no task switch checks (agents check at each switch)
        check()
    unwrapped = getattr(env, "unwrapped", env)
    result.episodes += 1
    tracker.fill(result)
    _fill_returns(result, episodes)
    # The online metrics cost nothing, so every run has them (reports need no Evaluation for the papers' main table).
    result.metrics.update(online_metrics(result.task_accuracy))
    if getattr(unwrapped, "task_type", None) == "regression":  # the reward is -MSE: say what the average is
        result.metrics["avg_online_mse"] = -result.metrics["avg_online_acc"]
    if result.episodes > 1:  # an episodic (RL) stream: the per-task mean episode return is what matters
        result.metrics.update(return_metrics(result.task_return))
        _fill_revisits(result, env)
    for cb in callbacks:
        cb.on_task_end(env, agent, current_task, result)
    for cb in callbacks:
        cb.on_run_end(env, agent, result)
    return result


def _overrides(cb, name: str) -> bool:
    """Whether ``cb`` implements hook ``name`` (a :class:`Callback` subclass that overrides it, or duck typing)."""
    impl = getattr(type(cb), name, None)
    return impl is not None and impl is not getattr(Callback, name, None)


def task_returns(episodes, task_ids) -> list[float]:
    """Per-task mean episode return for the tasks ``task_ids``, from ``(task_id, return, length)`` episodes grouped
    by the task their last step belongs to (NaN for a task in which no episode ended)."""
    by_task: dict[int, list[float]] = {}
    for task, ret, _ in episodes:
        by_task.setdefault(int(task), []).append(float(ret))
    return [float(np.mean(by_task[t])) if t in by_task else float("nan") for t in task_ids]


def _fill_returns(result: RunResult, episodes: list[tuple[int, float, int]]) -> None:
    result.records["episodes"] = list(episodes)
    result.task_return = task_returns(episodes, result.task_ids)


def return_metrics(task_return, windows=(0.1, 0.25, 1.0)) -> dict[str, float]:
    """``avg_task_return`` and ``task_return_last{p}``: means over tasks (tasks in which no episode ended are
    skipped) of the per-task mean episode return."""
    r = np.asarray(task_return, dtype=np.float64)
    out = {"avg_task_return": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")}
    for f in windows:
        last = r[-window_size(r.size, f):] if r.size else r
        mean = float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")
        out[f"task_return_last{int(round(f * 100))}"] = mean
    return out


def _fill_revisits(result: RunResult, env) -> None:
    """For streams that revisit tasks (``distinct_task(k) != k``): the revisit table and its metrics."""
    try:
        distinct = env.get_wrapper_attr("distinct_task") if hasattr(env, "get_wrapper_attr") else env.distinct_task
    except AttributeError:
        return
    ids = [distinct(t) for t in result.task_ids]
    if ids == list(result.task_ids):
        return
    table, metrics = revisit_metrics(result.task_return, ids)
    result.records["revisits"] = table
    result.metrics.update(metrics)


def revisit_metrics(task_return, distinct_ids) -> tuple[list[dict], dict[str, float]]:
    """The RL analogue of the forgetting matrix: every task's return next to the first visit of the same distinct
    task. Returns rows ``{"task", "distinct", "visit", "return", "change"}`` (``change`` = return - first visit's)
    and ``first_visit_return`` (mean over distinct tasks), ``revisit_return`` (mean over revisits),
    ``revisit_return_change`` (mean change over revisits) and ``last_visit_return_change`` (the mean change of
    each distinct task's last visit). NaN returns (no finished episode) are skipped."""
    r = np.asarray(task_return, dtype=np.float64)
    first: dict[int, float] = {}
    visits: dict[int, int] = {}
    table = []
    for k, (ret, d) in enumerate(zip(r, distinct_ids)):
        d = int(d)
        v = visits.get(d, 0)
        visits[d] = v + 1
        if v == 0:
            first[d] = float(ret)
        table.append({"task": k, "distinct": d, "visit": v, "return": float(ret),
                      "change": float(ret - first[d])})
    later = [row for row in table if row["visit"] > 0 and np.isfinite(row["change"])]
    last = {row["distinct"]: row for row in later}  # the last visit of each distinct task

    def mean(xs):
        xs = [x for x in xs if np.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    return table, {"first_visit_return": mean(first.values()),
                   "revisit_return": mean(row["return"] for row in later),
                   "revisit_return_change": mean(row["change"] for row in later),
                   "last_visit_return_change": mean(row["change"] for row in last.values())}


def _stream_length(unwrapped) -> int:
    n = getattr(unwrapped, "total_steps", None)
    return int(n) if isinstance(n, (int, np.integer)) else 2**62


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total if total < 2**62 else None, desc=desc, unit="step", mininterval=0.5, leave=False)
