"""``clenv sweep``: methods x hyperparameter grid x seeds x streams, on Ray or in this process.

Every combination is one run, saved as one result record (:func:`clenv.results.save_run`) in a directory whose name
ends with a hash of the run's definition::

    <out>/<env id>/<agent label>/seed<k>-<hash>/{result.json, arrays.npz}

so a rerun of the same sweep skips the runs whose ``result.json`` exists and does only what is missing (an interrupted
sweep resumes; a wider grid adds only its new points). With ``checkpoint_every`` a run also checkpoints
(:class:`clenv.Checkpoint`) under ``<out>/.checkpoints/<hash>`` and an interrupted run resumes mid-stream.

The agent label is the agent name followed by the grid values, ``base[lr=0.001]``: it is the row of the final table,
which is :mod:`clenv.report`'s aggregation (mean (std) over seeds) of this sweep's runs, written to ``<out>/report``.

Backends: ``ray`` (the default when Ray is installed: ``pip install 'clenv[ray]'``) starts a local Ray or, when
``RAY_ADDRESS`` is set, joins that cluster, and runs each run as a task with ``num_cpus=1`` and one torch thread;
results come back to the driver, which writes them. ``sequential`` runs in this process, one run after another.
Workers build envs with ``gym.make("clenv:<id>")`` and agents through the ``clenv.agents`` entry point, so a cluster's
nodes need clenv (and the agents package) installed, and a shared filesystem if runs checkpoint.

A config (JSON, or YAML with PyYAML) holds these keys; command-line flags override them::

    envs: [RandomLabelDigits-v0]      # or {id: {env kwargs}}
    env_kwargs: {num_tasks: 4}        # for every env (per-env kwargs win)
    agents: [base, scratch]           # or {name: {fixed hyperparameters}}
    agent_kwargs: {optimizer: adam}   # for every agent (per-agent ones win)
    grid: {lr: [0.001, 0.01]}         # every combination, for every agent
    seeds: [0, 1, 2]
    total_steps: null                 # stop runs early
    evaluation: null                  # clenv.Evaluation options, e.g. {forgetting: true}; {} for online metrics only
    checkpoint_every: null            # steps between checkpoints (not with evaluation)
    out: runs/sweep
    backend: null                     # ray | sequential (null: ray if installed)
    num_cpus: null                    # local Ray's CPUs (default: all)
    threads: 1                        # torch threads per run

Without ``evaluation`` the online metrics (``avg_online_acc``, ``online_acc_last25``, ...) are still computed.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["SweepConfig", "SweepConfigError", "RunSpec", "load_config", "validate_config", "expand", "run_sweep",
           "execute", "sweep_main"]

_DEFAULTS: dict[str, Any] = dict(envs=None, env_kwargs={}, agents=None, agent_kwargs={}, grid={}, seeds=[0],
                                 total_steps=None, evaluation=None, checkpoint_every=None, out="runs/sweep",
                                 backend=None, num_cpus=None, threads=1)
KEYS = tuple(_DEFAULTS)
BACKENDS = ("ray", "sequential")


class SweepConfigError(ValueError):
    """A sweep configuration error; the message names the offending key."""


@dataclass
class SweepConfig:
    """A validated sweep: see the module docstring for the meaning of each field."""

    envs: dict[str, dict]
    agents: dict[str, dict]
    grid: dict[str, list]
    seeds: list[int]
    env_kwargs: dict = field(default_factory=dict)
    agent_kwargs: dict = field(default_factory=dict)
    total_steps: int | None = None
    evaluation: dict | None = None
    checkpoint_every: int | None = None
    out: str = "runs/sweep"
    backend: str | None = None
    num_cpus: int | None = None
    threads: int = 1


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep. ``key`` hashes everything that determines its result."""

    env_id: str
    env_kwargs: dict
    agent: str
    agent_kwargs: dict
    seed: int
    label: str
    total_steps: int | None
    evaluation: dict | None
    key: str

    def directory(self, out: str | os.PathLike) -> Path:
        from clenv.results import run_dir

        return run_dir(out, self.env_id, self.label, self.seed, timestamp=self.key)

    def describe(self) -> str:
        return f"{self.label} seed {self.seed} on {self.env_id}"


# ---------------------------------------------------------------------------------------------- config
def load_config(path: str | os.PathLike) -> dict:
    """Read a JSON or YAML (``.yaml`` / ``.yml``, needs PyYAML) sweep config into a dict (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise SweepConfigError(f"sweep config {p} does not exist")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise SweepConfigError(f"{p}: YAML configs need PyYAML (`pip install pyyaml`, part of the ray extra); "
                                   "or write the config as JSON") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SweepConfigError(f"{p}: invalid YAML: {err}") from None
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise SweepConfigError(f"{p}: invalid JSON: {err}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SweepConfigError(f"{p}: a sweep config is a mapping of keys {list(KEYS)}, got {type(doc).__name__}")
    return doc


def _names(value, key: str) -> dict[str, dict]:
    """``envs`` / ``agents``: a name, a list of names, or a mapping name -> kwargs."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) and v for v in value):
            raise SweepConfigError(f"'{key}' must list names (strings), got {value!r}")
        if len(set(value)) != len(value):
            raise SweepConfigError(f"'{key}' lists a name twice: {value!r}")
        value = {v: {} for v in value}
    if not isinstance(value, dict) or not value:
        raise SweepConfigError(f"'{key}' must be a non-empty list of names or a mapping name -> kwargs, got {value!r}")
    out = {}
    for name, kw in value.items():
        kw = {} if kw is None else kw
        if not isinstance(kw, dict):
            raise SweepConfigError(f"'{key}.{name}' must be a mapping of keyword arguments, got {kw!r}")
        out[str(name)] = dict(kw)
    return out


def _kwargs(value, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
        raise SweepConfigError(f"'{key}' must be a mapping of identifier keys to values, got {value!r}")
    return dict(value)


def _opt_int(value, key: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepConfigError(f"'{key}' must be an integer >= {minimum} (or null), got {value!r}")
    return value


def validate_config(doc: dict, *, check_names: bool = True) -> SweepConfig:
    """Check a config dict (from :func:`load_config` and/or flags) and return a :class:`SweepConfig`.

    Raises :class:`SweepConfigError` naming the key: unknown keys, wrong types, empty lists, unknown env ids or agent
    names, unknown env kwargs / agent hyperparameters / evaluation options (``check_names=False`` skips the
    look-ups, which import the agent provider)."""
    if not isinstance(doc, dict):
        raise SweepConfigError(f"a sweep config is a mapping, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in KEYS]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(str(k), KEYS, 1)) else "")
                 for k in unknown]
        raise SweepConfigError(f"unknown sweep config key(s) {', '.join(hints)}; valid keys: {', '.join(KEYS)}")
    d = {**_DEFAULTS, **{k: v for k, v in doc.items()}}
    if d["envs"] is None:
        raise SweepConfigError("'envs' is required: the env ids to sweep (e.g. [RandomLabelDigits-v0])")
    if d["agents"] is None:
        raise SweepConfigError("'agents' is required: the agent names to sweep (e.g. [base, scratch])")
    envs, agents = _names(d["envs"], "envs"), _names(d["agents"], "agents")
    env_kwargs, agent_kwargs = _kwargs(d["env_kwargs"], "env_kwargs"), _kwargs(d["agent_kwargs"], "agent_kwargs")
    grid = d["grid"] or {}
    if not isinstance(grid, dict):
        raise SweepConfigError(f"'grid' must map hyperparameter names to lists of values, got {grid!r}")
    for k, v in grid.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise SweepConfigError(f"'grid' key {k!r} is not a hyperparameter name")
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            raise SweepConfigError(f"'grid.{k}' must be a non-empty list of values, got {v!r}")
    grid = {k: list(v) for k, v in grid.items()}
    seeds = d["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise SweepConfigError(f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"'seeds' lists a seed twice: {list(seeds)!r}")
    evaluation = d["evaluation"]
    if evaluation is not None and not isinstance(evaluation, dict):
        raise SweepConfigError(f"'evaluation' must be a mapping of clenv.Evaluation options (or null), "
                               f"got {evaluation!r}")
    backend = d["backend"]
    if backend is not None and backend not in BACKENDS:
        raise SweepConfigError(f"'backend' must be one of {', '.join(BACKENDS)} (or null), got {backend!r}")
    if not isinstance(d["out"], (str, os.PathLike)) or not str(d["out"]):
        raise SweepConfigError(f"'out' must be a directory path, got {d['out']!r}")
    cfg = SweepConfig(envs=envs, agents=agents, grid=grid, seeds=list(seeds), env_kwargs=env_kwargs,
                      agent_kwargs=agent_kwargs, total_steps=_opt_int(d["total_steps"], "total_steps", 1),
                      evaluation=None if evaluation is None else dict(evaluation),
                      checkpoint_every=_opt_int(d["checkpoint_every"], "checkpoint_every", 1), out=str(d["out"]),
                      backend=backend, num_cpus=_opt_int(d["num_cpus"], "num_cpus", 1),
                      threads=_opt_int(d["threads"], "threads", 1) or 1)
    if cfg.checkpoint_every is not None and cfg.evaluation is not None:
        raise SweepConfigError("'checkpoint_every' cannot be combined with 'evaluation': an Evaluation's probe state "
                               "is not checkpointed (drop one of them)")
    if check_names:
        _check_names(cfg)
    return cfg


def _check_names(cfg: SweepConfig) -> None:
    import gymnasium as gym

    import clenv

    for env_id, kw in cfg.envs.items():
        bare = env_id.split(":")[-1]
        if bare not in gym.registry:
            close = difflib.get_close_matches(bare, clenv.env_ids(), 1)
            raise SweepConfigError(f"'envs': unknown env id {env_id!r}" + (f" (did you mean {close[0]!r}?)"
                                                                             if close else ""))
        valid = _env_kwarg_names(gym.spec(bare).entry_point)
        for name, src in [(k, "env_kwargs") for k in cfg.env_kwargs] + [(k, f"envs.{env_id}") for k in kw]:
            if valid is not None and name not in valid:
                raise SweepConfigError(f"'{src}': unknown env kwarg {name!r} for {env_id}; valid: "
                                       f"{', '.join(sorted(valid))}")
    from clenv.cli import CliError, agent_provider

    try:
        provider = agent_provider()
    except CliError as err:
        raise SweepConfigError(str(err)) from None
    for name, kw in cfg.agents.items():
        try:
            cls = provider.agent_class(name) if hasattr(provider, "agent_class") else None
        except (ValueError, ImportError) as err:
            raise SweepConfigError(f"'agents': {err}") from None
        defaults = _hparam_names(cls)
        if defaults is None:
            continue
        for key, src in ([(k, "agent_kwargs") for k in cfg.agent_kwargs] + [(k, f"agents.{name}") for k in kw]
                         + [(k, "grid") for k in cfg.grid]):
            if key not in defaults:
                raise SweepConfigError(f"'{src}': unknown hyperparameter {key!r} for agent {name!r}; valid: "
                                       f"{', '.join(sorted(defaults))}")
    if cfg.evaluation is not None:
        from clenv.evaluation import Evaluation

        valid = set(inspect.signature(Evaluation.__init__).parameters) - {"self", "loggers"}
        for key in cfg.evaluation:
            if key not in valid:
                raise SweepConfigError(f"'evaluation': unknown clenv.Evaluation option {key!r}; valid: "
                                       f"{', '.join(sorted(valid))}")


def _env_kwarg_names(entry_point) -> set[str] | None:
    """The kwargs an env entry point accepts (None: it takes anything or cannot be inspected)."""
    if not isinstance(entry_point, str) or ":" not in entry_point:
        return None
    module, attr = entry_point.split(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if callable(getattr(cls, "valid_kwargs", None)):
        return set(cls.valid_kwargs())
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _hparam_names(cls) -> set[str] | None:
    """An agent class's hyperparameters: ``DEFAULTS`` merged along its MRO (None: it declares none)."""
    if cls is None or not any("DEFAULTS" in vars(k) for k in cls.__mro__):
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= set(vars(klass).get("DEFAULTS", {}) or {})
    return names


# ---------------------------------------------------------------------------------------------- expansion
def _fmt(v) -> str:
    return json.dumps(v, sort_keys=True, default=repr) if not isinstance(v, str) else v


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:10]


def expand(cfg: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in order env x agent x grid point x seed."""
    points = expand_grid(cfg)
    specs = []
    for env_id, env_kw in cfg.envs.items():
        ekw = {**cfg.env_kwargs, **env_kw}
        for agent, agent_kw in cfg.agents.items():
            for point in points:
                akw = {**cfg.agent_kwargs, **agent_kw, **point}
                label = agent + ("[" + ",".join(f"{k}={_fmt(v)}" for k, v in point.items()) + "]" if point else "")
                for seed in cfg.seeds:
                    ident = {"env_id": env_id, "env_kwargs": ekw, "agent": agent, "agent_kwargs": akw, "seed": seed,
                             "total_steps": cfg.total_steps, "evaluation": cfg.evaluation}
                    specs.append(RunSpec(env_id, ekw, agent, akw, seed, label, cfg.total_steps, cfg.evaluation,
                                         _key(ident)))
    return specs


# ---------------------------------------------------------------------------------------------- one run
def execute(spec: RunSpec, threads: int = 1, checkpoint_dir: str | None = None,
            checkpoint_every: int | None = None) -> dict:
    """Run one sweep point (in a Ray worker or in this process). Returns ``{"key", "result", "error", "seconds"}``
    where ``result`` is the :class:`~clenv.loop.RunResult` (``agent`` set to the label) or None, and ``error`` the
    traceback of a failed run."""
    t0 = time.perf_counter()
    try:
        import gymnasium as gym
        import torch

        import clenv
        from clenv.cli import agent_provider
        from clenv.metrics.online import online_metrics

        torch.set_num_threads(int(threads))
        env_id = spec.env_id if ":" in spec.env_id else f"clenv:{spec.env_id}"  # works without `import clenv`
        env = gym.make(env_id, **spec.env_kwargs)
        agent = agent_provider().make(spec.agent, env, **spec.agent_kwargs)
        callbacks, resume = [], None
        if checkpoint_dir is not None and checkpoint_every:
            ck = clenv.Checkpoint(checkpoint_dir, every=checkpoint_every)
            callbacks.append(ck)
            resume = checkpoint_dir if ck.path.is_file() else None
        ev = clenv.Evaluation(**spec.evaluation) if spec.evaluation is not None else None
        result = clenv.run(env, agent, seed=spec.seed, progress=False, total_steps=spec.total_steps, evaluation=ev,
                           callbacks=callbacks, resume_from=resume, desc=spec.describe())
        for k, v in online_metrics(result.task_accuracy).items():
            result.metrics.setdefault(k, v)
        result.agent = spec.label
        result.config.update({"env_id": spec.env_id, "agent_name": spec.agent, "env_kwargs": spec.env_kwargs,
                              "agent_kwargs": spec.agent_kwargs, "sweep_key": spec.key, "resumed": resume is not None})
        env.close()
        return {"key": spec.key, "result": result, "error": None, "seconds": time.perf_counter() - t0}
    except Exception:  # noqa: BLE001 - a failed run is reported, the sweep goes on
        return {"key": spec.key, "result": None, "error": traceback.format_exc(), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- the sweep
def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _pick_backend(requested: str | None, log) -> str:
    if requested == "ray" and not _ray_available():
        raise SweepConfigError("backend 'ray' needs Ray: pip install 'clenv[ray]' (or use --backend sequential)")
    if requested is None:
        if _ray_available():
            return "ray"
        log("clenv sweep: ray is not installed (pip install 'clenv[ray]'); running the runs sequentially in this "
            "process")
        return "sequential"
    return requested


def run_sweep(cfg: SweepConfig, *, log=print, dry_run: bool = False) -> dict:
    """Run every missing run of ``cfg`` and save each as it finishes. Returns ``{"specs", "skipped", "done",
    "failed": {key: traceback}, "dirs", "backend"}`` (``dirs``: the result directory of every run that has one)."""
    out = Path(cfg.out)
    specs = expand(cfg)
    pending = [s for s in specs if not (s.directory(out) / "result.json").is_file()]
    todo = {s.key for s in pending}
    skipped = len(specs) - len(pending)
    log(f"clenv sweep: {len(specs)} runs ({len(cfg.envs)} envs x {len(cfg.agents)} agents x "
        f"{len(expand_grid(cfg))} grid points x {len(cfg.seeds)} seeds); {skipped} already done, "
        f"{len(pending)} to run")
    report = {"specs": specs, "skipped": skipped, "done": [], "failed": {}, "backend": None, "dirs": []}
    if dry_run:
        for s in specs:
            state = "todo" if s.key in todo else "done"
            log(f"  [{state}] {s.describe()} -> {s.directory(out)}")
        report["dirs"] = [s.directory(out) for s in specs if s.key not in todo]
        return report
    backend = _pick_backend(cfg.backend, log) if pending else (cfg.backend or "none")
    report["backend"] = backend
    by_key = {s.key: s for s in pending}
    ck_root = out / ".checkpoints"
    ck_dir = (lambda s: str(ck_root / s.key)) if cfg.checkpoint_every else (lambda s: None)

    def collect(outcome: dict, i: int) -> None:
        s = by_key[outcome["key"]]
        if outcome["error"] is not None:
            report["failed"][s.key] = outcome["error"]
            last = outcome["error"].strip().splitlines()[-1]
            log(f"[{i}/{len(pending)}] FAILED {s.describe()}: {last}")
            return
        from clenv.results import save_run

        path = save_run(outcome["result"], s.directory(out))
        if cfg.checkpoint_every:
            shutil.rmtree(ck_root / s.key, ignore_errors=True)  # the result is saved: the checkpoint is spent
        report["done"].append(s.key)
        r = outcome["result"]
        log(f"[{i}/{len(pending)}] {s.describe()}: avg online acc {r.average_accuracy * 100:.2f}%, "
            f"{r.steps} steps, {r.wall_time:.1f} s -> {path}")

    if pending and backend == "sequential":
        import torch

        before = torch.get_num_threads()
        try:
            for i, s in enumerate(pending, 1):
                collect(execute(s, cfg.threads, ck_dir(s), cfg.checkpoint_every), i)
        finally:
            torch.set_num_threads(before)
    elif pending:
        _run_on_ray(cfg, pending, ck_dir, collect, log)
    report["dirs"] = [s.directory(out) for s in specs if (s.directory(out) / "result.json").is_file()]
    return report


def expand_grid(cfg: SweepConfig) -> list[dict]:
    """The grid points (``[{}]`` without a grid)."""
    return [dict(zip(cfg.grid, values)) for values in itertools.product(*cfg.grid.values())] or [{}]


def _run_on_ray(cfg: SweepConfig, pending: list[RunSpec], ck_dir, collect, log) -> None:
    import ray

    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            log(f"clenv sweep: joining the Ray cluster at RAY_ADDRESS={address}")
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, logging_level="WARNING")
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(execute)
        refs = [task.remote(s, cfg.threads, ck_dir(s), cfg.checkpoint_every) for s in pending]
        i = 0
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for ref in ready:
                i += 1
                collect(ray.get(ref), i)  # saved as soon as it is back: a dead driver loses at most running runs
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- CLI
def _grid_flag(items: Sequence[str] | None) -> dict:
    from clenv.cli import CliError, parse_value

    grid = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"--grid expects key=v1,v2,... with a hyperparameter name as key, got {item!r}")
        value = parse_value(text)
        if not isinstance(value, list):  # "0.001,0.01": split on commas; "[[100],[100,100]]": a JSON list
            value = [parse_value(v) for v in text.split(",") if v.strip()]
        grid[key.strip()] = value
    return grid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clenv sweep", description="Run methods x hyperparameter grid x seeds x streams "
                                "on Ray (or in this process), one result record per run, then a mean (std) table. "
                                "A rerun skips finished runs.")
    p.add_argument("--config", help="JSON or YAML sweep config (flags override its keys)")
    p.add_argument("--env", "--envs", dest="envs", help="comma-separated env ids")
    p.add_argument("--agents", help="comma-separated agent names")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--grid", action="append", metavar="K=V1,V2", help="hyperparameter grid axis (repeatable)")
    p.add_argument("--env-set", action="append", metavar="K=V", help="env kwarg for every env (repeatable)")
    p.add_argument("--agent-set", action="append", metavar="K=V", help="hyperparameter for every agent (repeatable)")
    p.add_argument("--total-steps", type=int, help="stop each run after this many steps")
    p.add_argument("--evaluate", action="store_true", help="attach clenv.Evaluation (its defaults)")
    p.add_argument("--eval-set", action="append", metavar="K=V", help="clenv.Evaluation option (repeatable)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint runs every N steps; interrupted runs resume")
    p.add_argument("--out", help="results root (default runs/sweep)")
    p.add_argument("--backend", choices=BACKENDS, help="ray (default when installed) or sequential")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--threads", type=int, help="torch threads per run (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; run nothing")
    p.add_argument("--figures", action="store_true", help="also write the report's PNG figures")
    return p


def _flags_to_config(args) -> dict:
    from clenv.cli import parse_assignments

    doc = load_config(args.config) if args.config else {}
    if args.envs is not None:
        doc["envs"] = args.envs
    if args.agents is not None:
        doc["agents"] = args.agents
    if args.seeds is not None:
        try:
            doc["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise SweepConfigError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    if args.grid:
        doc["grid"] = {**(doc.get("grid") or {}), **_grid_flag(args.grid)}
    if args.env_set:
        doc["env_kwargs"] = {**(doc.get("env_kwargs") or {}), **parse_assignments(args.env_set, "--env-set")}
    if args.agent_set:
        doc["agent_kwargs"] = {**(doc.get("agent_kwargs") or {}), **parse_assignments(args.agent_set, "--agent-set")}
    if args.eval_set or args.evaluate:
        doc["evaluation"] = {**(doc.get("evaluation") or {}), **parse_assignments(args.eval_set, "--eval-set")}
    for flag in ("total_steps", "checkpoint_every", "out", "backend", "num_cpus", "threads"):
        if getattr(args, flag) is not None:
            doc[flag] = getattr(args, flag)
    return doc


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clenv sweep``. Exit status: 0 when every run is done, 1 when some failed, 2 on a bad
    config (nothing is run)."""
    from clenv.cli import CliError

    args = build_parser().parse_args(argv)
    try:
        cfg = validate_config(_flags_to_config(args))
        result = run_sweep(cfg, dry_run=args.dry_run)
    except (SweepConfigError, CliError) as err:
        print(f"clenv sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    if result["dirs"]:
        from clenv.report import report_main

        print()
        report_main([str(d) for d in result["dirs"]] + ["--out", str(Path(cfg.out) / "report")]
                    + ([] if args.figures else ["--no-figures"]))
    failed = result["failed"]
    if failed:
        print(f"clenv sweep: {len(failed)} run(s) failed; rerun the same command to retry them", file=sys.stderr)
        for key, tb in failed.items():
            print(f"--- run {key}:\n{tb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(sweep_main())
