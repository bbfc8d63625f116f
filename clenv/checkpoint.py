"""Checkpoint and resume long runs: ``clenv.Checkpoint(directory, every=N)`` and ``clenv.run(..., resume_from=)``.

Usage::

    ckpt = clenv.Checkpoint("ckpt/run0", every=500)
    result = clenv.run(env, agent, seed=0, callbacks=[ckpt])          # killed at some point ...
    # ... later, in a new process, with a freshly made env and agent (same id, kwargs, agent name, hyperparameters):
    result = clenv.run(env, agent, seed=0, callbacks=[ckpt], resume_from="ckpt/run0")

The resumed run's :class:`~clenv.loop.RunResult` (per-step rewards, per-task accuracies, task switches) is identical,
bit for bit, to the run that was never interrupted (``wall_time`` excepted). A checkpoint is taken between two steps
(:meth:`clenv.Callback.on_step_boundary`) whenever the step count is a multiple of ``every``; it is one file,
``<directory>/checkpoint.pt``, replaced atomically (temporary file + ``os.replace``), so a crash while saving leaves the
previous checkpoint intact. The file starts with a magic line and the SHA-256 of its payload: a truncated or altered
file is refused.

A checkpoint holds:

- the env's stream position, ``env.unwrapped.state_dict()`` (:meth:`SupervisedStreamEnv.state_dict`);
- the agent's ``state_dict()``, its class, registry name and ``hparams``;
- the loop's state: the observation and info the agent acts on next, the per-step rewards and task ids (the
  :class:`~clenv.loop.TaskTracker`), the current task, the episode list, the task-switch and episode counters and
  ``result.metrics`` / ``result.records``;
- the state of every callback that has ``state_dict()`` / ``load_state_dict()``;
- the global torch (CPU and, when initialised, CUDA), numpy and ``random`` RNG states.

Contracts:

- **Agents**: ``state_dict()`` must return everything that changes during a run and affects later steps, and
  ``load_state_dict()`` must restore it into an agent freshly built with the same hyperparameters.
  ``agents.base.SupervisedAgent`` covers network, optimiser, update count and task id; a method with more state
  (replay buffers, Fisher estimates, utilities, EMAs, RNG generators of its own) extends both methods.
- **Callbacks**: one with ``state_dict()`` / ``load_state_dict()`` is saved and restored (matched by position and
  class); one without is assumed stateless. :class:`clenv.Evaluation` keeps probe state that is not checkpointed:
  combining it with a checkpoint (or resuming with one) raises :class:`CheckpointError`.
- **Envs**: ``env.unwrapped`` needs ``state_dict()`` / ``load_state_dict()``; wrappers must be stateless across
  steps. Continual RL envs do not implement it yet.

Loading checks the format, the checksum, the env id and configuration (``data_root`` / ``download`` may differ), the
agent's class, name and hyperparameters, the seed and the callbacks, and raises :class:`CheckpointError` naming the
mismatch before anything is changed. Checkpoints are pickles (``torch.load(weights_only=False)``): load only your own.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clenv.loop import Callback, LoopState, RunResult, TaskTracker, _agent_name

__all__ = ["Checkpoint", "CheckpointError", "read_checkpoint", "restore_run", "checkpoint_path", "FORMAT"]

FORMAT = "clenv-checkpoint/1"
FILENAME = "checkpoint.pt"
_MAGIC = b"CLENV-CHECKPOINT-1\n"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not belong to this env / agent / seed / callbacks."""


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file for a checkpoint directory (or the file itself)."""
    p = Path(path)
    return p if p.suffix == ".pt" and not p.is_dir() else p / FILENAME


# ---------------------------------------------------------------------------------------------- file format
def _encode(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    return _MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The payload of a checkpoint file or directory, after checking its magic line, checksum and format."""
    f = checkpoint_path(path)
    if not f.is_file():
        raise CheckpointError(f"no checkpoint at {f}")
    data = f.read_bytes()
    head = len(_MAGIC) + 65
    if not data.startswith(_MAGIC) or len(data) < head or data[head - 1:head] != b"\n":
        raise CheckpointError(f"{f} is not a clenv checkpoint (bad header)")
    digest, body = data[len(_MAGIC):head - 1].decode("ascii", "replace"), data[head:]
    if hashlib.sha256(body).hexdigest() != digest:
        raise CheckpointError(f"{f} is corrupt: its checksum does not match (truncated or altered file)")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{f} is corrupt: {type(err).__name__}: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{f}: unknown checkpoint format {fmt!r}, expected {FORMAT!r}")
    return payload


# ---------------------------------------------------------------------------------------------- RNG states
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- identity checks
def _env_identity(env) -> dict:
    u = getattr(env, "unwrapped", env)
    spec = getattr(env, "spec", None)
    return {"env_id": spec.id if spec is not None else None, "env_type": type(u).__qualname__,
            "env_config": dict(getattr(u, "config", {}) or {})}


def _agent_identity(agent) -> dict:
    return {"agent_name": _agent_name(agent), "agent_class": type(agent).__qualname__,
            "agent_hparams": dict(getattr(agent, "hparams", {}) or {})}


def _is_evaluation(cb) -> bool:
    from clenv.evaluation import Evaluation

    return isinstance(cb, Evaluation)


def _stateful(cb) -> bool:
    return callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None))


def _saved_callbacks(callbacks) -> list[tuple[int, Any]]:
    """(position, callback) of the callbacks whose state a checkpoint holds; refuses an Evaluation without state."""
    out = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Checkpoint):
            continue
        if _stateful(cb):
            out.append((i, cb))
        elif _is_evaluation(cb):
            raise CheckpointError("clenv.Evaluation keeps probe state that checkpoints do not hold: resuming a run "
                                  "with an Evaluation is unsupported. Run the evaluation without a Checkpoint, or "
                                  "checkpoint the run without evaluation=")
    return out


_FREE_CONFIG = ("data_root", "download")  # where the data live, not what they are


def _mismatches(saved: dict, env, agent, seed, callbacks) -> list[str]:
    problems = []
    env_now = _env_identity(env)
    if saved["env_id"] != env_now["env_id"]:
        problems.append(f"env id {saved['env_id']!r} (this run: {env_now['env_id']!r})")
    if saved["env_type"] != env_now["env_type"]:
        problems.append(f"env class {saved['env_type']} (this run: {env_now['env_type']})")
    a = {k: v for k, v in saved["env_config"].items() if k not in _FREE_CONFIG}
    b = {k: v for k, v in env_now["env_config"].items() if k not in _FREE_CONFIG}
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            problems.append(f"env kwarg {k}={a.get(k, '<unset>')!r} (this run: {b.get(k, '<unset>')!r})")
    agent_now = _agent_identity(agent)
    for key, what in (("agent_name", "agent"), ("agent_class", "agent class")):
        if saved[key] != agent_now[key]:
            problems.append(f"{what} {saved[key]!r} (this run: {agent_now[key]!r})")
    ha, hb = saved["agent_hparams"], agent_now["agent_hparams"]
    for k in sorted(set(ha) | set(hb)):
        if ha.get(k, "<unset>") != hb.get(k, "<unset>"):
            problems.append(f"agent hyperparameter {k}={ha.get(k, '<unset>')!r} (this run: {hb.get(k, '<unset>')!r})")
    if seed is not None and saved["seed"] != seed:
        problems.append(f"seed {saved['seed']!r} (this run: {seed!r})")
    now = [(i, type(cb).__qualname__) for i, cb in _saved_callbacks(callbacks)]
    then = [(i, name) for i, name, _ in saved["callbacks"]]
    if now != then:
        problems.append(f"stateful callbacks {then} (this run: {now})")
    return problems


# ---------------------------------------------------------------------------------------------- saving
class Checkpoint(Callback):
    """Save the run every ``every`` steps to ``<directory>/checkpoint.pt`` (atomically; see :mod:`clenv.checkpoint`).

    Args:
        directory: where the checkpoint file lives (created on the first save).
        every: steps between checkpoints; a checkpoint is taken when the step count is a multiple of it.
        overwrite: start a new run in a directory that already holds a checkpoint (default: refuse, so a forgotten
            ``resume_from=`` does not destroy the saved run).

    ``saved_steps`` lists the steps saved by this callback; ``save_seconds`` their total time.
    """

    def __init__(self, directory: str | os.PathLike, every: int = 1000, *, overwrite: bool = False):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.directory = Path(directory)
        self.every = int(every)
        self.overwrite = bool(overwrite)
        self.saved_steps: list[int] = []
        self.save_seconds = 0.0
        self._resumed_step: int | None = None  # set by restore_run on the checkpoints of a resumed run

    @property
    def path(self) -> Path:
        return checkpoint_path(self.directory)

    def on_run_start(self, env, agent, result: RunResult) -> None:
        u = getattr(env, "unwrapped", env)
        if not (callable(getattr(u, "state_dict", None)) and callable(getattr(u, "load_state_dict", None))):
            raise CheckpointError(f"Checkpoint needs an env with state_dict() / load_state_dict() (as "
                                  f"SupervisedStreamEnv has); {type(u).__name__} has none")
        if not (callable(getattr(agent, "state_dict", None)) and callable(getattr(agent, "load_state_dict", None))):
            raise CheckpointError(f"Checkpoint needs an agent with state_dict() / load_state_dict(); "
                                  f"{type(agent).__name__} has none")
        if self._resumed_step is None and self.path.exists() and not self.overwrite:
            raise CheckpointError(f"{self.path} already holds a checkpoint: resume it with "
                                  f"run(..., resume_from={str(self.directory)!r}), or pass overwrite=True / another "
                                  f"directory to start a new run")

    def on_run_end(self, env, agent, result: RunResult) -> None:
        self._resumed_step = None  # a later run with this callback is a new run unless resumed again

    def on_step_boundary(self, env, agent, state: LoopState) -> None:
        n = state.step
        if n == 0:
            _saved_callbacks(state.callbacks)  # fail before the first step, not at the first save
            return
        if n % self.every or n == self._resumed_step or (self.saved_steps and self.saved_steps[-1] == n):
            return
        self.save(env, agent, state)

    def save(self, env, agent, state: LoopState) -> Path:
        """Write a checkpoint of ``state`` now (the loop calls this; call it yourself from ``on_step_boundary``)."""
        import time

        t0 = time.perf_counter()
        u = getattr(env, "unwrapped", env)
        tr, res = state.tracker, state.result
        payload = {
            "format": FORMAT,
            **_env_identity(env), **_agent_identity(agent),
            "seed": res.seed,
            "step": int(tr.n),
            "env": u.state_dict(),
            "agent": agent.state_dict(),
            "loop": {"obs": state.obs, "info": state.info, "current_task": state.current_task,
                     "episodes": list(state.episodes), "ep_return": state.ep_return, "ep_len": state.ep_len,
                     "elapsed": float(state.elapsed)},
            "tracker": {"reward": tr._reward[:tr.n].copy(), "task": tr._task[:tr.n].copy(), "order": list(tr.order),
                        "sums": list(tr._sums), "counts": list(tr._counts)},
            "result": {"num_task_switches": res.num_task_switches, "episodes": res.episodes,
                       "metrics": copy.deepcopy(res.metrics), "records": copy.deepcopy(res.records)},
            "callbacks": [(i, type(cb).__qualname__, cb.state_dict()) for i, cb in _saved_callbacks(state.callbacks)],
            "rng": _rng_state(),
            "torch_version": torch.__version__,
        }
        from clenv.results import atomic_write_bytes

        atomic_write_bytes(self.path, _encode(payload))
        self.saved_steps.append(int(tr.n))
        self.save_seconds += time.perf_counter() - t0
        return self.path

    def resume(self, env, agent, **run_kwargs) -> RunResult:
        """``clenv.run(env, agent, resume_from=self.directory, callbacks=[self, ...])``: continue the saved run, still
        checkpointing."""
        from clenv.loop import run

        callbacks = list(run_kwargs.pop("callbacks", ()))
        if not any(cb is self for cb in callbacks):
            callbacks.insert(0, self)
        return run(env, agent, resume_from=self.directory, callbacks=callbacks, **run_kwargs)


# ---------------------------------------------------------------------------------------------- resuming
@dataclass
class _Resumed:
    state: LoopState
    callback_states: list
    rng: dict

    def finish(self) -> None:
        """Restore callback states, then the global RNG states (the loop calls this after ``on_run_start``)."""
        for cb, st in self.callback_states:
            cb.load_state_dict(st)
        _set_rng_state(self.rng)


def restore_run(path, env, agent, result: RunResult, callbacks, *, seed=None, reset_options=None) -> _Resumed:
    """Load a checkpoint into ``env`` and ``agent`` for :func:`clenv.run` (``resume_from=``).

    Everything is checked first (file, env, agent, seed, callbacks); on a mismatch a :class:`CheckpointError` names
    it and neither env nor agent is touched. Returns the loop state; ``finish()`` restores callbacks and RNGs."""
    saved = read_checkpoint(path)
    callbacks = list(callbacks)
    problems = _mismatches(saved, env, agent, seed, callbacks)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint_path(path)} belongs to another run: " + "; ".join(problems))
    u = getattr(env, "unwrapped", env)
    if not callable(getattr(u, "load_state_dict", None)):
        raise CheckpointError(f"cannot resume: {type(u).__name__} has no load_state_dict()")

    # Agent first, rolled back if its load fails part way.
    backup = copy.deepcopy(agent.state_dict())
    try:
        agent.load_state_dict(saved["agent"])
    except Exception as err:
        agent.load_state_dict(backup)
        raise CheckpointError(f"checkpoint {checkpoint_path(path)}: the agent's state does not load: "
                              f"{type(err).__name__}: {err}") from err
    # reset() puts the wrappers (order enforcing, env checker) in their started state; then the stream jumps ahead.
    env.reset(seed=saved["seed"], options=reset_options)
    try:
        u.load_state_dict(saved["env"])
    except Exception as err:
        agent.load_state_dict(backup)
        raise CheckpointError(f"checkpoint {checkpoint_path(path)}: the env's state does not load: {err}") from err

    t = saved["tracker"]
    tracker = TaskTracker(capacity=max(1024, 2 * len(t["reward"])))
    n = len(t["reward"])
    tracker._reward[:n], tracker._task[:n], tracker.n = t["reward"], t["task"], n
    tracker.order, tracker._sums, tracker._counts = list(t["order"]), list(t["sums"]), list(t["counts"])
    r = saved["result"]
    result.seed = saved["seed"]
    result.num_task_switches, result.episodes = r["num_task_switches"], r["episodes"]
    result.metrics.update(r["metrics"])
    result.records.update(r["records"])
    lp = saved["loop"]
    state = LoopState(lp["obs"], lp["info"], lp["current_task"], list(lp["episodes"]), lp["ep_return"], lp["ep_len"],
                      tracker, result, lp["elapsed"], callbacks)
    for cb in callbacks:
        if isinstance(cb, Checkpoint):
            cb._resumed_step = n
    by_pos = dict(_saved_callbacks(callbacks))
    cb_states = [(by_pos[i], st) for i, _, st in saved["callbacks"]]
    return _Resumed(state, cb_states, saved["rng"])
