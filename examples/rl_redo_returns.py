"""Per-task mean episode return of tianshou DQN on ContinualCartPole, with and without ReDo, over seeds.

    .venv/bin/python examples/rl_redo_returns.py --seeds 0 1 2 --num-tasks 4 --steps-per-task 5000

Prints one row per (method, seed) and the mean (std) over seeds per task; ``--json`` writes the numbers. The DQN
settings (a gradient step every 2 env steps, exploration decayed over the first 2,000 steps) learn CartPole within
the first task; ``tests/test_rl_examples.py`` checks that the returns clear a random policy's.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv

METHODS = {
    "dqn": {},
    "dqn+redo": {"intervention": "redo", "intervention_kwargs": {"tau": 0.1, "every": 250}},
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--num-tasks", type=int, default=4)
    ap.add_argument("--steps-per-task", type=int, default=5000)
    ap.add_argument("--train-every", type=int, default=2)
    ap.add_argument("--eps-decay-steps", type=int, default=2000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for name, extra in METHODS.items():
        per_seed = []
        for seed in args.seeds:
            env = gym.make("ContinualCartPole-v0", num_tasks=args.num_tasks, steps_per_task=args.steps_per_task)
            agent = agents.make("tianshou_dqn", env, seed=seed, train_every=args.train_every,
                                eps_decay_steps=args.eps_decay_steps, **extra)
            t = time.perf_counter()
            r = clenv.run(env, agent, seed=seed, progress=False)
            per_seed.append(r.task_return)
            print(f"{name:10s} seed {seed}: " + " ".join(f"{x:7.1f}" for x in r.task_return)
                  + f"   ({time.perf_counter() - t:.0f} s, {agent.intervention_stats})", flush=True)
        rows[name] = per_seed
    print("\nmean (std) episode return per task over seeds", args.seeds)
    for name, per_seed in rows.items():
        a = np.asarray(per_seed)
        cells = " ".join(f"{m:6.1f} ({s:5.1f})" for m, s in zip(a.mean(0), a.std(0)))
        print(f"{name:10s} {cells}   all tasks {a.mean():.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "task_return": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
