"""Last-25%-task online accuracy of plasticity baselines on a reduced Random-Label Fashion-MNIST protocol.

The paper's Figure 2 picture (NeuMoSync): on random-label memorisation the base learner's per-task accuracy decays as
tasks accumulate, while plasticity methods (L2Init, CBP, ReDo, CReLU, ...) hold it. The paper's protocol (50 tasks x
1,200 samples x 200 epochs, batch 16) is far beyond one CPU core, so this script runs a reduced one and says so:

    RandomLabelFashionMNIST-v0, num_tasks=8, samples_per_task=256, epochs_per_task=100, batch_size=16, no
    augmentation (1,600 steps per task, 12,800 steps per run); MLP 100-100; each agent with its paper defaults
    (Tables 7/10), except ReDo's recycling period, scaled from 30,000 steps (two Random-Label MNIST tasks) to two
    tasks here. (With 20 epochs per task the SGD-based learners barely start memorising: ~13% on the first task.)

Usage: ``python examples/plasticity_table.py [--seeds 3] [--tasks 8] [--agents base,l2init,...]``; ``base_adam`` is
the base learner with Adam, lr 1e-3 (the optimiser of the CBP, ReDo and CReLU rows), to separate the optimiser's
effect from the method's. Prints a
markdown table of mean (std) over seeds of the last-25% and all-task average online accuracy, and of the first task.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv

AGENTS = ["base", "l2init", "cbp", "redo", "crelu", "prelu", "shrink_perturb"]


def run_one(name: str, seed: int, args) -> tuple[float, float, float]:
    env = gym.make("RandomLabelFashionMNIST-v0", num_tasks=args.tasks, samples_per_task=args.samples,
                   epochs_per_task=args.epochs, batch_size=16, augment=False)
    steps_per_task = args.epochs * (args.samples // 16)
    hp = {"seed": seed}
    if name == "base_adam":  # the base learner with the Adam settings CBP, ReDo and CReLU use (Table 7)
        name, hp = "base", {**hp, "optimizer": "adam", "lr": 1e-3}
    if name == "redo":
        hp["reset_period"] = 2 * steps_per_task
    agent = agents.make(name, env, **hp)
    res = clenv.run(env, agent, seed=seed, progress=False)
    return res.last_fraction_accuracy(0.25), res.average_accuracy, res.task_accuracy[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--agents", default=",".join(AGENTS))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.agents.split(","):
        t0 = time.perf_counter()
        vals = np.array([run_one(name, s, args) for s in range(args.seeds)])
        mean, std = vals.mean(0) * 100, vals.std(0) * 100
        rows.append((name, mean, std, (time.perf_counter() - t0) / args.seeds))
        print(f"{name}: last25 {mean[0]:.2f} ({std[0]:.2f}) all {mean[1]:.2f} ({std[1]:.2f}) "
              f"first task {mean[2]:.2f}  [{rows[-1][3]:.0f} s/run]", flush=True)
    print(f"\nRandomLabelFashionMNIST-v0, {args.tasks} tasks x {args.samples} samples x {args.epochs} epochs, "
          f"batch 16, no augmentation, {args.seeds} seeds; online accuracy %, mean (std)\n")
    print("| agent | last 25% of tasks | all tasks | first task |")
    print("|---|---|---|---|")
    for name, mean, std, _ in rows:
        print(f"| {name} | {mean[0]:.2f} ({std[0]:.2f}) | {mean[1]:.2f} ({std[1]:.2f}) | {mean[2]:.2f} ({std[2]:.2f}) |")


if __name__ == "__main__":
    main()
