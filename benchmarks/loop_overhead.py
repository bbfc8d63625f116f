"""Time per step of ``clenv.run`` with the ``base`` agent against a hand-written PyTorch loop doing the same work.

The same work: the same batches (the env's, gathered beforehand for the hand-written loop), the same network (the
agent's MLP, freshly initialised with the same seed), the same optimiser (Adam 1e-3, fused), test-then-train (the
prediction's accuracy on the batch, then one step of cross-entropy on it). The hand-written loop skips everything a
library adds: the env's action check and info dict, the agent's hooks, the task tracker, the progress bar. Each is
timed ``--repeats`` times, alternating, and the minimum kept; both produce the same per-step accuracies (checked).
The last line is ``ratio=<clenv ms per step / hand-written ms per step>``.

    python benchmarks/loop_overhead.py [--tasks 2] [--samples 512] [--epochs 4] [--repeats 5] [--progress]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import agents
import clenv


def gather(env, seed: int):
    """Every (x uint8, y) batch of the stream, as the env serves them."""
    batches = []
    obs, info = env.reset(seed=seed)
    n = env.action_space.shape[0]
    while True:
        nxt, _, term, trunc, info = env.step(np.zeros(n, dtype=np.int64))
        batches.append((torch.as_tensor(obs), torch.as_tensor(info["labels"], dtype=torch.int64)))
        if term or trunc:
            return batches
        obs = nxt


def hand_written(network, batches) -> tuple[float, np.ndarray]:
    opt = torch.optim.Adam(network.parameters(), lr=1e-3, fused=True)
    acc = np.empty(len(batches), np.float32)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        logits = network(x.float().div_(255.0))
        acc[i] = (logits.detach().argmax(1) == y).float().mean().item()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, acc


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RandomLabelFashionMNIST-v0")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--progress", action="store_true", help="the progress bar on in clenv.run")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    kw = dict(num_tasks=a.tasks, samples_per_task=a.samples, epochs_per_task=a.epochs, augment=False)
    env = gym.make(a.env, **kw)
    batches = gather(gym.make(a.env, **kw), seed=0)
    steps = len(batches)
    ours, theirs = [], []
    for _ in range(a.repeats):
        agent = agents.make("base", env, optimizer="adam", lr=1e-3, seed=0)
        t0 = time.perf_counter()
        result = clenv.run(env, agent, seed=0, progress=a.progress)
        ours.append(time.perf_counter() - t0)
        net = agents.make("base", env, optimizer="adam", lr=1e-3, seed=0).network
        t, acc = hand_written(net, batches)
        theirs.append(t)
        assert np.array_equal(acc, result.step_reward), "the two loops did not do the same work"
    mine, ref = 1e3 * min(ours) / steps, 1e3 * min(theirs) / steps
    print(f"{steps} steps, batch {batches[0][0].shape[0]}, best of {a.repeats}: clenv.run + base {mine:.3f} ms/step, "
          f"hand-written loop {ref:.3f} ms/step")
    ratio = mine / ref
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
