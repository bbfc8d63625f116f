"""The ``clenv`` command: ``list``, ``run``, ``compare``, ``sweep``, ``report`` and ``reproduce``.

Agents are found through the ``clenv.agents`` entry-point group (the bundled ``agents`` package declares itself
there), so this module never imports ``agents`` by name.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "parse_assignments", "agent_provider"]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


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
        except (ValueError, SyntaxError, TypeError):
            pass
    return text


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"{flag} expects key=value with a Python identifier as key, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def agent_provider():
    """The module that provides ``make(name, env, **hp)`` and ``available()``, from the ``clenv.agents`` group."""
    eps = list(entry_points(group="clenv.agents"))
    if not eps:
        raise CliError("no agent provider is installed (entry-point group 'clenv.agents'); reinstall clenv with "
                       "`pip install -e .`")
    return eps[0].load()


def _make_env(env_id: str, env_kwargs: dict):
    import gymnasium as gym

    import clenv  # noqa: F401  (registers the ids)

    if env_id.split(":")[-1] not in gym.registry:
        close = [i for i in clenv.env_ids() if env_id.lower()[:6] in i.lower()]
        raise CliError(f"unknown env id {env_id!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                       + " (`clenv list` shows every id)")
    try:
        return gym.make(env_id, **env_kwargs)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None


def _run_one(env_id, agent_name, seed, env_kwargs, agent_kwargs, out_root, progress, total_steps, evaluation):
    import clenv
    from clenv.results import run_dir, save_run

    provider = agent_provider()
    env = _make_env(env_id, env_kwargs)
    try:
        agent = provider.make(agent_name, env, **agent_kwargs)
    except (TypeError, ValueError) as err:
        raise CliError(str(err)) from None
    ev = None
    if evaluation:
        ev = clenv.Evaluation(**evaluation)
    result = clenv.run(env, agent, seed=seed, progress=progress, total_steps=total_steps, evaluation=ev,
                       desc=f"{agent_name} seed {seed}")
    result.config.update({"env_id": env_id, "agent_name": agent_name, "env_kwargs": env_kwargs,
                          "agent_kwargs": agent_kwargs})
    path = save_run(result, run_dir(out_root, env_id, agent_name, seed)) if out_root is not None else None
    return result, path


#: The summary every run and compare prints (the papers' main plasticity columns).
_SUMMARY = (("avg_online_acc", "avg online acc"), ("online_acc_last25", "last 25% of tasks"),
            ("online_acc_last10", "last 10% of tasks"), ("final_task_online_acc", "last task"))


_RL_SUMMARY = (("avg_task_return", "mean return, all tasks"), ("task_return_last25", "last 25% of tasks"),
               ("task_return_last10", "last 10% of tasks"))


def _summary(results: list) -> str:
    """Mean (std) over seeds per agent, through the report's aggregation and table format; RL streams show the
    per-task mean episode return instead of accuracy."""
    from clenv.report import aggregate, format_table

    env = str(results[0].env_id)
    if "avg_task_return" in results[0].metrics:
        return format_table("Episode return", _RL_SUMMARY, aggregate(results), env) or ""
    return format_table("Online accuracy (%)", _SUMMARY, aggregate(results), env) or ""


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


def _common(args):
    import torch

    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    env_kwargs = parse_assignments(args.env_set, "--env-set")
    agent_kwargs = parse_assignments(args.agent_set, "--agent-set")
    out = None if args.no_save else Path(args.out)
    evaluation = parse_assignments(args.eval_set, "--eval-set") if args.eval_set else ({} if args.evaluate else None)
    return env_kwargs, agent_kwargs, out, evaluation


def cmd_run(args) -> int:
    env_kwargs, agent_kwargs, out, evaluation = _common(args)
    result, path = _run_one(args.env, args.agent, args.seed, env_kwargs, agent_kwargs, out, not args.no_progress,
                            args.total_steps, evaluation)
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
    for key, value in sorted(result.metrics.items()):
        if isinstance(value, (int, float)):
            print(f"  {key} = {value:.4g}")
    if path is not None:
        print(f"results: {path}")
    return 0


def cmd_compare(args) -> int:
    env_kwargs, agent_kwargs, out, evaluation = _common(args)
    names = [a.strip() for a in args.agents.split(",") if a.strip()]
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if len(names) < 1 or not seeds:
        raise CliError("--agents needs at least one name and --seeds at least one seed")
    results: list = []
    for name in names:
        for seed in seeds:
            result, _ = _run_one(args.env, name, seed, env_kwargs, agent_kwargs, out, not args.no_progress,
                                 args.total_steps, evaluation)
            results.append(result)
            print(f"  {name} seed {seed}: avg online acc {result.average_accuracy * 100:.2f}%, last 25% tasks "
                  f"{result.last_fraction_accuracy(0.25) * 100:.2f}% ({result.wall_time:.1f} s)", flush=True)
    print(f"\nseeds {seeds}, {sum(r.wall_time for r in results):.1f} s in all")
    print(_summary(results))
    if out is not None:
        print(f"results under {out}/ (aggregate with `clenv report {out}/...`)")
    return 0


def cmd_sweep(args) -> int:
    from clenv.sweep import sweep_main

    return sweep_main(args.rest)


def cmd_report(args) -> int:
    from clenv.report import report_main

    return report_main(args.rest)


def cmd_reproduce(args) -> int:
    from clenv.reproduce import reproduce_main

    return reproduce_main(args.rest)


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
    c.set_defaults(func=cmd_compare)

    sw = sub.add_parser("sweep", help="methods x grid x seeds x streams on Ray (or sequentially), resumable",
                        add_help=False)
    sw.add_argument("rest", nargs=argparse.REMAINDER)
    sw.set_defaults(func=cmd_sweep)

    rep = sub.add_parser("report", help="aggregate run folders into tables and figures", add_help=False)
    rep.add_argument("rest", nargs=argparse.REMAINDER)
    rep.set_defaults(func=cmd_report)

    rp = sub.add_parser("reproduce", help="run a paper table's protocol and print ours next to the paper's "
                        "(`clenv reproduce --list`)", add_help=False)
    rp.add_argument("rest", nargs=argparse.REMAINDER)
    rp.set_defaults(func=cmd_reproduce)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:  # its own parser: argparse's REMAINDER drops a leading --option
        from clenv.sweep import sweep_main

        return sweep_main(argv[1:])
    if argv[:1] == ["reproduce"]:  # likewise (`clenv reproduce --list`)
        from clenv.reproduce import reproduce_main

        return reproduce_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"clenv: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # a missing dataset: the message says where we looked and the fix
        print(f"clenv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clenv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
