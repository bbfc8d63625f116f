"""Wall time of N seeds trained as one batched computation (``clenv.run(env, agent, seeds=[...])``) against the same N
runs one after another (``clenv.run(env, agent, seed=s)`` per seed), for each agent given.

The work is the same (the tests check bit-identity on CPU; here the per-step rewards of both are compared too): the
Fashion-MNIST MLP of the Random-Label protocol (784-100-100-10, batch 16) on a reduced stream. The two are timed
alternately ``--repeats`` times in one process, keeping each one's minimum; one torch thread (``--threads``). Lines
give ms per step of one seed's run, the sequential total and the vectorised time; the last line is
``ratio=<vectorised time / sequential time>`` for the first agent (below 1: vectorising saves; 1/N would be free
seeds). ``--device cuda`` runs both on a GPU with synchronised timing.

    python benchmarks/vectorised_seeds.py [--agents base,cbp] [--seeds 8] [--tasks 2] [--samples 512] [--epochs 4]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RandomLabelFashionMNIST-v0")
    p.add_argument("--agents", default="base,l2init,cbp")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    kw = dict(num_tasks=a.tasks, samples_per_task=a.samples, epochs_per_task=a.epochs, augment=False,
              device=a.device)
    seeds = list(range(a.seeds))
    ratios = {}
    for name in a.agents.split(","):
        def sequential():
            out = []
            for s in seeds:
                env = gym.make(a.env, **kw)
                out.append(clenv.run(env, agents.make(name, env), seed=s, progress=False))
            return out

        def vectorised():
            env = gym.make(a.env, **kw)
            return clenv.run(env, agents.make(name, env), seeds=seeds, progress=False)

        vectorised(), sequential()  # warm-up: datasets loaded, kernels chosen
        seq_t, vec_t = [], []
        for _ in range(a.repeats):
            t, one_by_one = timed(sequential, a.device)
            seq_t.append(t)
            t, together = timed(vectorised, a.device)
            vec_t.append(t)
        same = all(np.array_equal(r.step_reward, v.step_reward) for r, v in zip(one_by_one, together))
        steps = one_by_one[0].steps
        s, v = min(seq_t), min(vec_t)
        ratios[name] = v / s
        print(f"{name}: {a.seeds} seeds x {steps} steps on {a.device}: sequential {s:.2f} s "
              f"({1e3 * s / (a.seeds * steps):.3f} ms per seed-step), vectorised {v:.2f} s "
              f"({1e3 * v / (a.seeds * steps):.3f} ms per seed-step), vectorised/sequential {v / s:.3f}, "
              f"per-step rewards identical: {same}")
    first = a.agents.split(",")[0]
    print(f"ratio={ratios[first]:.3f}")
    return ratios[first]


if __name__ == "__main__":
    main()
