"""Slowdown of a run with every probe of clenv.Evaluation on, against the same run with no evaluation.

Both runs use the same env, agent and seed; the probed run uses ``Evaluation.all()`` (held-out accuracy, the full
accuracy matrix, LCA / FKT / BKT probes, stability evaluation every ``--stability-every`` steps with the NGM metrics,
plasticity diagnostics at task ends). Each configuration is timed ``--repeats`` times, alternating, and the minimum
is kept. The last line is ``ratio=<time with probes / time without>``.

    python benchmarks/probe_overhead.py [--env RandomLabelFashionMNIST-v0] [--tasks 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

import agents
import clenv


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RandomLabelFashionMNIST-v0")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--stability-every", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    env = gym.make(a.env, num_tasks=a.tasks, samples_per_task=a.samples, epochs_per_task=a.epochs)

    def once(evaluation):
        agent = agents.make("base", env, optimizer="adam", lr=1e-3)
        t0 = time.perf_counter()
        r = clenv.run(env, agent, seed=0, progress=False, evaluation=evaluation)
        return time.perf_counter() - t0, r

    once(None)  # warm-up: dataset load, first-call overheads
    plain, probed, result = [], [], None
    for _ in range(a.repeats):
        plain.append(once(None)[0])
        t, result = once(clenv.Evaluation.all(stability_every=a.stability_every))
        probed.append(t)
    u = env.unwrapped
    print(f"env={a.env} tasks={a.tasks} steps/task={u.steps_per_task(0)} gamma={result.metrics['gamma']:.0f} "
          f"stability_every={a.stability_every} metrics={len(result.metrics)} threads={a.threads}")
    print(f"without probes: {min(plain):.3f}s  with all probes: {min(probed):.3f}s  "
          f"(inside probes {result.metrics['probe_time_s']:.3f}s; outside them "
          f"{min(probed) - min(plain) - result.metrics['probe_time_s']:+.3f}s)")
    ratio = min(probed) / min(plain)
    print(f"ratio={ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
