"""NeuMoSync vs the base learner on the Random-Label MNIST protocol, run on Fashion-MNIST, reduced to minutes on CPU.

Protocol (reduced from Table 5): ``RandomLabelFashionMNIST-v0`` with 8 tasks of 256 images whose labels are drawn
uniformly at random per task, 30 epochs per task, batch 16, the registry's augmentation; MLP 100-100 MainNetwork.
Each agent uses its paper optimiser for Random-Label MNIST (Table 7): base SGD lr 1e-2, NeuMoSync Adam lr 1e-3,
e = 128. The score is the average online (test-then-train) accuracy over the last 25 % of tasks, as in the paper's
tables (paper, full protocol: NeuMoSync 58.67 vs 17-36 for the baselines).

    python examples/neumosync_vs_base.py [--tasks 8] [--samples 256] [--epochs 30] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--agents", nargs="+", default=["base", "neumosync"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    env = gym.make("RandomLabelFashionMNIST-v0", num_tasks=args.tasks, samples_per_task=args.samples,
                   epochs_per_task=args.epochs)
    print(f"RandomLabelFashionMNIST-v0: {args.tasks} tasks x {args.samples} samples x {args.epochs} epochs "
          f"({env.unwrapped.total_steps} steps)")
    o = agents.make("neumosync", env).parameter_overhead()
    print(f"NeuMoSync overhead (Table 18): {o['overhead']:,} params over a {o['base']:,}-param MainNetwork "
          f"= {100 * o['share']:.2f}% of the whole")
    scores: dict[str, list[float]] = {}
    for name in args.agents:
        for seed in args.seeds:
            agent = agents.make(name, env, seed=seed)
            t = time.perf_counter()
            result = clenv.run(env, agent, seed=seed, progress=False)
            secs = time.perf_counter() - t
            last = result.last_fraction_accuracy(0.25)
            scores.setdefault(name, []).append(last)
            tasks = " ".join(f"{100 * a:5.1f}" for a in result.task_accuracy)
            print(f"{name:>10} seed {seed}: last-25% {100 * last:5.2f}  all {100 * result.average_accuracy:5.2f}  "
                  f"[{tasks}]  {secs:6.1f}s")
    for name, s in scores.items():
        print(f"{name:>10}: last-25% online accuracy {100 * np.mean(s):.2f} ({100 * np.std(s):.2f}) over "
              f"seeds {args.seeds}")
    return scores


if __name__ == "__main__":
    main()
