"""D and recall error of trained task adapters as a memory fills with other adapters (issue 16's scaling figure;
004_49f6201e6e679480.txt, Section 4): where each memory starts to confuse tasks.

1. ``adapter_memory`` trains its five Split Fashion-MNIST adapters (SplitFashionMNIST-5S-v0, the registered protocol
   unless ``--samples-per-class`` shrinks it) on the cached pretrained ViT; FAA_GT is their mean test accuracy.
2. Distractors: synthetic adapter vectors in the same layout, adapter j built from trained adapter i = j mod 5 by
   permuting the entries within each tensor (the same per-tensor distribution of entries, an independent
   direction), in two kinds:
   - ``independent``: the permuted vector itself; its key is nearly orthogonal to every real key;
   - ``shared``: the key entries sqrt(rho) k_i + sqrt(1 - rho) k_permuted (rho = ``--overlap``, 0.9), the rest the
     permuted vector's: another task whose adapter grew from the same initialisation (keys at cosine about rho
     with task i's) but whose B and head are its own. This is the case that confuses tasks.
3. Each memory is filled in order with the five real adapters first, then distractors, up to N = 5, 10, 20, ...,
   ``--max-n``; at each N the five real keys are read back, the recalled adapters installed and the five tasks
   scored: D(N) = FAA_GT - FAA(recalled), and the relative recall error ||recalled - theta|| / ||theta|| (mean over
   the five). BayesPCN's 500-step writes are the cost, so it runs up to ``--bayespcn-max-n``.

    python benchmarks/adapter_recall_capacity.py [--max-n 640] [--bayespcn-max-n 40] [--out fig.png]
"""

from __future__ import annotations

import argparse
import math
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv
from agents.adapters.memory import adapter_layout, key_length, read_adapter, write_adapter
from agents.adapters.memory.agent import build_memory


def distractors(real: torch.Tensor, layout, kind: str, n: int, overlap: float, seed: int) -> torch.Tensor:
    """(n, dim) synthetic adapters of ``kind`` built from the (5, dim) trained ones (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    k = key_length(real.shape[1])
    sizes = [int(np.prod(shape)) for _, shape in layout]
    out = []
    for j in range(n):
        base = real[j % len(real)]
        parts, start = [], 0
        for size in sizes:
            piece = base[start:start + size]
            parts.append(piece[torch.randperm(size, generator=g)])
            start += size
        own = torch.cat(parts)
        if kind == "shared":
            own[:k] = math.sqrt(overlap) * base[:k] + math.sqrt(1 - overlap) * own[:k]
        out.append(own)
    return torch.stack(out)


def faa(agent, vectors, tests) -> tuple[float, list[float]]:
    accs = []
    for v, test in zip(vectors, tests):
        with agent.using_adapter(v):
            correct = sum(int((agent.predict(x).argmax(1) == y).sum()) for x, y in test)
        accs.append(correct / sum(len(y) for _, y in test))
    return float(np.mean(accs)), accs


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-n", type=int, default=640, help="the most adapters stored (5 x a power of 2)")
    p.add_argument("--bayespcn-max-n", type=int, default=40)
    p.add_argument("--overlap", type=float, default=0.9, help="rho of the 'shared' distractors")
    p.add_argument("--samples-per-class", type=int, default=None, help="shrink the stream (default: the protocol)")
    p.add_argument("--base-model", default="pretrained", help="'pretrained' (default) or 'random'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the figure (PNG) here")
    args = p.parse_args(argv)
    if args.max_n < 5 or args.bayespcn_max_n < 0 or not 0 <= args.overlap < 1:
        p.error("--max-n must be >= 5, --bayespcn-max-n >= 0 and --overlap in [0, 1)")
    torch.set_num_threads(args.threads)
    kw = {} if args.samples_per_class is None else {"samples_per_class": args.samples_per_class}
    env = gym.make("SplitFashionMNIST-5S-v0", **kw)
    agent = agents.make("adapter_memory", env, memories=("exact",), base_model=args.base_model)
    t0 = time.perf_counter()
    clenv.run(env, agent, seed=args.seed, progress=False)
    agent.commit_task()
    tasks = agent.stored_tasks
    real = torch.stack([agent.recalled_adapter(t, "exact") for t in tasks])
    tests = [[(agent.preprocess(x), y) for x, y in env.unwrapped.test_batches(t, split="test")] for t in tasks]
    gt, _ = faa(agent, real, tests)
    layout = adapter_layout(agent.network)
    print(f"5 adapters of {real.shape[1]} entries trained in {time.perf_counter() - t0:.0f} s; FAA_GT {100 * gt:.2f}%")
    grid = [5 * 2 ** i for i in range(int(math.log2(args.max_n // 5)) + 1)]
    print(f"{'kind':<12} {'memory':<9} {'N':>5} {'D (pp)':>8} {'rel err':>9} {'s':>7}")
    results = {}
    for kind in ("independent", "shared"):
        extra = distractors(real, layout, kind, grid[-1] - len(real), args.overlap, args.seed + 1)
        vectors = torch.cat([real, extra])
        for name in ("hopfield", "bayespcn"):
            ns = [n for n in grid if name != "bayespcn" or n <= args.bayespcn_max_n]
            memory, written, start, rows = build_memory(name, seed=args.seed), 0, time.perf_counter(), []
            keys = [None] * len(real)
            for n in ns:
                while written < n:
                    key = write_adapter(memory, vectors[written])
                    if written < len(real):
                        keys[written] = key
                    written += 1
                recalled = torch.stack([read_adapter(memory, k) for k in keys])
                got, _ = faa(agent, recalled, tests)
                err = float(((recalled - real).norm(dim=1) / real.norm(dim=1)).mean())
                rows.append((n, 100 * (gt - got), err))
                print(f"{kind:<12} {name:<9} {n:>5} {100 * (gt - got):>8.2f} {err:>9.2e} "
                      f"{time.perf_counter() - start:>7.1f}", flush=True)
            results[kind, name] = rows
    if args.out:
        _figure(results, args.out, args.overlap, gt)
        print(f"figure: {args.out}")
    for (kind, name), rows in results.items():
        if rows:
            print(f"d_{name}_{kind}_n{rows[-1][0]}={rows[-1][1]:.3f}")


def _figure(results, path: str, overlap: float, gt: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"hopfield": "-o", "bayespcn": "--s"}
    for (kind, name), rows in results.items():
        if not rows:
            continue
        n = [r[0] for r in rows]
        label = f"{name}, {kind}" + (f" (rho {overlap})" if kind == "shared" else "")
        color = "tab:blue" if kind == "independent" else "tab:red"
        axes[0].plot(n, [r[1] for r in rows], styles[name], color=color, label=label, ms=4)
        axes[1].plot(n, [max(r[2], 1e-12) for r in rows], styles[name], color=color, label=label, ms=4)
    axes[0].set(xscale="log", xlabel="adapters stored (5 real + distractors)",
                ylabel="D = FAA_GT - FAA recalled (points)", title=f"Split Fashion-MNIST, FAA_GT {100 * gt:.1f}%")
    axes[1].set(xscale="log", yscale="log", xlabel="adapters stored", ylabel="relative recall error",
                title="||recalled - stored|| / ||stored||")
    axes[0].axhline(0, color="0.6", lw=0.8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
