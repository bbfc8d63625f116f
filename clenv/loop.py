"""The one loop: ``run(env, agent)`` drives any agent through any clenv stream, supervised or RL.

Per step: ``action = agent.act(obs, info)``; ``env.step(action)``; ``agent.observe(...)`` (where it learns); callbacks
see every transition. At a task switch the agent's optional ``on_task_switch(task_id)`` is called before it acts on
the new task's first observation.

Episodic RL streams (whose env says ``info["stream_done"]`` is False at an episode end) are reset and continued; a
supervised stream is one episode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import numpy as np

__all__ = ["run", "Callback", "RunResult", "TaskTracker", "LoopState"]


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
        from clenv.metrics.online import window_accuracy

        return window_accuracy(self.task_accuracy, fraction)


class TaskTracker:
    """Accumulates per-step rewards into per-task means; shared by the loop and anyone replaying records."""

    def __init__(self, capacity: int = 1024):
        self._reward = np.zeros(capacity, np.float32)
        self._task = np.zeros(capacity, np.int32)
        self.n = 0
        self.order: list[int] = []
        self._sums: list[float] = []
        self._counts: list[int] = []

    def add(self, task_id: int, reward: float) -> None:
        if self.n == self._reward.size:
            self._reward = np.resize(self._reward, 2 * self.n)
            self._task = np.resize(self._task, 2 * self.n)
        self._reward[self.n], self._task[self.n] = reward, task_id
        self.n += 1
        if not self.order or self.order[-1] != task_id:
            self.order.append(task_id)
            self._sums.append(0.0)
            self._counts.append(0)
        self._sums[-1] += reward
        self._counts[-1] += 1

    def running(self) -> float:
        return self._sums[-1] / self._counts[-1] if self._counts else float("nan")

    def fill(self, result: RunResult) -> None:
        result.task_ids = list(self.order)
        result.task_accuracy = [s / c for s, c in zip(self._sums, self._counts)]
        result.task_steps = list(self._counts)
        result.step_reward = self._reward[:self.n].copy()
        result.step_task = self._task[:self.n].copy()
        result.steps = self.n


@dataclass
class LoopState:
    """The loop's position between two steps: what :class:`clenv.Checkpoint` saves and ``run(resume_from=)``
    restores (with the env's, the agent's and the callbacks' own state)."""

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

    @property
    def step(self) -> int:
        """Steps taken so far."""
        return self.tracker.n


def _agent_name(agent) -> str:
    return getattr(agent, "NAME", None) or type(agent).__name__


def run(env, agent: _Agent, *, seed: int | None = None, progress: bool = True, callbacks: Iterable[Callback] = (),
        total_steps: int | None = None, evaluation: Callback | None = None, reset_options: dict | None = None,
        desc: str | None = None, resume_from=None) -> RunResult:
    """Run ``agent`` on the stream ``env`` from reset to the stream's end (or ``total_steps``).

    Args:
        env: a clenv env (``gym.make("RandomLabelFashionMNIST-v0")``) or any env with the same info keys.
        agent: anything with ``act(obs, info)`` and ``observe(obs, action, reward, next_obs, terminated, truncated,
            info)``; ``on_task_switch(task_id)`` is called when present.
        seed: passed to ``env.reset``; the same seed gives the same stream.
        progress: a progress bar showing the task and its running accuracy.
        callbacks: :class:`Callback` objects (metrics, probes, loggers, checkpoints).
        total_steps: stop after this many steps (default: the end of the stream).
        evaluation: a :class:`clenv.Evaluation` (or any callback); its metrics land in ``result.metrics``.
        resume_from: a :class:`clenv.Checkpoint` directory (or file): continue that run from its last checkpoint,
            with the same env configuration, agent and hyperparameters, to the same final result as an uninterrupted
            run. ``total_steps`` still counts from the run's start. See :mod:`clenv.checkpoint`.
    Returns:
        a :class:`RunResult` with per-task online accuracy and the number of task switches.
    """
    if total_steps is not None and int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    callbacks = list(callbacks) + ([evaluation] if evaluation is not None else [])
    spec = getattr(env, "spec", None)
    result = RunResult(env_id=spec.id if spec is not None else None, agent=_agent_name(agent), seed=seed)
    unwrapped = getattr(env, "unwrapped", env)
    result.config = {"env": dict(getattr(unwrapped, "config", {}) or {}),
                     "agent": dict(getattr(agent, "hparams", {}) or {})}
    on_switch = getattr(agent, "on_task_switch", None)
    tracker = TaskTracker()
    resumed = None
    if resume_from is not None:
        from clenv.checkpoint import restore_run

        # Verifies the checkpoint against env, agent, seed and callbacks before changing anything.
        resumed = restore_run(resume_from, env, agent, result, callbacks, seed=seed, reset_options=reset_options)
        tracker, obs, info = resumed.state.tracker, resumed.state.obs, resumed.state.info
        if total_steps is not None and tracker.n >= int(total_steps):
            raise ValueError(f"the checkpoint is at step {tracker.n}: total_steps={total_steps} is already reached")
    else:
        obs, info = env.reset(seed=seed, options=reset_options)
    limit = int(total_steps) if total_steps is not None else _stream_length(unwrapped)
    bar = _progress_bar(progress, limit, desc or f"{result.agent} on {result.env_id or type(unwrapped).__name__}")
    start = time.perf_counter()
    for cb in callbacks:
        cb.on_run_start(env, agent, result)
    if resumed is not None:
        resumed.finish()  # callback states, then the global RNG states: nothing after this may draw from them
        st = resumed.state
        current_task, episodes, ep_return, ep_len = st.current_task, list(st.episodes), st.ep_return, st.ep_len
        start -= st.elapsed
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
                                  time.perf_counter() - start, callbacks)
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
            step = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "terminated": terminated,
                    "truncated": truncated, "info": next_info, "task_id": task_of_reward, "step": tracker.n}
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
    result.episodes += 1
    result.wall_time = time.perf_counter() - start
    tracker.fill(result)
    _fill_returns(result, episodes)
    # The online metrics cost nothing, so every run has them (reports need no Evaluation for the papers' main table).
    from clenv.metrics.online import online_metrics

    result.metrics.update(online_metrics(result.task_accuracy))
    if result.episodes > 1:  # an episodic (RL) stream: the per-task mean episode return is what matters
        result.metrics.update(return_metrics(result.task_return))
    for cb in callbacks:
        cb.on_task_end(env, agent, current_task, result)
    for cb in callbacks:
        cb.on_run_end(env, agent, result)
    return result


def _overrides(cb, name: str) -> bool:
    """Whether ``cb`` implements hook ``name`` (a :class:`Callback` subclass that overrides it, or duck typing)."""
    impl = getattr(type(cb), name, None)
    return impl is not None and impl is not getattr(Callback, name, None)


def _fill_returns(result: RunResult, episodes: list[tuple[int, float, int]]) -> None:
    """Per-task mean episode return (episodes grouped by the task their last step belongs to)."""
    result.records["episodes"] = list(episodes)
    by_task: dict[int, list[float]] = {}
    for task, ret, _ in episodes:
        by_task.setdefault(task, []).append(ret)
    result.task_return = [float(np.mean(by_task[t])) if t in by_task else float("nan") for t in result.task_ids]


def return_metrics(task_return, windows=(0.1, 0.25, 1.0)) -> dict[str, float]:
    """``avg_task_return`` and ``task_return_last{p}``: means over tasks (tasks in which no episode ended are
    skipped) of the per-task mean episode return."""
    from clenv.metrics.online import window_size

    r = np.asarray(task_return, dtype=np.float64)
    out = {"avg_task_return": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")}
    for f in windows:
        last = r[-window_size(r.size, f):] if r.size else r
        out[f"task_return_last{int(round(f * 100))}"] = float(np.nanmean(last)) if np.isfinite(last).any() else float("nan")
    return out


def _stream_length(unwrapped) -> int:
    n = getattr(unwrapped, "total_steps", None)
    return int(n) if isinstance(n, (int, np.integer)) else 2**62


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total if total < 2**62 else None, desc=desc, unit="step", mininterval=0.5, leave=False)
