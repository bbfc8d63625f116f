"""One run specification and one way to execute it: what ``clenv run``, ``compare``, ``sweep`` and ``reproduce`` all
call.

A :class:`RunSpec` names an env id and its kwargs, an agent and its hyperparameters, a seed, an evaluation and a
step limit. :meth:`RunSpec.resolve` makes the env and fills in everything the spec leaves to defaults (the env's
registered protocol, the agent's class defaults and paper row, the seed rule); the resolved configuration is the
run's *identity*, and a stable hash of it, the *key*, names the run's folder::

    <out>/<env id>/<agent>/seed<k>-<key>/{result.json, arrays-*.npz}

so the same run asked for by any command lands in the same folder (``clenv sweep`` skips a run that ``clenv run``
already did), and a checkpoint under ``<out>/.checkpoints/<key>`` is resumed only by the same run.

Agents are found through the ``clenv.agents`` entry-point group (the bundled ``agents`` package declares itself
there, so clenv never imports it by name); an agent is a registry name (``cbp``, ``cbp+er``) or ``package.module:Class``
for a user's own file (importable from the current directory or ``PYTHONPATH``).

The seed rule: the run seed seeds the stream and, unless the hyperparameters give ``seed`` explicitly, the agent's
initialisation and every random stream it owns (:func:`clenv.loop.apply_seed_rule`). The agent's seed is part of the
identity.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

from clenv.data import LOCATION_KWARGS
from clenv.registry import protocol

__all__ = ["RunSpec", "ResolvedRun", "UsageError", "execute", "run_resolved", "run_resolved_seeds", "seed_groups",
           "execute_all", "Diverged", "DIVERGED_FILE", "in_workers", "torch_threads", "save", "save_diverged",
           "default_jobs", "worker_context", "worker_init", "parse_value", "parse_assignments", "parse_seeds",
           "suggest", "canonical", "agent_provider", "check_agent", "check_out", "make_env", "identity_key",
           "group_identity"]


class UsageError(Exception):
    """A user error in a command's input: printed as one line, exit status 2, nothing run."""


# ---------------------------------------------------------------------------------------------- parsing
def parse_value(text: str) -> Any:
    """``k=v`` values: JSON or Python literals (numbers, true/false/none, lists, tuples), else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return text


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` of a repeatable flag as a dict (values by :func:`parse_value`)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"{flag} expects key=value with a Python identifier as key, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def parse_seeds(text, flag: str = "--seeds") -> list[int]:
    """Comma-separated non-negative integer seeds (a list of them is accepted too), at least one, no repeats."""
    items = text if isinstance(text, (list, tuple)) else [s for s in str(text).split(",") if s.strip()]
    seeds = []
    for s in items:
        try:
            v = int(str(s).strip()) if not isinstance(s, bool) else None
        except ValueError:
            v = None
        if v is None or v < 0 or (isinstance(s, float) and s != v):
            raise UsageError(f"{flag} expects comma-separated integers >= 0, got {s!r}")
        seeds.append(v)
    if not seeds:
        raise UsageError(f"{flag} needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"{flag} repeats a seed: {seeds}")
    return seeds


def suggest(word: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (difflib's ratio, case ignored), or ``""``."""
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return f"; did you mean {lower[close[0]]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------- agents
def agent_provider():
    """The module that provides ``make(name, env, **hp)``, ``resolve(...)`` and ``available()``, from the
    ``clenv.agents`` entry-point group."""
    eps = list(entry_points(group="clenv.agents"))
    if not eps:
        raise UsageError("no agent provider is installed (entry-point group 'clenv.agents'); reinstall clenv with "
                         "`pip install -e .`")
    return eps[0].load()


def check_agent(name: str) -> None:
    """Refuse an agent name that does not exist (each part of a ``+`` composition), before anything runs."""
    provider = agent_provider()
    names = provider.available()
    for part in (p.strip() for p in str(name).split("+")):
        if ":" in part:
            try:
                provider.agent_class(part)
            except ValueError as err:
                raise UsageError(str(err)) from None
        elif part.lower() not in names:
            raise UsageError(f"unknown agent {part!r}{suggest(part, names)} (`clenv list --agents` shows every "
                             "name; compose with '+', e.g. 'cbp+er'; a user agent is 'package.module:Class')")


def _check_hparam_types(name: str, defaults: dict, given: dict) -> None:
    """A value whose kind contradicts the default (``lr=fast``) is refused with the key named."""
    for key, value in given.items():
        d = defaults.get(key)
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"agent {name!r}: hyperparameter {key}={value!r} should be a number like its "
                                 f"default {d!r}")
        elif isinstance(d, bool) and not isinstance(value, bool):
            raise UsageError(f"agent {name!r}: hyperparameter {key}={value!r} should be true or false")


# ---------------------------------------------------------------------------------------------- envs
def make_env(env_id: str, env_kwargs: dict):
    """``gym.make`` of a clenv stream with user errors as :class:`UsageError` (unknown id, a gymnasium env that is
    not a continual stream, bad kwargs)."""
    import gymnasium as gym

    import clenv

    bare = str(env_id).split(":")[-1]
    ids = clenv.env_ids()
    if bare not in ids:
        if bare in gym.registry:
            raise UsageError(f"{env_id!r} is a gymnasium env, not a clenv stream; wrap it as "
                             f"TaskSequence-v0 (--env TaskSequence-v0 --env-set 'tasks=[\"{bare}\"]') or pick one "
                             "of `clenv list`")
        raise UsageError(f"unknown env id {env_id!r}{suggest(bare, ids)} (`clenv list` shows every id)")
    try:
        return gym.make(bare, **env_kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{bare}: {err}") from None


def check_out(out: str | os.PathLike) -> Path:
    """The results root, created and proven writable before any compute (not a file, not read-only)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UsageError(f"--out {p} is a file; give a directory for the results")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as err:
        raise UsageError(f"--out {p} is not writable ({err.strerror}); give a directory you can write") from None
    return p


# ---------------------------------------------------------------------------------------------- identity
def identity_key(identity: dict) -> str:
    """A stable 12-hex-digit hash of a JSON-able identity (key order and tuple/list spelling do not matter)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=repr).encode()).hexdigest()[:12]


def canonical(x):
    return json.loads(json.dumps(x, sort_keys=True, default=repr))


def group_identity(config: dict, seed=None) -> dict:
    """What makes runs seeds of one configuration: their identity without the seed (and without the agent's seed
    when the seed rule set it to the run seed ``seed``). ``config`` is a result's ``config``; results written
    without an identity (``clenv.run`` + ``save_run``) are grouped by their env config and agent hyperparameters."""
    ident = config.get("identity")
    if ident is None:
        ident = {"env_id": config.get("env_id"), "agent": config.get("agent_name"),
                 "env": {k: v for k, v in (config.get("env") or {}).items() if k not in LOCATION_KWARGS},
                 "hparams": dict(config.get("agent") or {}), "seed": seed}
    ident = dict(ident)
    seed = ident.pop("seed", None)
    hp = dict(ident.get("hparams") or {})
    if "seed" in hp and hp["seed"] == seed:
        hp.pop("seed")
    ident["hparams"] = hp
    return canonical(ident)


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class RunSpec:
    """One run: env id and kwargs, agent and hyperparameters, seed, evaluation (``clenv.Evaluation`` options, None
    for none), step limit. ``paper_benchmark`` takes the agent's paper hyperparameters from another benchmark's row
    (``clenv reproduce`` on a stand-in); ``label`` names the run in tables (default: the agent)."""

    env_id: str
    agent: str
    seed: int = 0
    env_kwargs: dict = field(default_factory=dict)
    agent_kwargs: dict = field(default_factory=dict)
    total_steps: int | None = None
    evaluation: dict | None = None
    paper_benchmark: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.agent

    def describe(self) -> str:
        return f"{self.name} seed {self.seed} on {self.env_id}"

    def resolve(self) -> "ResolvedRun":
        """Make the env and resolve the agent's hyperparameters (nothing is trained or initialised)."""
        check_agent(self.agent)
        env = make_env(self.env_id, dict(self.env_kwargs))
        provider = agent_provider()
        kwargs = dict(self.agent_kwargs)
        bench = self.paper_benchmark
        if bench is not None and bench == getattr(protocol(self.env_id), "benchmark", None):
            bench = None  # the env's own row: the same run as without it
        extra = {"paper_benchmark": bench} if bench is not None else {}
        try:
            _check_hparam_types(self.agent, provider.resolve(self.agent, env, paper_benchmark=False)[1], kwargs)
            _, hparams, source = provider.resolve(self.agent, env, **extra, **kwargs)
        except (TypeError, ValueError, UsageError) as err:
            env.close()
            raise UsageError(str(err) if isinstance(err, UsageError) else f"agent {self.agent!r}: {err}") from None
        if "seed" in hparams and "seed" not in kwargs:  # the seed rule, applied once at construction
            kwargs["seed"] = hparams["seed"] = int(self.seed)
        u = env.unwrapped
        agent = "+".join(p.strip() if ":" in p else p.strip().lower() for p in self.agent.split("+"))
        identity = {"env_id": env.spec.id, "agent": agent,
                    "env": {k: v for k, v in dict(u.config).items() if k not in LOCATION_KWARGS},
                    "hparams": hparams, "seed": int(self.seed), "total_steps": self.total_steps,
                    "evaluation": self.evaluation}
        identity = canonical(identity)
        return ResolvedRun(self, env, kwargs, extra, source, identity, identity_key(identity))

    def directory(self, out, key: str) -> Path:
        from clenv.results import run_dir

        return run_dir(out, self.env_id.split(":")[-1], self.agent, self.seed, timestamp=key)


@dataclass
class ResolvedRun:
    """A spec with its env made: the agent kwargs to build with, the identity and its key."""

    spec: RunSpec
    env: Any
    agent_kwargs: dict
    make_extra: dict
    hparam_source: str
    identity: dict
    key: str

    def directory(self, out) -> Path:
        return self.spec.directory(out, self.key)

    def finished(self, out) -> bool:
        """Whether a result of this run is saved under ``out`` (its folder is named by its key, so whichever
        command made it)."""
        return (self.directory(out) / "result.json").is_file()

    def diverged(self, out) -> str | None:
        """The message of this run's recorded divergence under ``out`` (:func:`execute_all` with ``on_diverged``
        writes it), else None."""
        f = self.directory(out) / DIVERGED_FILE
        return json.loads(f.read_text())["message"] if f.is_file() else None

    def build_agent(self):
        return agent_provider().make(self.spec.agent, self.env, **self.make_extra, **self.agent_kwargs)


def execute(spec: RunSpec | ResolvedRun, *, out: str | os.PathLike | None = None, save_result: bool = True,
            progress: bool = False, checkpoint_every: int | None = None, threads: int | None = None):
    """Run one spec to its end and save it under ``out`` (unless ``save_result`` is False or ``out`` None). With
    ``checkpoint_every`` the run checkpoints under ``<out>/.checkpoints/<key>`` and continues a checkpoint of the
    same run left by an interrupted attempt; the spent checkpoint is removed once the result is saved. Returns
    ``(result, directory or None)``."""
    resolved = spec if isinstance(spec, ResolvedRun) else spec.resolve()
    result, _ = run_resolved(resolved, out=out, progress=progress, checkpoint_every=checkpoint_every,
                             threads=threads)
    return result, (save(resolved, result, out) if out is not None and save_result else None)


def run_resolved(resolved: ResolvedRun, *, out=None, progress: bool = False, checkpoint_every: int | None = None,
                 threads: int | None = None):
    """Run one resolved spec to its end, without saving; returns ``(result, agent)``, the result carrying the
    run's identity and key in its config (what :func:`execute` saves, and what other protocols, such as the merging
    tables' single-task runs, build on with the trained agent)."""
    import torch

    import clenv

    s = resolved.spec
    if threads is not None:
        torch.set_num_threads(int(threads))
    env = resolved.env
    agent = resolved.build_agent()
    # An agent may name callbacks its runs should always have (the RL agents: their networks' diagnostics per task).
    callbacks, ck_dir = list(getattr(agent, "run_callbacks", lambda: [])()), None
    if checkpoint_every and out is not None:
        ck_dir = Path(out) / ".checkpoints" / resolved.key
        callbacks.append(clenv.Checkpoint(ck_dir, every=checkpoint_every))
    evaluation = clenv.Evaluation(**s.evaluation) if s.evaluation is not None else None
    kw = dict(seed=s.seed, progress=progress, total_steps=s.total_steps, evaluation=evaluation, callbacks=callbacks,
              desc=s.describe())
    if ck_dir is not None and (ck_dir / "checkpoint.pt").is_file():
        result = clenv.resume(ck_dir, env, agent, **kw)
    else:
        result = clenv.run(env, agent, **kw)
    _label(result, resolved)
    env.close()
    return result, agent


def _label(result, resolved: ResolvedRun) -> None:
    # What was resolved, not how it was asked for: every command that asks for this run writes the same file.
    s = resolved.spec
    result.agent = s.name
    result.config.update({"env_id": s.env_id, "agent_name": s.agent, "identity": resolved.identity,
                          "key": resolved.key})


def seed_groups(runs) -> list[list[int]]:
    """Indices of ``runs`` grouped by everything but the seed, in first-seen order (the groups one vectorised run
    can train)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(identity_key(group_identity({"identity": r.identity})), []).append(i)
    return list(groups.values())


def run_resolved_seeds(group: list[ResolvedRun], *, progress: bool = False, threads: int | None = None) -> list:
    """The runs of ``group`` (resolved specs that differ only in their seed) trained as one batched computation
    (``clenv.run(envs, agents, seeds=...)``); returns their results in order, labelled as :func:`run_resolved`
    labels them, so they are saved to the same folders with the same identities."""
    import torch

    import clenv

    if threads is not None:
        torch.set_num_threads(int(threads))
    s = group[0].spec
    evaluation = clenv.Evaluation(**s.evaluation) if s.evaluation is not None else None
    try:
        results = clenv.run([r.env for r in group], [r.build_agent() for r in group],
                            seeds=[r.spec.seed for r in group], progress=progress, total_steps=s.total_steps,
                            evaluation=evaluation, desc=f"{s.name} seeds {[r.spec.seed for r in group]} on {s.env_id}")
    except ValueError as err:
        raise UsageError(f"--vectorise: {err}") from None
    for result, r in zip(results, group):
        _label(result, r)
        r.env.close()
    return results


#: The file in a run's folder that records that its training diverged (its message), so a rerun of the command
#: reports it again instead of repeating the run to the same divergence.
DIVERGED_FILE = "diverged.json"


def save_diverged(resolved: ResolvedRun, message: str, out) -> Path:
    """Record that the run diverged (atomically), and remove its spent checkpoint, as :func:`save` does."""
    from clenv.results import atomic_write_bytes

    path = resolved.directory(out)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / DIVERGED_FILE, json.dumps({"key": resolved.key, "message": message}).encode())
    _remove_checkpoint(resolved, out)
    return path


def save(resolved: ResolvedRun, result, out) -> Path:
    """Write a run's result into its folder under ``out``; the run's spent checkpoint is removed after."""
    from clenv.results import save_run

    path = save_run(result, resolved.directory(out))
    _remove_checkpoint(resolved, out)
    return path


def _remove_checkpoint(resolved: ResolvedRun, out) -> None:
    import shutil

    shutil.rmtree(Path(out) / ".checkpoints" / resolved.key, ignore_errors=True)


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_context():
    """How worker processes start: a fork server that has imported torch, clenv and the agents once (a clean,
    single-threaded parent, so forking is safe), so a worker starts in a fraction of a fresh interpreter's time.
    Pair it with ``initializer=worker_init`` so that workers see this process's ``sys.path`` (user agents)."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "gymnasium", "clenv", "clenv.app.spec", "clenv.envs.supervised", "agents"])
    return ctx


def worker_init(threads: int, path: list[str]) -> None:
    """A worker's start: one torch thread each, and the parent's import path (a fork server may predate it)."""
    import torch

    torch.set_num_threads(int(threads))
    sys.path[:0] = [p for p in path if p not in sys.path]


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to ``n`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_workers(fn, calls: list[tuple], *, jobs: int, threads: int = 1):
    """``fn(*args)`` for every ``args`` of ``calls`` in ``jobs`` processes, one torch thread each; yields ``(index,
    value)`` as each finishes. This process is one of the ``jobs``: a thread here takes calls from the same queue as
    ``jobs - 1`` worker processes (:func:`worker_context`), so the work starts at once instead of after the workers'
    start (a few seconds: each imports torch and loads its dataset), and results come back as they finish whoever ran
    them. A value computed here is the one a worker computes (each call is a function of its arguments). An exception,
    Ctrl-C included, stops handing out calls and propagates; the thread here ends after its current call."""
    import collections
    import queue
    import threading
    from concurrent.futures import ProcessPoolExecutor

    workers = min(jobs, len(calls)) - 1
    if workers < 1:
        with torch_threads(threads):
            for i, args in enumerate(calls):
                yield i, fn(*args)
        return
    todo = collections.deque(range(len(calls)))  # popleft is atomic: the thread here and the pool share it
    arrived: queue.Queue = queue.Queue()
    stop = threading.Event()

    def here() -> None:
        try:
            with torch_threads(threads):
                while not stop.is_set():
                    try:
                        i = todo.popleft()
                    except IndexError:
                        return
                    arrived.put(("value", i, fn(*calls[i])))
        except BaseException as err:  # noqa: BLE001 - re-raised by the generator
            arrived.put(("error", None, err))

    with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=worker_init,
                             initargs=(threads, list(sys.path))) as pool:
        index = {}

        def submit() -> None:  # one call per idle worker: the thread here takes the rest
            try:
                i = todo.popleft()
            except IndexError:
                return
            fut = pool.submit(fn, *calls[i])
            index[fut] = i
            fut.add_done_callback(lambda f: arrived.put(("future", None, f)))

        for _ in range(workers):
            submit()
        local = threading.Thread(target=here, name="clenv-in-workers", daemon=True)
        local.start()
        try:
            for _ in range(len(calls)):
                kind, i, value = arrived.get()
                if kind == "error":
                    raise value
                if kind == "future":
                    i, value = index.pop(value), value.result()
                    submit()
                yield i, value
        finally:
            stop.set()
            for fut in index:
                fut.cancel()


@dataclass(frozen=True)
class Diverged:
    """A run that stopped with a ``FloatingPointError`` (its training diverged: a property of the run, which the
    same spec repeats), with the error's message."""

    message: str


def _diverged_or(call, diverged_ok: bool):
    """``call()``, or :class:`Diverged` when it raises ``FloatingPointError`` and ``diverged_ok``."""
    try:
        return call()
    except FloatingPointError as err:
        if not diverged_ok:
            raise
        return Diverged(str(err))


def _worker_run(spec: RunSpec, out, checkpoint_every, diverged_ok: bool = False):
    """One run in a worker process; the parent saves it. Datasets load once per worker (per process cache). With
    ``diverged_ok`` a diverged run comes back as :class:`Diverged` instead of raising."""
    return _diverged_or(lambda: execute(spec, out=out, save_result=False, checkpoint_every=checkpoint_every)[0],
                        diverged_ok)


def _worker_group(specs: list[RunSpec]):
    """One vectorised group in a worker process; the parent saves its results."""
    return run_resolved_seeds([s.resolve() for s in specs])


def execute_all(runs, *, jobs: int = 1, out=None, progress: bool = False, checkpoint_every: int | None = None,
                threads: int = 1, on_result=None, reuse: bool = False, vectorise: bool = False,
                on_diverged=None) -> list:
    """Execute resolved runs, ``jobs`` at a time (this process and ``jobs - 1`` workers, :func:`in_workers`; one torch
    thread each), and save each as it finishes; ``jobs=1`` runs them here one after another with a progress bar
    each. ``on_result(resolved, result, path)`` is called in completion order. Returns ``[(result, path)]`` in the order of ``runs``. A run's numbers
    do not depend on where it ran (each is a function of its spec). With ``reuse``, a run whose folder under ``out``
    (named by its key) already holds a result is loaded instead of run again, so rerunning an interrupted command
    does only what is missing. With ``vectorise``, the seeds of each configuration (:func:`seed_groups`) train as
    one batched computation (:func:`run_resolved_seeds`), one group per worker; the results are the same runs'.
    With ``on_diverged(resolved, message)``, a run whose training diverges (``FloatingPointError``) is reported to it
    and left out (its slot is ``(None, None)``) while the others go on (not with ``vectorise``, where it propagates);
    without it the error propagates. Under ``out`` the divergence is recorded in the run's folder
    (:data:`DIVERGED_FILE`), so with ``reuse`` a rerun reports it again instead of repeating the run."""
    runs = list(runs)
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    if vectorise and checkpoint_every:
        raise UsageError("--vectorise runs cannot checkpoint yet; drop --checkpoint-every or --vectorise")
    done: dict[int, tuple] = {}
    if reuse and out is not None:
        from clenv.results import load_run

        for i, r in enumerate(runs):
            if r.finished(out):
                r.env.close()
                path = r.directory(out)
                done[i] = (load_run(path), path)
                if on_result is not None:
                    on_result(r, done[i][0], path)
            elif on_diverged is not None and (message := r.diverged(out)) is not None:
                r.env.close()
                done[i] = (None, None)
                on_diverged(r, message)
    pending = [i for i in range(len(runs)) if i not in done]
    if vectorise:
        return _execute_groups(runs, pending, done, jobs=jobs, out=out, progress=progress, threads=threads,
                               on_result=on_result)

    def finished(i, result, path) -> None:
        if isinstance(result, Diverged):
            if out is not None:
                save_diverged(runs[i], result.message, out)
            done[i] = (None, None)
            on_diverged(runs[i], result.message)
            return
        done[i] = (result, path)
        if on_result is not None:
            on_result(runs[i], result, path)

    if jobs == 1 or len(pending) <= 1:
        for i in pending:
            outcome = _diverged_or(lambda: execute(runs[i], out=out, progress=progress,
                                                   checkpoint_every=checkpoint_every, threads=threads),
                                   on_diverged is not None)
            finished(i, *((outcome, None) if isinstance(outcome, Diverged) else outcome))
        return [done[i] for i in range(len(runs))]
    for i in pending:  # each call makes its own env from the spec, in a worker or in this process's thread
        runs[i].env.close()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"{len(pending)} runs, {min(jobs, len(pending))} processes", unit="run")
    calls = [(runs[i].spec, None if out is None else str(out), checkpoint_every, on_diverged is not None)
             for i in pending]
    try:
        for j, result in in_workers(_worker_run, calls, jobs=jobs, threads=threads):
            i = pending[j]
            path = save(runs[i], result, out) if out is not None and not isinstance(result, Diverged) else None
            if bar is not None:
                bar.update(1)
            finished(i, result, path)
    finally:
        if bar is not None:
            bar.close()
    return [done[i] for i in range(len(runs))]


def _execute_groups(runs, pending, done, *, jobs, out, progress, threads, on_result) -> list:
    """``execute_all``'s vectorised branch: each seed group of the pending runs as one batched run."""
    groups = [[pending[j] for j in g] for g in seed_groups([runs[i] for i in pending])]
    for g in groups:  # refuse what cannot stack before anything runs: a throwaway agent of each group is stacked
        probe = runs[g[0]].build_agent()
        stack_seeds = getattr(probe, "stack_seeds", None)
        try:
            if not callable(stack_seeds):
                raise ValueError(f"agent {runs[g[0]].spec.agent!r} cannot train seeds as one computation")
            stack_seeds([probe])
        except ValueError as err:
            raise UsageError(f"--vectorise: {err}") from None

    def finished(group, results) -> None:
        for i, result in zip(group, results):
            done[i] = (result, save(runs[i], result, out) if out is not None else None)
            if on_result is not None:
                on_result(runs[i], result, done[i][1])

    if jobs == 1 or len(groups) <= 1:
        for g in groups:
            finished(g, run_resolved_seeds([runs[i] for i in g], progress=progress, threads=threads))
    else:
        for i in pending:
            runs[i].env.close()
        calls = [([runs[i].spec for i in g],) for g in groups]
        for j, results in in_workers(_worker_group, calls, jobs=jobs, threads=threads):
            finished(groups[j], results)
    return [done[i] for i in range(len(runs))]
