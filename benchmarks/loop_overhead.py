"""Time per step of ``clenv.run`` with the ``base`` agent against a hand-written PyTorch loop doing the same work,
and against Avalanche's ``Naive`` strategy when Avalanche is installed (the ``bench`` extra).

The same work: the same batches (the env's, gathered beforehand for the references), the same network (the agent's
MLP, freshly initialised with the same seed), the same optimiser (Adam 1e-3, fused), test-then-train (the
prediction's accuracy on the batch, then one step of cross-entropy on it). The hand-written loop skips everything a
library adds: the env's action check and info dict, the agent's hooks, the task tracker, the progress bar.
Avalanche 0.6's ``Naive`` gets one experience per task holding that task's batches in the env's order
(``shuffle=False``, one epoch over them, so the same batches in the same order), no evaluator and no loggers, and a
plugin that records the accuracy of each training forward; its inputs are given already as floats in [0, 1] (a head
start: the other two convert uint8 every step). All three must produce the same per-step accuracies (checked), so
they did the same arithmetic.

Each contender is timed ``--repeats`` times, alternating, and the minimum kept, in wall time and in this thread's CPU
time (which leaves out time spent descheduled on a shared machine). The progress bar is on, as a user runs
(``--no-progress`` turns it off). The last line is ``ratio=<clenv ms per step / hand-written ms per step>`` (wall);
``cpu_ratio=`` and ``avalanche_over_clenv=`` come before it.

    python benchmarks/loop_overhead.py [--tasks 2] [--samples 512] [--epochs 4] [--repeats 5] [--no-progress]
                                       [--no-avalanche]
"""

from __future__ import annotations

import argparse
import time
import warnings

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


def timed(fn):
    """``fn()``'s result with its (wall, thread CPU) seconds."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - w0, time.thread_time() - c0


def hand_written(network, batches) -> np.ndarray:
    opt = torch.optim.Adam(network.parameters(), lr=1e-3, fused=True)
    acc = np.empty(len(batches), np.float32)
    for i, (x, y) in enumerate(batches):
        logits = network(x.float().div_(255.0))
        acc[i] = (logits.detach().argmax(1) == y).float().mean().item()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return acc


def avalanche_contender(batches, steps_per_task: int):
    """A function ``network -> per-step accuracies`` running Avalanche's Naive strategy over ``batches``, or None
    when Avalanche is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Avalanche's optional solvers warn at import
            from avalanche.benchmarks import tensors_benchmark
            from avalanche.core import SupervisedPlugin
            from avalanche.training import Naive
    except ImportError:
        return None
    tasks = range(len(batches) // steps_per_task)
    chunks = [batches[t * steps_per_task:(t + 1) * steps_per_task] for t in tasks]
    train = [(torch.cat([x for x, _ in c]).float().div_(255.0), torch.cat([y for _, y in c])) for c in chunks]
    scenario = tensors_benchmark(train_tensors=train, test_tensors=[(x[:1], y[:1]) for x, y in train],
                                 task_labels=[0 for _ in train])

    class ForwardAccuracy(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.acc = []

        def after_forward(self, strategy, **kwargs):
            self.acc.append((strategy.mb_output.detach().argmax(1) == strategy.mb_y).float().mean().item())

    def run(network) -> np.ndarray:
        record = ForwardAccuracy()
        strategy = Naive(model=network, optimizer=torch.optim.Adam(network.parameters(), lr=1e-3, fused=True),
                         train_mb_size=batches[0][0].shape[0], train_epochs=1, plugins=[record], evaluator=None,
                         device="cpu")
        for experience in scenario.train_stream:
            strategy.train(experience, shuffle=False, num_workers=0)
        return np.asarray(record.acc, np.float32)

    return run


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RandomLabelFashionMNIST-v0")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-progress", action="store_true", help="the progress bar off in clenv.run")
    p.add_argument("--no-avalanche", action="store_true", help="leave Avalanche out even when it is installed")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    kw = dict(num_tasks=a.tasks, samples_per_task=a.samples, epochs_per_task=a.epochs, augment=False)
    env = gym.make(a.env, **kw)
    batches = gather(gym.make(a.env, **kw), seed=0)
    steps = len(batches)
    avalanche = None if a.no_avalanche else avalanche_contender(batches, env.unwrapped.steps_per_task(0))

    def fresh_network():
        return agents.make("base", env, optimizer="adam", lr=1e-3, seed=0).network

    def ours():
        agent = agents.make("base", env, optimizer="adam", lr=1e-3, seed=0)
        return timed(lambda: clenv.run(env, agent, seed=0, progress=not a.no_progress).step_reward)

    contenders = {"clenv.run + base": ours, "hand-written loop": lambda: timed(lambda: hand_written(fresh_network(),
                                                                                                   batches))}
    if avalanche is not None:
        contenders["Avalanche Naive"] = lambda: timed(lambda: avalanche(fresh_network()))
    best: dict[str, list[float]] = {name: [np.inf, np.inf] for name in contenders}
    reference = None
    for _ in range(a.repeats):
        for name, contender in contenders.items():
            acc, wall, cpu = contender()
            if reference is None:
                reference = acc
            if not np.array_equal(acc, reference):
                raise AssertionError(f"{name} did not do the same work (its per-step accuracies differ)")
            best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
    ms = {name: (1e3 * w / steps, 1e3 * c / steps) for name, (w, c) in best.items()}
    print(f"{steps} steps, batch {batches[0][0].shape[0]}, best of {a.repeats}, progress bar "
          f"{'off' if a.no_progress else 'on'}; ms/step (wall, thread CPU):")
    for name, (w, c) in ms.items():
        print(f"  {name:<20} {w:.3f}  {c:.3f}")
    if avalanche is None and not a.no_avalanche:
        print("  (Avalanche is not installed: pip install -e '.[bench]' adds it as a second reference)")
    ours_ms, ref_ms = ms["clenv.run + base"], ms["hand-written loop"]
    if avalanche is not None:
        print(f"avalanche_over_clenv={ms['Avalanche Naive'][0] / ours_ms[0]:.3f}")
    print(f"cpu_ratio={ours_ms[1] / ref_ms[1]:.3f}")
    ratio = ours_ms[0] / ref_ms[0]
    print(f"ratio={ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
