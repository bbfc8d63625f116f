"""``clenv reproduce TABLE_ID``: run a paper table's methods under its protocol and print ours next to the paper's.

::

    clenv reproduce --list
    clenv reproduce table1 --benchmark random_label_mnist --agents cbp,neumosync --seeds 0,1,2 --scale 0.1
    clenv reproduce 23 --benchmark split_cifar10 --out runs

For each benchmark of the table (or the ``--benchmark`` ones) and each method (or the ``--agents`` ones: agent
names, method labels or result keys), every seed runs once:

- the env is the paper's id when its data is found, else the Fashion-MNIST stand-in of :data:`clenv.protocols.
  BENCHMARKS` under the paper's protocol (said in the output); ``--env`` runs another id under its own protocol;
- ``--scale F`` multiplies the number of tasks (at least 2) and the epochs per task (at least 1); the probe budget
  gamma keeps the paper's share of a task's steps (Table 5, or Table 13 for Table 4), at least 2 and at most a task;
  ``--env-set`` changes any env kwarg after that;
- every run is a :class:`clenv.app.spec.RunSpec`, as ``clenv run``'s are, executed by
  :func:`clenv.app.spec.execute_all` in ``--jobs`` worker processes: the agent with the benchmark's paper
  hyperparameters (``paper_benchmark=``), the method's own (Table 2's controllers, Table 32's beta, ...), then
  ``--agent-set``; the seed also seeds the agent's initialisation;
- the probes the table needs run (:class:`clenv.Evaluation`: adaptation for LCA / FKT / BKT, forgetting for AF);
- runs are saved under ``OUT/<table>/<env>/<agent>/seed<k>-<key>``, and the
  comparison (one table per benchmark, ours and the paper's as adjacent rows, formatted by
  :func:`clenv.report.format_table`) is printed and written to ``OUT/<table>/comparison.md``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from clenv import protocols
from clenv.app import paper_tables as papers
from clenv.app.spec import RunSpec, UsageError, check_out, default_jobs, execute_all, parse_assignments, parse_seeds

__all__ = ["reproduce_main", "plan", "comparison", "decomposition"]

_MIN_TASKS = 2  # transfer metrics need a previous task; the windows need a task to average
_MIN_GAMMA = 2  # gamma/2 must be a step


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", text.lower())


def select_methods(table: papers.PaperTable, wanted: str | None) -> list[papers.Method]:
    """The table's methods, or those named in ``wanted`` (comma-separated agent names, labels or keys)."""
    if not wanted:
        return list(table.methods)
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    chosen = []
    for w in names:
        hits = [m for m in table.methods if _norm(w) in (_norm(m.agent), _norm(m.label), _norm(m.key))]
        if not hits:
            raise ValueError(f"{table.id} has no method {w!r}; its methods: "
                             + ", ".join(f"{m.label} ({m.agent})" for m in table.methods))
        chosen += [m for m in hits if m not in chosen]
    return chosen


def select_benchmarks(table: papers.PaperTable, wanted: str | None) -> list[protocols.Benchmark]:
    if not wanted:
        return [protocols.BENCHMARKS[b] for b in table.benchmarks]
    out = []
    for w in (w.strip() for w in wanted.split(",") if w.strip()):
        try:
            b = protocols.benchmark(w)
        except KeyError as err:
            raise ValueError(str(err).strip("'\"")) from None
        if b.key not in table.benchmarks:
            raise ValueError(f"{table.id} has no benchmark {w!r}; its benchmarks: {', '.join(table.benchmarks)}")
        out.append(b)
    return out


def _data_available(env_id: str, kwargs: dict) -> bool:
    import gymnasium as gym

    try:
        gym.make(env_id, **kwargs).close()
    except FileNotFoundError:
        return False
    return True


def plan(bench: protocols.Benchmark, *, env_id: str | None = None, scale: float = 1.0,
         env_set: dict | None = None, check_data: bool = True) -> dict[str, Any]:
    """Which env and kwargs a benchmark runs with, and the notes to print.

    Returns ``env_id``, ``env_kwargs`` (full protocol), ``agent_kwargs`` (the setting's backbone), ``paper_steps``
    (steps per task of the paper's protocol) and ``notes``."""
    from clenv.registry import protocol

    notes: list[str] = []
    paper_row = protocol(bench.paper_env)
    agent_kwargs: dict[str, Any] = {}
    if env_id is not None:  # an explicit id runs its own protocol
        row = protocol(env_id)
        if row is None:
            raise ValueError(f"unknown env id {env_id!r} (`clenv list` shows every id)")
        kwargs = dict(row.kwargs)
        notes.append(f"{bench.name} runs on {env_id} under that id's own protocol (--env)")
        if row.backbone != paper_row.backbone:
            agent_kwargs["backbone"] = paper_row.backbone
    else:
        kwargs = protocols.protocol_kwargs(bench.key)
        env_id = bench.paper_env
        if check_data and not _data_available(env_id, kwargs):
            stand_in = protocol(bench.stand_in)
            kwargs = {**kwargs, "dataset": stand_in.kwargs["dataset"], **bench.stand_in_kwargs}
            notes.append(f"{bench.paper_env}'s data is not on this machine: {bench.name} runs on {bench.stand_in} "
                         f"(the same protocol on {stand_in.kwargs['dataset']}"
                         + (f", {bench.stand_in_kwargs}" if bench.stand_in_kwargs else "") + ")")
            env_id = bench.stand_in
            agent_kwargs["backbone"] = paper_row.backbone
    agent_kwargs.update(bench.agent_kwargs)
    if bench.note:
        notes.append(bench.note)
    if scale != 1.0:
        if scale <= 0:
            raise ValueError(f"--scale must be > 0, got {scale}")
        before = (kwargs.get("num_tasks"), kwargs.get("epochs_per_task"))
        kwargs["num_tasks"] = max(_MIN_TASKS, int(round(int(kwargs["num_tasks"]) * scale)))
        if "epochs_per_task" in kwargs:
            kwargs["epochs_per_task"] = max(1, int(round(int(kwargs["epochs_per_task"]) * scale)))
            what = f"epochs_per_task {before[1]} -> {kwargs['epochs_per_task']}"
        else:  # a protocol counted in steps (FTN's 1,000 per task)
            steps = kwargs.get("steps_per_task")
            kwargs["steps_per_task"] = max(1, int(round(int(steps) * scale)))
            what = f"steps_per_task {steps} -> {kwargs['steps_per_task']}"
        notes.append(f"scaled x{scale:g}: num_tasks {before[0]} -> {kwargs['num_tasks']} (at least {_MIN_TASKS}), "
                     f"{what} (at least 1); not the paper's protocol")
    if env_set:
        kwargs.update(env_set)
        notes.append(f"--env-set: {env_set}")
    return {"env_id": env_id, "env_kwargs": kwargs, "agent_kwargs": agent_kwargs,
            "paper_steps": protocols.paper_steps_per_task(bench.key), "notes": notes}


def probe_budget(table: papers.PaperTable, bench: protocols.Benchmark, steps: int, paper_steps: int | None):
    """gamma for a task of ``steps`` steps: the paper's gamma scaled by steps / paper steps, in [2, steps]; and a
    sentence saying so."""
    from clenv.registry import protocol

    g0 = table.gamma.get(bench.key) or protocol(bench.paper_env).gamma
    src = "Table 13" if bench.key in table.gamma else "Table 5"
    if not g0 or not paper_steps:
        g = protocols.default_gamma(steps, _MIN_GAMMA)
        return g, f"gamma = {g} ({protocols.GAMMA_SHARE:.0%} of the {steps} steps of a task; no paper gamma)"
    g = protocols.scaled_gamma(g0, paper_steps, steps, _MIN_GAMMA)
    if steps == paper_steps and g == g0:
        return g, f"gamma = {g} ({src})"
    return g, (f"gamma = {g} ({src}'s {g0} for {paper_steps} steps per task, kept at the same share of our "
               f"{steps} steps, within [{_MIN_GAMMA}, {steps}])")


def _evaluation(table: papers.PaperTable, gamma: int | None, probe_every: int) -> dict:
    """The ``clenv.Evaluation`` options a table's metrics need."""
    if table.probes == "adaptation":
        return {"adaptation": True, "gamma": gamma, "probe_every": probe_every}
    if table.probes == "forgetting":
        return {"forgetting": True}
    if table.probes == "stability":  # continual evaluation after every iteration, the scripts' block arithmetic
        return {"stability_every": 1, "ngm_compat": True}
    if table.probes == "masks":  # FTN: stored-mask and mask-recovery protocols
        return {"masks": True}
    return {}


def _row_name(i: int, label: str, who: str) -> str:
    return f"{i}. {label} · {who}"


def comparison(table: papers.PaperTable, bench: protocols.Benchmark, env_id: str, methods, runs) -> str | None:
    """The benchmark's part of ``table`` as a Markdown table: for each method a row of ours (mean (std) over its
    runs) and a row of the paper's numbers, formatted by :func:`clenv.report.format_table`."""
    from clenv.app.report import aggregate, format_table

    ours = aggregate(runs)
    title = f"{table.id}: {table.title} — {bench.name}"
    env_label = f"{env_id} (ours) vs {bench.paper_env} (paper)"
    columns = [(metric, header) for b, metric, header in table.columns if b == bench.key]
    if table.probes == "masks":  # ours only: the oracle protocol and what recovery loses beside the headline
        m = columns[0][0]
        columns += [(f"{m}_stored", f"{m.upper()} stored"), ("fm_stored", "FM stored"),
                    ("recall_error", "recall error"), ("mask_overlap", "mask overlap")]
    scale = 100.0 if table.percent else 1.0
    agg: dict = {}
    for i, m in enumerate(methods, 1):
        agg[(env_label, _row_name(i, m.label, "ours"))] = ours.get((env_id, m.key), {})
        # The paper's numbers are in percent (NeuMoSync, NGM) or as printed (FTN), ours are fractions.
        agg[(env_label, _row_name(i, m.label, "paper"))] = {
            c.metric: (c.mean / scale, c.std / scale, table.seeds) for c in table.cells
            if c.benchmark == bench.key and c.method == m.label}
    text = format_table(title, columns, agg, env_label, fractions=not table.percent)
    if text is not None and table.probes == "masks":
        text += "\n\n" + decomposition(bench.key, methods, ours, env_id)
    return text


def decomposition(bench_key: str, methods, ours: dict, env_id: str) -> str:
    """FTN Table 4 (:func:`clenv.app.report.decomposition`): each method's prior-task loss split into training-time
    overlap and recall error against FixedMask, ours (means over seeds) beside the paper's."""
    from clenv.app.report import decomposition as split

    regression = bench_key.endswith("regression")
    fixed = ours.get((env_id, "fixed_mask"))
    lines = [f"Table 4 decomposition ({'MSE excess' if regression else 'ACC drop'} on prior tasks, against "
             f"FixedMask's stored masks): ours | paper", "", "| Method | overlap | recall | paper overlap | "
             "paper recall |", "|---|---|---|---|---|"]
    paper = papers.FTN_TABLE4.get(bench_key, {})
    fmt = lambda v: "-" if v is None or v != v else f"{v:+.3f}"  # noqa: E731
    for meth in methods:
        overlap, recall = split(ours.get((env_id, meth.key), {}), fixed or {}, regression)
        p_overlap, p_recall = paper.get(meth.label, (None, None))
        lines.append(f"| {meth.label} | {fmt(overlap)} | {fmt(recall)} | {fmt(p_overlap)} | {fmt(p_recall)} |")
    if fixed is None:
        lines.append("\n(overlap needs the FixedMask runs: include fixed_mask in --agents)")
    return "\n".join(lines)


def _list() -> int:
    for t in papers.TABLES.values():
        print(f"{t.id}: {t.title}")
        print(f"    probes: {t.probes}; benchmarks: {', '.join(t.benchmarks)}")
        print(f"    methods: {', '.join(f'{m.label} ({m.key})' for m in t.methods)}")
        if t.note:
            print(f"    note: {t.note}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clenv reproduce", description="Run a paper table's protocol and print our "
                                "numbers next to the paper's.")
    p.add_argument("table", nargs="?", help="table id: table1, 2, T23, ... (`--list` shows them)")
    p.add_argument("--list", action="store_true", help="list the tables with reference data")
    p.add_argument("--benchmark", help="comma-separated benchmarks of the table (key or name; default: all)")
    p.add_argument("--agents", help="comma-separated methods: agent names, labels or keys (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2, as the paper)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply num_tasks and epochs_per_task (and gamma "
                   "with them); default 1, the paper's protocol")
    p.add_argument("--env", help="run on this env id (its own protocol) instead of the paper's or its stand-in")
    p.add_argument("--env-set", action="append", metavar="K=V", help="env kwarg after scaling (repeatable)")
    p.add_argument("--agent-set", action="append", metavar="K=V", help="hyperparameter for every method (repeatable)")
    p.add_argument("--probe-every", type=int, default=1, help="adaptation probes measure every k-th batch")
    p.add_argument("--out", default="runs", help="results root (default: runs/)")
    p.add_argument("--no-save", action="store_true", help="do not write result files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel worker processes (default: the cores "
                   "available; 1: one after another in this process)")
    return p


def reproduce_main(argv=None) -> int:
    """Entry point of ``clenv reproduce``; returns the exit status (2 on a usage error)."""
    args = _parser().parse_args(argv)
    if args.list:
        return _list()
    if not args.table:
        print("clenv reproduce: give a TABLE_ID or --list", file=sys.stderr)
        return 2
    try:
        table = papers.table(args.table)
        benches = select_benchmarks(table, args.benchmark)
        methods = select_methods(table, args.agents)
        seeds = parse_seeds(args.seeds)
        env_set = parse_assignments(args.env_set, "--env-set")
        agent_set = parse_assignments(args.agent_set, "--agent-set")
        args.jobs = default_jobs() if args.jobs is None else args.jobs
        if args.probe_every < 1 or args.threads < 1 or args.jobs < 1:
            raise ValueError("--probe-every, --threads and --jobs must be >= 1")
        out_root = None if args.no_save else check_out(Path(args.out) / table.id)
        return _reproduce(table, benches, methods, seeds, args, env_set, agent_set, out_root)
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError, UsageError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"clenv reproduce: error: {msg}", file=sys.stderr)
        return 2


def _specs(table, bench, plan_, m, seeds, agent_set, probe_every) -> tuple[list, str | None]:
    """The resolved runs of one method on one benchmark (one per seed) and the sentence about its gamma."""
    import dataclasses

    kwargs = dict(plan_["env_kwargs"])
    for k, f in m.env_factors.items():
        kwargs[k] = max(1, int(round(int(kwargs[k]) * f)))
    hp = {**plan_["agent_kwargs"], **m.hparams, **agent_set}
    base = RunSpec(plan_["env_id"], m.agent, seeds[0], kwargs, hp, None, None, paper_benchmark=bench.key,
                   label=m.key)
    gamma, text = None, None
    if table.probes == "adaptation":
        probe = base.resolve()
        steps = probe.env.unwrapped.steps_per_task(0)
        probe.env.close()
        paper_steps = plan_["paper_steps"]
        if paper_steps and m.env_factors.get("epochs_per_task"):
            paper_steps = int(round(paper_steps * m.env_factors["epochs_per_task"]))
        gamma, text = probe_budget(table, bench, steps, paper_steps)
    evaluation = _evaluation(table, gamma, probe_every)
    return [dataclasses.replace(base, seed=seed, evaluation=evaluation).resolve() for seed in seeds], text


def _reproduce(table, benches, methods, seeds, args, env_set, agent_set, out_root) -> int:
    import torch

    from clenv.results import atomic_write_bytes

    torch.set_num_threads(args.threads)
    print(f"clenv reproduce {table.id}: {table.title}")
    if table.note:
        print(f"  note: {table.note}")
    parts = []
    for bench in benches:
        p = plan(bench, env_id=args.env, scale=args.scale, env_set=env_set)
        print(f"\n== {bench.name}: {p['env_id']} {p['env_kwargs']}")
        for n in p["notes"]:
            print(f"  note: {n}")
        said, todo = None, []
        for m in methods:
            resolved, text = _specs(table, bench, p, m, seeds, agent_set, args.probe_every)
            if text is not None and text != said:
                print(f"  {text}" if said is None else f"  {m.label}: {text}")
                said = text
            print(f"  {m.label} ({m.key}): hparams from {resolved[0].hparam_source}")
            todo += resolved

        first = next(metric for b, metric, _ in table.columns if b == bench.key)

        def done(r, result, path) -> None:
            value = result.metrics.get(first)
            said = (f"{first} {value:.4f}" if value is not None and not table.percent else
                    f"avg online acc {result.average_accuracy * 100:.2f}%")
            print(f"  {r.spec.name} seed {r.spec.seed}: {said} ({result.wall_time:.1f} s)", flush=True)

        runs = [result for result, _ in execute_all(todo, jobs=args.jobs, out=out_root, progress=not args.no_progress,
                                                    threads=args.threads, on_result=done)]
        text = comparison(table, bench, p["env_id"], methods, runs)
        notes = "".join(f"\n- {n}" for n in p["notes"])
        block = (text or f"(no metric of {table.id} was measured)") + (f"\n{notes}" if notes else "")
        block += f"\n\nours: seeds {seeds}; paper: mean (spread) as printed, {table.seeds} seeds"
        parts.append(block)
        print("\n" + block, flush=True)
    if out_root is not None:
        atomic_write_bytes(out_root / "comparison.md", ("\n\n".join(parts) + "\n").encode())
        print(f"\nruns and comparison.md under {out_root}/ (`clenv report {out_root}` aggregates the runs)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(reproduce_main())
