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
- a saved run checkpoints every ``--checkpoint-every`` steps (50,000) under ``OUT/<table>/.checkpoints/<key>``;
  rerunning the command loads finished runs and continues an interrupted one from its checkpoint;
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

import numpy as np

from clenv import protocols
from clenv.app import paper_tables as papers
from clenv.app.spec import (ResolvedRun, RunSpec, UsageError, canonical, check_out, default_jobs, execute_all,
                            identity_key, in_workers, make_env, parse_assignments, parse_seeds, run_resolved,
                            save)

__all__ = ["reproduce_main", "plan", "comparison", "decomposition", "final_task_metrics", "merge_runs",
           "merge_summary", "merged_label"]

#: Steps between checkpoints of a saved run: a paper protocol of 750,000 steps is resumable from 15 points, and a
#: run shorter than this never pays for one.
CHECKPOINT_EVERY = 50_000
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
    if table.probes == "merging":  # the single-task runs: their own task's held-out accuracy (test_acc)
        return {"heldout": True}
    if table.probes == "memory":  # adapters recalled from memories, TIL and MTS, at the run's end
        return {"adapter_recall": True}
    return {}


def _row_name(i: int, label: str, who: str) -> str:
    return f"{i}. {label} · {who}"


def final_task_metrics(run) -> dict[str, float]:
    """``final_acc_task{j}``: the last row of a run's accuracy matrix (each task's held-out accuracy after the whole
    stream), the per-task columns of NeuroLoRA Table 3."""
    R = run.records.get("accuracy_matrix")
    if R is None or np.ndim(R) != 2 or not np.shape(R)[0]:
        return {}
    return {f"final_acc_task{j}": float(v) for j, v in enumerate(np.asarray(R, dtype=np.float64)[-1])}


def comparison(table: papers.PaperTable, bench: protocols.Benchmark, env_id: str, methods, runs,
               task_names=None) -> str | None:
    """The benchmark's part of ``table`` as a Markdown table: for each method a row of ours (mean (std) over its
    runs) and a row of the paper's numbers, formatted by :func:`clenv.report.format_table`. ``task_names`` name the
    per-task columns (``final_acc_task{j}``)."""
    from clenv.app.report import aggregate, format_table

    if any(c[1] in papers.FINAL_TASK_METRICS for c in table.columns):
        for r in runs:  # derived from the recorded matrix, for this table only
            r.metrics = {**final_task_metrics(r), **r.metrics}
    ours = aggregate(runs)
    title = f"{table.id}: {table.title} — {bench.name}"
    env_label = f"{env_id} (ours) vs {bench.paper_env} (paper)"
    columns = [(metric, header) for b, metric, header in table.columns if b == bench.key]
    if task_names:
        columns = [(m, task_names[int(m.rsplit("task", 1)[1])] if m in papers.FINAL_TASK_METRICS
                    and int(m.rsplit("task", 1)[1]) < len(task_names) else h) for m, h in columns]
    m = None
    if table.probes == "masks":  # ours only: the oracle protocol and what recovery loses beside the headline
        have = {c for c, _ in columns}
        m = next(c for c, _ in columns if not c.endswith("_stored") and c != "fm")
        columns += [c for c in ((f"{m}_stored", f"{m.upper()} stored"), ("fm_stored", "FM stored"),
                                ("recall_error", "recall error"), ("mask_overlap", "mask overlap")) if c[0] not in have]
    scale = 100.0 if table.percent else 1.0
    n_paper = max(1, table.seeds)  # 0: the paper does not say
    agg: dict = {}
    for i, meth in enumerate(methods, 1):
        key = merged_label(meth) if table.probes == "merging" else meth.key
        agg[(env_label, _row_name(i, meth.label, "ours"))] = ours.get((env_id, key), {})
        # The paper's numbers are in percent (NeuMoSync, NGM, NeuroLoRA) or as printed (FTN), ours are fractions.
        agg[(env_label, _row_name(i, meth.label, "paper"))] = {
            c.metric: (c.mean / scale, c.std / scale, n_paper) for c in table.cells
            if c.benchmark == bench.key and c.method == meth.label}
    text = format_table(title, columns, agg, env_label, fractions=not table.percent)
    if text is not None and table.probes == "masks":
        text += "\n\n" + decomposition(bench.key, methods, ours, env_id, m)
    if text is not None and table.id == "neurolora_table4":
        text += "\n\n" + _deltas(table, bench, methods, ours, env_id)
    return text


def _deltas(table, bench, methods, ours: dict, env_id: str) -> str:
    """Each ablation's single-task average minus the first row's, ours (mean over seeds) beside the paper's."""
    metric = table.columns[0][1]
    paper = {c.method: c.mean for c in table.cells if c.benchmark == bench.key and c.metric == metric}
    get = lambda meth: ours.get((env_id, merged_label(meth)), {}).get(metric, (float("nan"), 0, 0))[0]  # noqa: E731
    fmt = lambda v: "-" if v is None or v != v else f"{v:+.2f}"  # noqa: E731
    first = methods[0]
    lines = [f"Δ against {first.label} (percentage points): ours | paper", "", "| Variant | Δ ours | Δ paper |",
             "|---|---|---|"]
    for meth in methods:
        p = paper.get(meth.label)
        p0 = paper.get(first.label)
        lines.append(f"| {meth.label} | {fmt(100 * (get(meth) - get(first)))} | "
                     f"{fmt(None if p is None or p0 is None else p - p0)} |")
    return "\n".join(lines)


def decomposition(bench_key: str, methods, ours: dict, env_id: str, metric: str | None = None) -> str:
    """FTN Table 4 (:func:`clenv.app.report.decomposition`): each method's prior-task loss split into training-time
    overlap and recall error against FixedMask (LoRA-FixedMask on the style stream), ours (means over seeds) beside
    the paper's where it has them."""
    from clenv.app.report import decomposition as split

    regression = bench_key.endswith("regression")
    metric = metric or ("mse" if regression else "acc")
    fixed_key = next((m.key for m in methods if m.agent in ("fixed_mask", "lora_fixed_mask")), "fixed_mask")
    fixed = ours.get((env_id, fixed_key))
    what = {"mse": "MSE excess", "ce": "CE excess"}.get(metric, "ACC drop")
    lines = [f"Table 4 decomposition ({what} on prior tasks, against FixedMask's stored masks): ours | paper", "",
             "| Method | overlap | recall | paper overlap | paper recall |", "|---|---|---|---|---|"]
    paper = papers.FTN_TABLE4.get(bench_key, {})
    fmt = lambda v: "-" if v is None or v != v else f"{v:+.3f}"  # noqa: E731
    for meth in methods:
        overlap, recall = split(ours.get((env_id, meth.key), {}), fixed or {}, metric == "mse", metric)
        p_overlap, p_recall = paper.get(meth.label, (None, None))
        lines.append(f"| {meth.label} | {fmt(overlap)} | {fmt(recall)} | {fmt(p_overlap)} | {fmt(p_recall)} |")
    if fixed is None:
        lines.append(f"\n(overlap needs the FixedMask runs: include {fixed_key} in --agents)")
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
    p.add_argument("--fresh", action="store_true", help="run every run again, even those whose result is already "
                   "under --out (default: reuse them, so a rerun does only what is missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="STEPS",
                   help=f"a saved run checkpoints every STEPS steps under OUT/<table>/.checkpoints/ and a rerun of the "
                   f"command continues it where it stopped (default {CHECKPOINT_EVERY:,}; 0: never; --vectorise runs "
                   f"do not checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run (default 1)")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel worker processes (default: the cores "
                   "available; 1: one after another in this process)")
    p.add_argument("--vectorise", action="store_true", help="train the seeds of each method as one batched "
                   "computation (same results; for the agents docs/agents.md lists)")
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
        if args.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {args.checkpoint_every}")
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


# ---------------------------------------------------------------------------------------------- merging tables
def _train_adapter(spec: RunSpec | ResolvedRun):
    """One single-task run of the merging protocol (:func:`clenv.app.spec.run_resolved`, saved by the caller) and
    its task vector against a fresh agent of the same spec, as numpy arrays (what crosses a process boundary)."""
    from agents.adapters.merging import task_vector

    resolved = spec if isinstance(spec, ResolvedRun) else spec.resolve()
    result, agent = run_resolved(resolved)
    vector = {k: v.detach().cpu().numpy() for k, v in task_vector(agent, agent.fresh()).items()}
    return result, vector


def _train_all(runs: list, *, jobs: int, threads: int, out, on_result) -> list[tuple]:
    """``[(result, vector)]`` of :func:`_train_adapter` for every run, ``jobs`` at a time (as
    :func:`clenv.app.spec.execute_all`), each result saved under ``out`` as it finishes."""
    done: dict[int, tuple] = {}

    def finish(i, result, vector):
        path = save(runs[i], result, out) if out is not None else None
        done[i] = (result, vector)
        if on_result is not None:
            on_result(runs[i], result, path)

    if jobs == 1 or len(runs) <= 1:
        for i, r in enumerate(runs):
            finish(i, *_train_adapter(r))
    else:
        for r in runs:  # the workers make their own envs
            r.env.close()
        for i, (result, vector) in in_workers(_train_adapter, [(r.spec,) for r in runs], jobs=jobs, threads=threads):
            finish(i, result, vector)
    return [done[i] for i in range(len(runs))]


def _pick(scores_by_scale: dict[float, float]) -> float:
    """The coefficient of the best mean support accuracy (the smallest of equals)."""
    best = max(scores_by_scale.values())
    return min(k for k, v in scores_by_scale.items() if v == best)


def merged_label(method: papers.Method) -> str:
    """The row name of a method's merging summaries (apart from its single-task runs, which carry its key)."""
    return f"{method.key} (merged)"


def merge_summary(env_id: str, env_kwargs: dict, method: papers.Method, seed: int, hparams: dict, bench_key: str,
                  vectors: list[dict], individual: list, merges=("ta", "ties")):
    """The merging protocol's result for one method and seed, as a :class:`clenv.loop.RunResult` (saved like a run,
    aggregated by ``clenv report``): ``vectors[j]`` is the task vector of the adapter trained on the stream's task j
    alone (``individual[j]`` its run). In a fresh agent of the same spec on the whole stream, each is installed alone
    (``merge_indiv_acc``: its own task's held-out accuracy, the run's ``test_acc`` again) and all are merged by Task
    Arithmetic and TIES (``merge_ta_acc``, ``merge_ties_acc``: the mean over tasks of the test accuracies; ``_drop``:
    relative to the individual average; ``_scale``: the coefficient, picked from :data:`papers.TA_SCALES` /
    :data:`papers.TIES_SCALES` by the mean accuracy on the tasks' support splits, never the test split)."""
    import copy

    import torch

    from agents.adapters.merging import averaged_keys, install_merged, task_arithmetic, ties_merge
    from clenv.loop import RunResult
    from clenv.probes.base import accuracy

    resolved = RunSpec(env_id, method.agent, seed, dict(env_kwargs), dict(hparams), paper_benchmark=bench_key,
                       label=method.key).resolve()
    env = resolved.env.unwrapped
    env.reset(seed=seed)  # the single-task runs' stream seed: their support draws
    names = list(env.task_names)
    if len(vectors) != len(names):
        raise ValueError(f"{len(vectors)} task vectors for the {len(names)} tasks {names}")
    agent = resolved.build_agent()
    fresh = copy.deepcopy(agent.state_dict())
    average = averaged_keys(agent)
    tensors = [{k: torch.as_tensor(v) for k, v in vec.items()} for vec in vectors]

    def scores(merged, split, tasks):
        agent.load_state_dict(fresh)
        install_merged(agent, merged)
        return [accuracy(agent, env.test_batches(j, split=split)) for j in tasks]

    T = range(len(names))
    indiv = [scores(task_arithmetic([v], 1.0, average), "test", [j])[0] for j, v in enumerate(tensors)]
    mean_indiv = float(np.mean(indiv))
    metrics = {"merge_indiv_acc": mean_indiv, **{f"merge_indiv_acc_{n}": a for n, a in zip(names, indiv)}}
    rows, support_curves = [indiv], {}
    for kind in merges:
        grid = papers.TA_SCALES if kind == "ta" else papers.TIES_SCALES

        def merge(scale, kind=kind):
            if kind == "ta":
                return task_arithmetic(tensors, scale, average)
            return ties_merge(tensors, papers.TIES_DENSITY, scale, average)

        support = {float(c): float(np.mean(scores(merge(c), "support", T))) for c in grid}
        chosen = _pick(support)
        test = scores(merge(chosen), "test", T)
        acc = float(np.mean(test))
        metrics.update({f"merge_{kind}_acc": acc, f"merge_{kind}_drop": (acc - mean_indiv) / mean_indiv
                        if mean_indiv else float("nan"), f"merge_{kind}_scale": chosen,
                        **{f"merge_{kind}_acc_{n}": a for n, a in zip(names, test)}})
        rows.append(test)
        support_curves[kind] = np.array([[c, support[float(c)]] for c in grid])
    identity = canonical({"protocol": "merging", "env_id": env_id, "agent": resolved.identity["agent"],
                          "env": resolved.identity["env"], "hparams": resolved.identity["hparams"], "seed": int(seed),
                          "merges": list(merges), "ta_scales": list(papers.TA_SCALES),
                          "ties_scales": list(papers.TIES_SCALES), "ties_density": papers.TIES_DENSITY,
                          "selection": "support split, mean accuracy over the tasks"})
    result = RunResult(env_id=env_id, agent=merged_label(method), seed=int(seed), metrics=metrics,
                       records={"merge_test_accuracy": np.array(rows, dtype=np.float64),
                                **{f"merge_{k}_support": v for k, v in support_curves.items()}},
                       config={"env_id": env_id, "agent_name": method.agent, "env": dict(env.config),
                               "agent": dict(resolved.identity["hparams"]), "identity": identity,
                               "key": identity_key(identity), "protocol": "merging", "tasks": names,
                               "merge_rows": ["individual", *merges],
                               "individual_runs": [r.config.get("key") for r in individual]})
    resolved.env.close()
    return result


def merge_runs(table: papers.PaperTable, bench: protocols.Benchmark, plan_: dict, methods, seeds, agent_set: dict,
               *, jobs: int = 1, threads: int = 1, out=None, on_result=None) -> tuple[list, list]:
    """The merging protocol of NeuroLoRA Tables 2 and 4: for every method, seed and task of the planned stream, one
    single-task run (``tasks=(name,)``, the same batches as the task has in the whole stream) with its held-out
    accuracy, then :func:`merge_summary` per method and seed. Runs are saved under ``out`` as usual, the summaries
    under ``out/merged``. Returns (the single-task results, the summaries)."""
    from clenv.results import run_dir, save_run

    kwargs = dict(plan_["env_kwargs"])
    probe = make_env(plan_["env_id"], kwargs)
    names = list(probe.unwrapped.task_names)
    probe.close()
    merges = tuple(k for k in ("ta", "ties") if any(c[1] == f"merge_{k}_acc" for c in table.columns))
    todo, where = [], []
    for m in methods:
        hp = {**plan_["agent_kwargs"], **m.hparams, **agent_set}
        for seed in seeds:
            for name in names:
                spec = RunSpec(plan_["env_id"], m.agent, seed, {**kwargs, "tasks": [name], "num_tasks": 1}, hp,
                               None, {"heldout": True}, paper_benchmark=bench.key, label=m.key)
                todo.append(spec.resolve())
                where.append((m, seed))
    trained = _train_all(todo, jobs=jobs, threads=threads, out=out, on_result=on_result)
    summaries = []
    for m in methods:
        hp = {**plan_["agent_kwargs"], **m.hparams, **agent_set}
        for seed in seeds:
            mine = [rv for (mm, s), rv in zip(where, trained) if mm is m and s == seed]
            summary = merge_summary(plan_["env_id"], kwargs, m, seed, hp, bench.key, [v for _, v in mine],
                                    [r for r, _ in mine], merges)
            if out is not None:
                save_run(summary, run_dir(Path(out) / "merged", plan_["env_id"], m.agent, seed,
                                          timestamp=summary.config["key"]))
            summaries.append(summary)
    return [r for r, _ in trained], summaries


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
        task_names = None
        if any(c[1] in papers.FINAL_TASK_METRICS for c in table.columns):  # the per-task columns' names
            probe = make_env(p["env_id"], p["env_kwargs"])
            task_names = list(getattr(probe.unwrapped, "task_names", ()) or ())
            probe.close()
        first = next(metric for b, metric, _ in table.columns if b == bench.key)

        def done(r, result, path) -> None:
            value = result.metrics.get(first)
            if table.probes == "merging":
                said = f"{r.spec.env_kwargs['tasks'][0]} alone: test acc {result.metrics['test_acc'] * 100:.2f}%"
            elif value is not None and not table.percent:
                said = f"{first} {value:.4f}"
            else:
                said = f"avg online acc {result.average_accuracy * 100:.2f}%"
            print(f"  {r.spec.name} seed {r.spec.seed}: {said} ({result.wall_time:.1f} s)", flush=True)

        if table.probes == "merging":
            print("  merging protocol: each task trained alone (tasks=(name,)), "
                  + ("the adapters merged by Task Arithmetic and TIES, coefficients picked on the support split"
                     if len(table.columns) > 1 else "the single-task accuracies averaged"))
            _, runs = merge_runs(table, bench, p, methods, seeds, agent_set, jobs=args.jobs, threads=args.threads,
                                 out=out_root, on_result=done)
        else:
            said, todo, label_of = None, [], {}
            for m in methods:
                resolved, text = _specs(table, bench, p, m, seeds, agent_set, args.probe_every)
                label_of.update((id(r), m.label) for r in resolved)
                if text is not None and text != said:
                    print(f"  {text}" if said is None else f"  {m.label}: {text}")
                    said = text
                print(f"  {m.label} ({m.key}): hparams from {resolved[0].hparam_source}")
                todo += resolved
            diverged: list[str] = []

            def failed(r, message) -> None:  # the table goes on without it; the note says why its cell is empty
                diverged.append(f"{label_of.get(id(r), r.spec.name)} seed {r.spec.seed} diverged: {message}")
                print(f"  {diverged[-1]}", flush=True)

            runs = [result for result, _ in execute_all(todo, jobs=args.jobs, out=out_root,
                                                        progress=not args.no_progress, threads=args.threads,
                                                        on_result=done, reuse=not args.fresh,
                                                        vectorise=args.vectorise, on_diverged=failed,
                                                        checkpoint_every=None if args.vectorise or out_root is None
                                                        else args.checkpoint_every or None) if result is not None]
            p["notes"] = [*p["notes"], *diverged]
        text = comparison(table, bench, p["env_id"], methods, runs, task_names)
        notes = "".join(f"\n- {n}" for n in p["notes"])
        block = (text or f"(no metric of {table.id} was measured)") + (f"\n{notes}" if notes else "")
        paper_seeds = f"{table.seeds} seeds" if table.seeds else "seeds not stated"
        block += f"\n\nours: seeds {seeds}; paper: mean (spread) as printed, {paper_seeds}"
        parts.append(block)
        print("\n" + block, flush=True)
    if out_root is not None:
        atomic_write_bytes(out_root / "comparison.md", ("\n\n".join(parts) + "\n").encode())
        print(f"\nruns and comparison.md under {out_root}/ (`clenv report {out_root}` aggregates the runs)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(reproduce_main())
