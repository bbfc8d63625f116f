"""Checkpoint and resume long runs: ``clenv.Checkpoint(directory, every=N)`` and ``clenv.resume(directory, env,
agent)``.

Usage::

    ckpt = clenv.Checkpoint("ckpt/run0", every=500)
    result = clenv.run(env, agent, seed=0, callbacks=[ckpt])          # killed at some point ...
    # ... later, in a new process, with a freshly made env and agent (same id, kwargs, agent name, hyperparameters):
    result = clenv.resume("ckpt/run0", env, agent, seed=0, callbacks=[ckpt])     # or ckpt.resume(env, agent, seed=0)

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
- **Callbacks**: one with ``state_dict()`` / ``load_state_dict()`` is saved and restored (matched by order, class
  and options); one without is assumed stateless. Every probe of :mod:`clenv.probes` and :class:`clenv.Evaluation` has
  state, so a run with every probe resumes exactly.
- **Envs**: ``env.unwrapped`` needs ``state_dict()`` / ``load_state_dict()``; wrappers must be stateless across
  steps. The continual RL envs (:class:`clenv.envs.rl.ContinualRLEnv`) save their stream position and a copy of
  the running inner env, so RL runs (tianshou agents with their replay buffers) resume exactly too.

Loading checks the format, the checksum, the env id and configuration (``data_root`` / ``download`` may differ), the
agent's class, name and hyperparameters, the seed and the callbacks, and raises :class:`CheckpointError` naming the
mismatch before anything is changed. Checkpoints are pickles (``torch.load(weights_only=False)``): load only your own.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import time
from pathlib import Path

import torch

from clenv.data import LOCATION_KWARGS
from clenv.loop import Callback, LoopState, RunResult, agent_name, apply_seed_rule, run, stateful
from clenv.results import atomic_write_bytes
from clenv.seeding import global_rng_state

__all__ = ["Checkpoint", "CheckpointError", "read_checkpoint", "resume", "resume_state", "checkpoint_path",
           "FORMAT"]

FORMAT = "clenv-checkpoint/2"
FILENAME = "checkpoint.pt"
_MAGIC = b"CLENV-CHECKPOINT-2\n"



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
        raise CheckpointError(f"{f} is not a clenv checkpoint of format {FORMAT!r} (bad header)")
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


# ---------------------------------------------------------------------------------------------- identity checks
def _identity(env, agent) -> dict:
    u = getattr(env, "unwrapped", env)
    spec = getattr(env, "spec", None)
    return {"env_id": spec.id if spec is not None else None, "env_type": type(u).__qualname__,
            "env_config": dict(getattr(u, "config", {}) or {}), "agent_name": agent_name(agent),
            "agent_class": type(agent).__qualname__, "agent_hparams": dict(getattr(agent, "hparams", {}) or {})}


def _saved_callbacks(callbacks) -> list[tuple]:
    """(class, options) of the callbacks whose state a checkpoint holds, in order."""
    return [(type(cb).__qualname__, getattr(cb, "options", None)) for cb in callbacks if stateful(cb)]


def _diff(what: str, then: dict, now: dict, skip=()) -> list[str]:
    keys = sorted((set(then) | set(now)) - set(skip))
    return [f"{what} {k}={then.get(k, '<unset>')!r} (this run: {now.get(k, '<unset>')!r})"
            for k in keys if then.get(k, "<unset>") != now.get(k, "<unset>")]


def _mismatches(saved: dict, env, agent, seed, callbacks) -> list[str]:
    now = _identity(env, agent)
    if not getattr(agent, "seed_explicit", True) and "seed" in now["agent_hparams"]:
        now["agent_hparams"]["seed"] = saved["seed"]  # what the seed rule will make of it
    problems = [f"{what} {saved[key]!r} (this run: {now[key]!r})"
                for key, what in (("env_id", "env id"), ("env_type", "env class"), ("agent_name", "agent"),
                                  ("agent_class", "agent class")) if saved[key] != now[key]]
    problems += _diff("env kwarg", saved["env_config"], now["env_config"], LOCATION_KWARGS)
    problems += _diff("agent hyperparameter", saved["agent_hparams"], now["agent_hparams"])
    if seed is not None and saved["seed"] != seed:
        problems.append(f"seed {saved['seed']!r} (this run: {seed!r})")
    then_cbs = [tuple(x) for x in saved["callbacks"]]
    if _saved_callbacks(callbacks) != then_cbs:
        problems.append(f"stateful callbacks {then_cbs} (this run: {_saved_callbacks(callbacks)})")
    return problems


# ---------------------------------------------------------------------------------------------- saving
class Checkpoint(Callback):
    """Save the run every ``every`` steps to ``<directory>/checkpoint.pt`` (atomically; see :mod:`clenv.checkpoint`).

    Args:
        directory: where the checkpoint file lives (created on the first save).
        every: steps between checkpoints; a checkpoint is taken when the step count is a multiple of it.
        overwrite: start a new run in a directory that already holds a checkpoint (default: refuse, so a forgotten
            resume does not destroy the saved run).

    ``saved_steps`` lists the steps saved by this callback; ``save_seconds`` their total time.
    """

    def __init__(self, directory: str | os.PathLike, every: int = 1000, *, overwrite: bool = False):
        if isinstance(every, bool) or int(every) != every or int(every) < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.directory = Path(directory)
        self.every = int(every)
        self.overwrite = bool(overwrite)
        self.saved_steps: list[int] = []
        self.save_seconds = 0.0
        self._start_step = 0

    @property
    def path(self) -> Path:
        return checkpoint_path(self.directory)

    def on_run_start(self, env, agent, result: RunResult) -> None:
        u = getattr(env, "unwrapped", env)
        if not stateful(u):
            raise CheckpointError(f"Checkpoint needs an env with state_dict() / load_state_dict() (as "
                                  f"SupervisedStreamEnv has); {type(u).__name__} has none")
        if not stateful(agent):
            raise CheckpointError(f"Checkpoint needs an agent with state_dict() / load_state_dict(); "
                                  f"{type(agent).__name__} has none")
        self._start_step = int(result.steps)  # > 0: this run continues a saved one
        if self._start_step == 0 and self.path.exists() and not self.overwrite:
            raise CheckpointError(f"{self.path} already holds a checkpoint: resume it with "
                                  f"clenv.resume({str(self.directory)!r}, env, agent), or pass overwrite=True / "
                                  f"another directory to start a new run")

    def on_step_boundary(self, env, agent, state: LoopState) -> None:
        n = state.step
        if n == 0 or n % self.every or n == self._start_step or (self.saved_steps and self.saved_steps[-1] == n):
            return
        self.save(env, agent, state)

    def save(self, env, agent, state: LoopState) -> Path:
        """Write a checkpoint of ``state`` now (the loop calls this; call it yourself from ``on_step_boundary``)."""
        t0 = time.perf_counter()
        payload = {
            "format": FORMAT,
            **_identity(env, agent),
            "seed": state.result.seed,
            "step": int(state.step),
            "env": getattr(env, "unwrapped", env).state_dict(),
            "agent": agent.state_dict(),
            "loop": state.state_dict(),
            "callbacks": _saved_callbacks(state.callbacks),
            "rng": global_rng_state(),
            "torch_version": torch.__version__,
        }
        atomic_write_bytes(self.path, _encode(payload))
        self.saved_steps.append(int(state.step))
        self.save_seconds += time.perf_counter() - t0
        return self.path

    def resume(self, env, agent, **run_kwargs) -> RunResult:
        """:func:`resume` from this directory, still checkpointing (this callback is added to ``callbacks``)."""
        callbacks = list(run_kwargs.pop("callbacks", ()))
        if not any(cb is self for cb in callbacks):
            callbacks.insert(0, self)
        return resume(self.directory, env, agent, callbacks=callbacks, **run_kwargs)


# ---------------------------------------------------------------------------------------------- resuming
def resume_state(path, env, agent, callbacks=(), *, seed=None, reset_options=None) -> LoopState:
    """Load a checkpoint into ``env`` and ``agent`` and return the loop state to hand to ``run(start=)``.

    Everything is checked first (file, env, agent, seed, callbacks); on a mismatch a :class:`CheckpointError` names
    it and neither env nor agent is touched."""
    saved = read_checkpoint(path)
    callbacks = list(callbacks)
    problems = _mismatches(saved, env, agent, seed, callbacks)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint_path(path)} belongs to another run: " + "; ".join(problems))
    u = getattr(env, "unwrapped", env)
    if not stateful(u):
        raise CheckpointError(f"cannot resume: {type(u).__name__} has no state_dict() / load_state_dict()")

    # Agent first, rolled back if its load fails part way.
    backup, hparams = copy.deepcopy(agent.state_dict()), copy.deepcopy(getattr(agent, "hparams", None))
    try:
        apply_seed_rule(agent, saved["seed"])  # the seed the run gave it (its state is overwritten next)
        agent.load_state_dict(saved["agent"])
    except Exception as err:
        agent.load_state_dict(backup)
        if hparams is not None:
            agent.hparams = hparams
        raise CheckpointError(f"checkpoint {checkpoint_path(path)}: the agent's state does not load: "
                              f"{type(err).__name__}: {err}") from err
    # reset() puts the wrappers (order enforcing, env checker) in their started state; then the stream jumps ahead.
    env.reset(seed=saved["seed"], options=reset_options)
    try:
        u.load_state_dict(saved["env"])
    except Exception as err:
        agent.load_state_dict(backup)
        if hparams is not None:
            agent.hparams = hparams
        raise CheckpointError(f"checkpoint {checkpoint_path(path)}: the env's state does not load: {err}") from err
    result = RunResult(env_id=saved["env_id"], agent=saved["agent_name"], seed=saved["seed"])
    state = LoopState.from_state_dict(saved["loop"], result, saved["rng"])
    # The file is read onto the CPU: an env that serves tensors on its device gets its observation back there.
    device = getattr(u, "device", None)
    if isinstance(device, torch.device) and getattr(u, "output", None) == "torch":
        state.obs, state.info = _to_device(state.obs, device), _to_device(state.info, device)
    return state


def _to_device(value, device: torch.device):
    """``value`` with every tensor in it (at the top or in a dict) moved to ``device``; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def resume(path, env, agent, *, callbacks=(), seed=None, reset_options=None, **run_kwargs) -> RunResult:
    """Continue the run saved in checkpoint ``path`` (a :class:`Checkpoint` directory or file) with a freshly made
    env and agent (same id, env kwargs, agent name, hyperparameters and callbacks) to the same final result as an
    uninterrupted run. Other arguments are :func:`clenv.run`'s; ``total_steps`` counts from the run's start."""
    evaluation = run_kwargs.pop("evaluation", None)
    callbacks = list(callbacks) + ([evaluation] if evaluation is not None else [])
    start = resume_state(path, env, agent, callbacks, seed=seed, reset_options=reset_options)
    return run(env, agent, seed=start.result.seed, callbacks=callbacks, reset_options=reset_options, start=start,
               **run_kwargs)
