"""``clenv sweep``: methods x hyperparameter grid x seeds x streams, on Ray or in this process.

Every combination is one :class:`clenv.app.spec.RunSpec`, executed and saved by :func:`clenv.app.spec.execute` in
the folder its key (a hash of the resolved configuration) names::

    <out>/<env id>/<agent>/seed<k>-<key>/{result.json, arrays-*.npz}

so a rerun of the same sweep skips the runs whose ``result.json`` exists and does only what is missing (an
interrupted sweep resumes; a wider grid adds only its new points; a run ``clenv run --out <out>`` did counts as
done). With ``checkpoint_every`` a run also checkpoints (:class:`clenv.Checkpoint`) under ``<out>/.checkpoints/<key>``
and an interrupted run resumes mid-stream.

The agent label is the agent name followed by the grid values, ``base[lr=0.001]``; the final table is
:mod:`clenv.app.report`'s aggregation (mean (std) over seeds) of this sweep's runs, written to ``<out>/report``.

Backends: ``ray`` (the default when Ray is installed: ``pip install 'clenv[ray]'``) starts a local Ray or, when
``RAY_ADDRESS`` is set, joins that cluster, and runs each run as a task with ``num_cpus=1`` and one torch thread;
results come back to the driver, which writes them. ``processes`` (the default without Ray) runs ``jobs`` worker
processes on this machine the same way; ``sequential`` runs in this process, one run after another.
Workers build envs and agents as the driver does, so a cluster's nodes need clenv (and the agents package, and any
user agent module) installed, and a shared filesystem if runs checkpoint.

A config (JSON, or YAML with PyYAML) holds these keys; command-line flags override them::

    envs: [RandomLabelDigits-v0]      # or {id: {env kwargs}}
    env_kwargs: {num_tasks: 4}        # for every env (per-env kwargs win)
    agents: [base, scratch]           # or {name: {fixed hyperparameters}}
    agent_kwargs: {optimizer: adam}   # for every agent (per-agent ones win)
    grid: {lr: [0.001, 0.01]}         # every combination, for every agent
    seeds: [0, 1, 2]
    total_steps: null                 # stop runs early
    evaluation: null                  # clenv.Evaluation options, e.g. {forgetting: true}; {} for online metrics only
    checkpoint_every: null            # steps between checkpoints
    out: runs/sweep
    backend: null                     # ray | processes | sequential (null: ray if installed, else processes)
    jobs: null                        # worker processes of the processes backend (null: the cores available)
    num_cpus: null                    # local Ray's CPUs (default: all)
    threads: 1                        # torch threads per run

Without ``evaluation`` the online metrics (``avg_online_acc``, ``online_acc_last25``, ...) are still computed.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from clenv.app.spec import (RunSpec, UsageError, check_agent, check_out, default_jobs, execute, parse_assignments,
                            in_workers, parse_seeds, parse_value, save, suggest)

__all__ = ["SweepConfig", "SweepConfigError", "load_config", "validate_config", "expand", "expand_grid", "run_sweep",
           "sweep_main"]

_DEFAULTS: dict[str, Any] = dict(envs=None, env_kwargs={}, agents=None, agent_kwargs={}, grid={}, seeds=[0],
                                 total_steps=None, evaluation=None, checkpoint_every=None, out="runs/sweep",
                                 backend=None, num_cpus=None, threads=1, jobs=None)
KEYS = tuple(_DEFAULTS)
BACKENDS = ("ray", "processes", "sequential")


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
    jobs: int | None = None
    num_cpus: int | None = None
    threads: int = 1


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
    names, unknown env kwargs / agent hyperparameters / evaluation options (``check_names=False`` skips resolving
    the runs, which makes their envs)."""
    if not isinstance(doc, dict):
        raise SweepConfigError(f"a sweep config is a mapping, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in KEYS]
    if unknown:
        hints = [f"{k!r}{suggest(str(k), KEYS)}" for k in unknown]
        raise SweepConfigError(f"unknown sweep config key(s) {', '.join(hints)} (valid keys: {', '.join(KEYS)})")
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
    if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepConfigError(f"'seeds' must be a non-empty list of integers >= 0, got {seeds!r}")
    try:
        seeds = parse_seeds(list(seeds), "'seeds'")
    except UsageError as err:
        raise SweepConfigError(str(err)) from None
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
                      jobs=_opt_int(d["jobs"], "jobs", 1),
                      threads=_opt_int(d["threads"], "threads", 1) or 1)
    if cfg.evaluation is not None:
        import clenv

        try:
            clenv.Evaluation(**cfg.evaluation)
        except (TypeError, ValueError) as err:
            raise SweepConfigError(f"'evaluation': {err}") from None
    if check_names:
        _check_names(cfg)
    return cfg


def _check_names(cfg: SweepConfig) -> None:
    """Every env id and agent name exists, and every (env, agent, grid point) resolves (env kwargs, hyperparameters),
    before anything runs; the message names the config key."""
    import clenv

    for env_id in cfg.envs:
        if env_id.split(":")[-1] not in clenv.env_ids():
            hint = suggest(env_id.split(":")[-1], clenv.env_ids())
            raise SweepConfigError(f"'envs': unknown env id {env_id!r}{hint}")
    for name in cfg.agents:
        try:
            check_agent(name)
        except UsageError as err:
            raise SweepConfigError(f"'agents': {err}") from None
    seen = set()
    for spec in expand(cfg):
        what = (spec.env_id, spec.label)
        if what in seen:
            continue
        seen.add(what)
        try:
            spec.resolve().env.close()
        except UsageError as err:
            raise SweepConfigError(f"'envs' / 'env_kwargs' / 'agents' / 'agent_kwargs' / 'grid', run "
                                   f"{spec.describe()}: {err}") from None


# ---------------------------------------------------------------------------------------------- expansion
def _fmt(v) -> str:
    return json.dumps(v, sort_keys=True, default=repr) if not isinstance(v, str) else v


def expand(cfg: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in order env x agent x grid point x seed; a grid point labels its runs
    ``agent[k=v,...]``."""
    specs = []
    for env_id, env_kw in cfg.envs.items():
        ekw = {**cfg.env_kwargs, **env_kw}
        for agent, agent_kw in cfg.agents.items():
            for point in expand_grid(cfg):
                akw = {**cfg.agent_kwargs, **agent_kw, **point}
                label = agent + ("[" + ",".join(f"{k}={_fmt(v)}" for k, v in point.items()) + "]" if point else "")
                specs += [RunSpec(env_id, agent, seed, ekw, akw, cfg.total_steps, cfg.evaluation, label=label)
                          for seed in cfg.seeds]
    return specs


def _execute_remote(spec: RunSpec, out: str, checkpoint_every, threads) -> dict:
    """One run in a worker (or this process): ``{"key", "result", "error", "seconds"}``; the driver saves the
    result, so a worker needs no access to ``out`` unless the run checkpoints."""
    t0 = time.perf_counter()
    try:
        result, _ = execute(spec, out=out, save_result=False, checkpoint_every=checkpoint_every, threads=threads)
        return {"key": result.config["key"], "result": result, "error": None, "seconds": time.perf_counter() - t0}
    except Exception:  # noqa: BLE001 - a failed run is reported, the sweep goes on
        return {"key": None, "result": None, "error": traceback.format_exc(), "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------- the sweep
def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _pick_backend(requested: str | None, log) -> str:
    if requested == "ray" and not _ray_available():
        raise SweepConfigError("backend 'ray' needs Ray: pip install 'clenv[ray]' (or use --backend sequential)")
    if requested is None:
        if _ray_available():
            return "ray"
        log("clenv sweep: ray is not installed (pip install 'clenv[ray]'); running the runs in local worker "
            "processes")
        return "processes"
    return requested


def run_sweep(cfg: SweepConfig, *, log=print, dry_run: bool = False) -> dict:
    """Run every missing run of ``cfg`` and save each as it finishes. Returns ``{"specs", "skipped", "done",
    "failed": {description: traceback}, "dirs", "backend"}`` (``dirs``: the result directory of every run that has
    one). A run is done when its folder (named by its key, :mod:`clenv.app.spec`) holds a result, whichever command
    made it."""
    out = Path(cfg.out)
    resolved = []
    for spec in expand(cfg):
        r = spec.resolve()
        r.env.close()
        resolved.append(r)
    pending = [r for r in resolved if not r.finished(out)]
    skipped = len(resolved) - len(pending)
    log(f"clenv sweep: {len(resolved)} runs ({len(cfg.envs)} envs x {len(cfg.agents)} agents x "
        f"{len(expand_grid(cfg))} grid points x {len(cfg.seeds)} seeds); {skipped} already done, "
        f"{len(pending)} to run")
    report = {"specs": [r.spec for r in resolved], "skipped": skipped, "done": [], "failed": {}, "backend": None,
              "dirs": []}
    if dry_run:
        todo = {id(r) for r in pending}
        for r in resolved:
            log(f"  [{'todo' if id(r) in todo else 'done'}] {r.spec.describe()} -> {r.directory(out)}")
        report["dirs"] = [r.directory(out) for r in resolved if id(r) not in todo]
        return report
    backend = _pick_backend(cfg.backend, log) if pending else (cfg.backend or "none")
    report["backend"] = backend
    by_key = {r.key: r for r in pending}

    def collect(outcome: dict, i: int, r) -> None:
        if outcome["error"] is not None:
            report["failed"][r.spec.describe()] = outcome["error"]
            last = outcome["error"].strip().splitlines()[-1]
            log(f"[{i}/{len(pending)}] FAILED {r.spec.describe()}: {last}")
            return
        result = outcome["result"]
        path = save(r, result, out)
        report["done"].append(r.key)
        log(f"[{i}/{len(pending)}] {r.spec.describe()}: avg online acc {result.average_accuracy * 100:.2f}%, "
            f"{result.steps} steps, {result.wall_time:.1f} s -> {path}")

    if pending and backend == "sequential":
        import torch

        before = torch.get_num_threads()
        try:
            for i, r in enumerate(pending, 1):
                collect(_execute_remote(r.spec, str(out), cfg.checkpoint_every, cfg.threads), i, r)
        finally:
            torch.set_num_threads(before)
    elif pending and backend == "processes":
        _run_in_processes(cfg, pending, collect)
    elif pending:
        _run_on_ray(cfg, pending, collect, log, by_key)
    report["dirs"] = [r.directory(out) for r in resolved if r.finished(out)]
    return report


def expand_grid(cfg: SweepConfig) -> list[dict]:
    """The grid points (``[{}]`` without a grid)."""
    return [dict(zip(cfg.grid, values)) for values in itertools.product(*cfg.grid.values())] or [{}]


def _run_in_processes(cfg: SweepConfig, pending: list, collect) -> None:
    """The runs in ``cfg.jobs`` worker processes (default: the cores available), one torch thread each."""
    calls = [(r.spec, str(cfg.out), cfg.checkpoint_every, cfg.threads) for r in pending]
    for n, (i, outcome) in enumerate(in_workers(_execute_remote, calls, jobs=cfg.jobs or default_jobs(),
                                                threads=cfg.threads), 1):
        collect(outcome, n, pending[i])


def _run_on_ray(cfg: SweepConfig, pending: list, collect, log, by_key: dict) -> None:
    import ray

    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # Workers import a user's agent module ("package.module:Class") from where the driver runs.
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(),
                                                                               os.environ.get("PYTHONPATH")) if p)}}
        if address:
            log(f"clenv sweep: joining the Ray cluster at RAY_ADDRESS={address}")
            ray.init(address=address, logging_level="WARNING", runtime_env=runtime_env)
        else:
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, logging_level="WARNING", runtime_env=runtime_env)
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_execute_remote)
        refs = {task.remote(r.spec, str(cfg.out), cfg.checkpoint_every, cfg.threads): r for r in pending}
        waiting, i = list(refs), 0
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                i += 1
                collect(ray.get(ref), i, refs[ref])  # saved as it comes back: a dead driver loses only running runs
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- CLI
def _grid_flag(items: Sequence[str] | None) -> dict:
    grid = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--grid expects key=v1,v2,... with a hyperparameter name as key, got {item!r}")
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
    p.add_argument("--backend", choices=BACKENDS, help="ray (default when installed), processes (local worker "
                   "processes, the default without Ray) or sequential (in this process)")
    p.add_argument("--jobs", type=int, help="worker processes of the processes backend (default: the cores)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--threads", type=int, help="torch threads per run (default 1)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is done; run nothing")
    p.add_argument("--figures", action="store_true", help="also write the report's PNG figures")
    return p


def _flags_to_config(args) -> dict:
    doc = load_config(args.config) if args.config else {}
    if args.envs is not None:
        doc["envs"] = args.envs
    if args.agents is not None:
        doc["agents"] = args.agents
    if args.seeds is not None:
        doc["seeds"] = parse_seeds(args.seeds)
    if args.grid:
        doc["grid"] = {**(doc.get("grid") or {}), **_grid_flag(args.grid)}
    if args.env_set:
        doc["env_kwargs"] = {**(doc.get("env_kwargs") or {}), **parse_assignments(args.env_set, "--env-set")}
    if args.agent_set:
        doc["agent_kwargs"] = {**(doc.get("agent_kwargs") or {}), **parse_assignments(args.agent_set, "--agent-set")}
    if args.eval_set or args.evaluate:
        doc["evaluation"] = {**(doc.get("evaluation") or {}), **parse_assignments(args.eval_set, "--eval-set")}
    for flag in ("total_steps", "checkpoint_every", "out", "backend", "num_cpus", "threads", "jobs"):
        if getattr(args, flag) is not None:
            doc[flag] = getattr(args, flag)
    return doc


def sweep_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clenv sweep``. Exit status: 0 when every run is done, 1 when some failed, 2 on a bad
    config (nothing is run)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = validate_config(_flags_to_config(args))
        if not args.dry_run:
            check_out(cfg.out)
        result = run_sweep(cfg, dry_run=args.dry_run)
    except (SweepConfigError, UsageError) as err:
        print(f"clenv sweep: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    if result["dirs"]:
        from clenv.app.report import report_main

        print()
        report_main([str(d) for d in result["dirs"]] + ["--out", str(Path(cfg.out) / "report")]
                    + ([] if args.figures else ["--no-figures"]))
    failed = result["failed"]
    if failed:
        print(f"clenv sweep: {len(failed)} run(s) failed; rerun the same command to retry them", file=sys.stderr)
        for what, tb in failed.items():
            print(f"--- {what}:\n{tb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(sweep_main())
