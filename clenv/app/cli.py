"""The ``clenv`` command: ``list``, ``run``, ``compare``, ``sweep``, ``report`` and ``reproduce``.

``run`` and ``compare`` build :class:`clenv.app.spec.RunSpec` objects and :func:`~clenv.app.spec.execute` them, as
``sweep`` and ``reproduce`` do; every input is checked before the first run starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from clenv.app.spec import (RunSpec, UsageError, agent_provider, check_agent, check_out, default_jobs, execute,
                            execute_all, parse_assignments, parse_seeds)

__all__ = ["main", "build_parser"]

#: The summary every run and compare prints (the papers' main plasticity columns).
_SUMMARY = (("avg_online_acc", "avg online acc"), ("online_acc_last25", "last 25% of tasks"),
            ("online_acc_last10", "last 10% of tasks"), ("final_task_online_acc", "last task"))


_RL_SUMMARY = (("avg_task_return", "mean return, all tasks"), ("task_return_last25", "last 25% of tasks"),
               ("task_return_last10", "last 10% of tasks"))


def _summary(results: list) -> str:
    """Mean (std) over seeds per agent, through the report's aggregation and table format; RL streams show the
    per-task mean episode return instead of accuracy."""
    from clenv.app.report import aggregate, format_table

    env = str(results[0].env_id)
    if "avg_task_return" in results[0].metrics:
        return format_table("Episode return", _RL_SUMMARY, aggregate(results), env) or ""
    return format_table("Online accuracy (%)", _SUMMARY, aggregate(results), env) or ""


def _is_online_accuracy(name: str) -> bool:
    return name in ("avg_online_acc", "final_task_online_acc") or name.startswith("online_acc_last")


def _print_table(header, rows, file=None):
    file = file or sys.stdout
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line, file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)), file=file)


def cmd_list(args) -> int:
    import clenv

    if args.agents:
        for name in agent_provider().available():
            print(name)
        return 0
    rows = []
    for d in clenv.ENV_TABLE:
        k = d.kwargs
        proto = ", ".join(f"{key}={k[key]}" for key in ("num_tasks", "samples_per_task", "classes_per_task",
                                                         "epochs_per_task", "batch_size", "switch_every")
                          if key in k)
        rows.append([d.id, d.description, proto, d.data])
    _print_table(["id", "task", "protocol (paper defaults)", "data from"], rows)
    return 0


def _common(args) -> tuple[dict, dict, Path | None, dict | None]:
    """Threads, kwargs, evaluation and the results root of a run / compare (``--out`` is checked by :func:`_specs`)."""
    import torch

    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.total_steps is not None and args.total_steps < 1:
        raise UsageError(f"--total-steps must be >= 1, got {args.total_steps}")
    torch.set_num_threads(args.threads)
    env_kwargs = parse_assignments(args.env_set, "--env-set")
    agent_kwargs = parse_assignments(args.agent_set, "--agent-set")
    evaluation = parse_assignments(args.eval_set, "--eval-set") if (args.eval_set or args.evaluate) else None
    if evaluation is not None:
        import clenv

        try:
            clenv.Evaluation(**evaluation)
        except (TypeError, ValueError) as err:
            raise UsageError(f"--eval-set: {err}") from None
    return env_kwargs, agent_kwargs, None if args.no_save else Path(args.out), evaluation


def _specs(args, names: list[str], seeds: list[int]) -> list:
    """The resolved runs of a run / compare, every one checked (names, kwargs, env) before the first starts."""
    env_kwargs, agent_kwargs, out, evaluation = _common(args)
    for name in names:
        check_agent(name)
    runs = [RunSpec(args.env, name, seed, env_kwargs, agent_kwargs, args.total_steps, evaluation).resolve()
            for name in names for seed in seeds]
    return runs, None if out is None else check_out(out)


def cmd_run(args) -> int:
    (resolved,), out = _specs(args, [args.agent], parse_seeds([args.seed], "--seed"))
    result, path = execute(resolved, out=out, progress=not args.no_progress)
    print(f"{args.agent} on {args.env}, seed {args.seed}: {result.steps} steps, {len(result.task_accuracy)} tasks, "
          f"{result.num_task_switches} task switches, {result.wall_time:.1f} s")
    tasks = result.task_accuracy
    show = list(range(len(tasks))) if len(tasks) <= 12 else [*range(6), *range(len(tasks) - 6, len(tasks))]
    if "avg_task_return" in result.metrics:
        _print_table(["task", "mean episode return"], [[str(result.task_ids[i]), f"{result.task_return[i]:.1f}"]
                                                       for i in show])
    else:
        _print_table(["task", "online acc %"], [[str(result.task_ids[i]), f"{tasks[i] * 100:.2f}"] for i in show])
    print()
    print(_summary([result]))
    rl = "avg_task_return" in result.metrics
    for key, value in sorted(result.metrics.items()):
        # An RL stream's per-step reward is not an accuracy (CartPole's is always 1): its online-accuracy
        # metrics say nothing, so RL runs list the return metrics only.
        if isinstance(value, (int, float)) and not (rl and _is_online_accuracy(key)):
            print(f"  {key} = {value:.4g}")
    if path is not None:
        print(f"results: {path}")
    return 0


def cmd_compare(args) -> int:
    names = [a.strip() for a in args.agents.split(",") if a.strip()]
    if not names:
        raise UsageError("--agents needs at least one name")
    seeds = parse_seeds(args.seeds)
    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    runs, out = _specs(args, names, seeds)

    def said(resolved, result, path) -> None:
        s = resolved.spec
        m = result.metrics
        if "avg_task_return" in m:
            print(f"  {s.agent} seed {s.seed}: mean return {m['avg_task_return']:.1f}, last 25% tasks "
                  f"{m['task_return_last25']:.1f} ({result.wall_time:.1f} s)", flush=True)
            return
        print(f"  {s.agent} seed {s.seed}: avg online acc {result.average_accuracy * 100:.2f}%, "
              f"last 25% tasks {result.last_fraction_accuracy(0.25) * 100:.2f}% ({result.wall_time:.1f} s)",
              flush=True)

    diverged: list[str] = []

    def failed(resolved, message) -> None:  # the compare goes on; the summary leaves the run out and says so
        diverged.append(f"{resolved.spec.agent} seed {resolved.spec.seed} diverged: {message}")
        print(f"  {diverged[-1]}", flush=True)

    t0 = time.perf_counter()
    results = [r for r, _ in execute_all(runs, jobs=jobs, out=out, progress=not args.no_progress,
                                         threads=args.threads, on_result=said, vectorise=args.vectorise,
                                         on_diverged=failed) if r is not None]
    print(f"\nseeds {seeds}, {sum(r.wall_time for r in results):.1f} s of run time, "
          f"{time.perf_counter() - t0:.1f} s wall with {min(jobs, len(runs))} process(es)")
    if results:
        print(_summary(results))
    for line in diverged:
        print(f"left out: {line}")
    if out is not None:
        print(f"results under {out}/ (aggregate with `clenv report {out}/...`)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clenv", description="Continual-learning task streams as Gymnasium envs.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list env ids with their protocol and data source")
    ls.add_argument("--agents", action="store_true", help="list agent names instead")
    ls.set_defaults(func=cmd_list)

    def common(sp):
        sp.add_argument("--env", required=True, help="env id, e.g. RandomLabelDigits-v0")
        sp.add_argument("--env-set", action="append", metavar="K=V", help="env kwarg (repeatable)")
        sp.add_argument("--agent-set", action="append", metavar="K=V", help="agent hyperparameter (repeatable)")
        sp.add_argument("--total-steps", type=int, default=None, help="stop after this many steps")
        sp.add_argument("--out", default="runs", help="results root (default: runs/)")
        sp.add_argument("--no-save", action="store_true", help="do not write result files")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--evaluate", action="store_true", help="attach clenv.Evaluation with its defaults")
        sp.add_argument("--eval-set", action="append", metavar="K=V", help="clenv.Evaluation option (repeatable)")
        sp.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the papers' small networks run slower with more, "
                             "and much slower when cores are shared)")

    r = sub.add_parser("run", help="run one agent on one stream")
    common(r)
    r.add_argument("--agent", required=True, help="agent name (`clenv list --agents`)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="run several agents on one stream and print their table side by side")
    common(c)
    c.add_argument("--agents", required=True, help="comma-separated agent names, e.g. base,scratch")
    c.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    c.add_argument("--jobs", type=int, default=None, help="runs in parallel worker processes, one torch thread each "
                   "(default: the cores available; 1: one after another in this process)")
    c.add_argument("--vectorise", action="store_true", help="train the seeds of each agent as one batched "
                   "computation (same results; agents that support it: docs/agents.md)")
    c.set_defaults(func=cmd_compare)

    # These three have parsers of their own; main() hands them their arguments before this parser sees them.
    sub.add_parser("sweep", help="methods x grid x seeds x streams on Ray (or sequentially), resumable")
    sub.add_parser("report", help="aggregate run folders into tables and figures")
    sub.add_parser("reproduce", help="run a paper table's protocol and print ours next to the paper's "
                   "(`clenv reproduce --list`)")
    return p


def _own_parser(command: str):
    if command == "sweep":
        from clenv.app.sweep import sweep_main

        return sweep_main
    if command == "report":
        from clenv.app.report import report_main

        return report_main
    from clenv.app.reproduce import reproduce_main

    return reproduce_main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path:  # a user's agent module in the current directory, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    try:
        if argv[:1] and argv[0] in ("sweep", "report", "reproduce"):
            return int(_own_parser(argv[0])(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"clenv: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # a missing dataset: the message says where we looked and the fix
        print(f"clenv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clenv: interrupted (finished runs are saved and checkpointed ones continue from their last "
              "checkpoint: rerun the command to go on)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clenv list | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
