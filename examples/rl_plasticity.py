"""The RL plasticity table: tianshou DQN against DQN + ReDo / CBP / Shrink & Perturb on a revisiting stream.

    .venv/bin/python examples/rl_plasticity.py --out docs/figures/rl_plasticity.json      # 4 methods x 5 seeds
    .venv/bin/python examples/rl_plasticity.py --out runs.json --table-only              # table + figure again

Every (method, seed) run goes through ``clenv.run`` with :class:`agents.rl.diagnostics.RLDiagnostics`, and is
appended to ``--out`` as soon as it ends (a rerun skips the runs already there). The table gives mean (std) over
seeds of the return on the last quarter of tasks, on the first visit of each distinct task, on revisits, and the
change from first visit to revisit (``RunResult.metrics``: ``revisit_return_change``,
``last_visit_return_change``); the figure (``--figure``) the per-task return curves and the Q network's dormant
ratio per task. The settings are the protocol's (docs/rl.md); interventions use their documented defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv
from agents.rl.diagnostics import RLDiagnostics

#: The protocol's DQN: a 32-32 ReLU Q network (small, so that lost units matter), a gradient step every 4 env steps
#: after 500 stored, exploration decayed once over the first 2,000 steps; the rest are each agent's defaults
#: (sb3_dqn is SB3's DQN: no double Q, Huber loss, gradient clipping; tianshou_dqn: double Q, MSE).
DQN = {"tianshou_dqn": dict(hidden=(32, 32), train_every=4, start_steps=500, eps_decay_steps=2000),
       "sb3_dqn": dict(hidden=(32, 32), train_freq=4, learning_starts=500, eps_decay_steps=2000)}
METHODS = {
    "dqn": {},
    "dqn+redo": {"intervention": "redo"},
    "dqn+cbp": {"intervention": "cbp"},
    "dqn+shrink_perturb": {"intervention": "shrink_perturb"},
}
COLUMNS = (("task_return_last25", "last 25% of tasks"), ("first_visit_return", "first visits"),
           ("revisit_return", "revisits"), ("revisit_return_change", "revisit - first"),
           ("last_visit_return_change", "last visit - first"), ("dormant_ratio", "dormant (end)"))


def run_one(env_id: str, env_kwargs: dict, method: str, seed: int, agent_name: str = "tianshou_dqn",
            agent_kwargs: dict | None = None) -> dict:
    env = gym.make(env_id, **env_kwargs)
    agent = agents.make(agent_name, env, seed=seed, **{**DQN[agent_name], **(agent_kwargs or {})}, **METHODS[method])
    t = time.perf_counter()
    result = clenv.run(env, agent, seed=seed, progress=False, callbacks=[RLDiagnostics(samples=1000)])
    return {"agent": agent_name, "agent_kwargs": agent_kwargs or {}, "method": method, "seed": seed, "env": env_id,
            "env_kwargs": env_kwargs,
            "wall_time": time.perf_counter() - t, "task_return": result.task_return,
            "metrics": {k: float(v) for k, v in result.metrics.items() if "online" not in k},
            "revisits": result.records.get("revisits", []), "diagnostics": result.records.get("diagnostics", []),
            "episodes": [list(e) for e in result.records["episodes"]],
            "intervention_stats": agent.intervention_stats}


def _same(run: dict, args, env_kwargs: dict, agent_kwargs: dict) -> bool:
    return (run.get("agent", "tianshou_dqn") == args.agent and run["env"] == args.env
            and run["env_kwargs"] == env_kwargs and run.get("agent_kwargs", {}) == agent_kwargs)


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(runs: list[dict]) -> str:
    lines = ["method".ljust(20) + "".join(h.rjust(20) for _, h in COLUMNS) + "  seeds"]
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        if not rows:
            continue
        cells = []
        for key, _ in COLUMNS:
            v = np.array([r["metrics"].get(key, np.nan) for r in rows], dtype=float)
            fmt = "{:.3f} ({:.3f})" if key == "dormant_ratio" else "{:.1f} ({:.1f})"
            cells.append(fmt.format(np.nanmean(v), np.nanstd(v)).rjust(20))
        lines.append(method.ljust(20) + "".join(cells) + f"  {len(rows)}")
    return "\n".join(lines)


def figure(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        if not rows:
            continue
        ret = np.array([r["task_return"] for r in rows], dtype=float)
        x = np.arange(ret.shape[1])
        line, = ax.plot(x, np.nanmean(ret, 0), marker="o", label=f"{method} ({len(rows)} seeds)")
        ax.fill_between(x, np.nanmean(ret, 0) - np.nanstd(ret, 0), np.nanmean(ret, 0) + np.nanstd(ret, 0),
                        color=line.get_color(), alpha=0.15)
        dorm = np.array([[d["dormant_ratio"] for d in r["diagnostics"] if d["network"] == "q"] for r in rows])
        bx.plot(np.arange(dorm.shape[1]), dorm.mean(0), marker="o", color=line.get_color(), label=method)
    env = runs[0]["env"]
    ax.set(xlabel="task (stream order)", ylabel="mean episode return (mean ± std over seeds)", title=env)
    bx.set(xlabel="task (stream order)", ylabel="Q network dormant ratio at task end (tau = 0.1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="PermutedCartPole-v0")
    ap.add_argument("--agent", choices=list(DQN), default="tianshou_dqn")
    ap.add_argument("--env-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an env kwarg (JSON value), e.g. steps_per_task=6000")
    ap.add_argument("--agent-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a DQN hyperparameter over the protocol's (JSON value), e.g. target_update_interval=800")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one run each (appended, resumable)")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    env_kwargs, agent_kwargs = {}, {}
    for flag, items, into in (("--env-set", args.env_set, env_kwargs), ("--agent-set", args.agent_set, agent_kwargs)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"{flag} needs KEY=VALUE, got {item!r}")
            into[key] = json.loads(value)
    runs = load(args.out)
    if not args.table_only:
        # Seeds outermost: a sweep cut short still has every method at the seeds it reached.
        for seed in args.seeds:
            for method in args.methods:
                if any(_same(r, args, env_kwargs, agent_kwargs) and r["method"] == method and r["seed"] == seed
                       for r in runs):
                    continue
                run = run_one(args.env, env_kwargs, method, seed, args.agent, agent_kwargs)
                runs.append(run)
                with args.out.open("a") as f:
                    f.write(json.dumps(run) + "\n")
                print(f"{method:20s} seed {seed}: " + " ".join(f"{x:5.0f}" for x in run["task_return"])
                      + f"  ({run['wall_time']:.0f} s, {run['intervention_stats']})", flush=True)
    runs = [r for r in runs if _same(r, args, env_kwargs, agent_kwargs)]
    print(f"\n{args.agent} {agent_kwargs or ''} on {args.env} {env_kwargs or '(registered defaults)'}: mean (std) "
          "over seeds\n"
          + table(runs))
    if args.figure is not None and runs:
        figure(runs, args.figure)
    return runs


if __name__ == "__main__":
    main()
