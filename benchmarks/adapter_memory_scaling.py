"""Recall error and task confusion of the adapter memories against the number of stored adapters (issue 16's
scaling figure; 004_49f6201e6e679480.txt, Sections 3-4), on synthetic adapter vectors.

The adapters: vectors in the LoRA layout of 2 adapted 64 x 64 layers of rank 4 (A (4, 64) then B (64, 4) per layer,
1,024 entries; the key is the first 102, i.e. part of the first layer's A), in two kinds:
- ``gaussian``: every entry N(0, 1), independently per adapter;
- ``lora``: A ~ U(-1/8, 1/8) (peft's initialisation for 64 inputs) and B ~ N(0, 0.02^2), with an ``overlap`` rho
  (default 0.9) shared by all adapters: x_t = sqrt(rho) x_shared + sqrt(1 - rho) x_own. That is what tasks that
  start from one seed's A look like: their keys have cosine about rho.

For each N (a doubling grid, 1 .. ``--max-n``), the memory holds the first N adapters, written in order through
``write_adapter`` (key, rest), and every one of them is read back with ``read_adapter(memory, its key)``. Reported:
- ``err``: the mean relative recall error of the value, ||read(k_i) - v_i|| / ||v_i|| over the N adapters, v_i the
  entries after the key (``max``: the largest); the recalled key is the query itself and exact;
- ``conf``: task confusion, the share of reads whose recalled value is nearer (in L2) another stored adapter's value
  than its own.
The memories: the exact store, the Hopfield memory (beta 25, unit-norm keys: ``hopfield``), the same without key
normalisation (``hopfield_raw``, the raw dot product), and BayesPCN with the paper's settings, whose 500-step reads
and writes are the cost, so it runs only up to ``--bayespcn-max-n`` (default 16; writes are sequential, so one
memory is filled once and read at every N on the way).

Memory sizes are printed at the largest N against storing every adapter (float32). The last line is
``ratio=<BayesPCN memory bytes / bytes of storing every adapter at the largest N>`` (BayesPCN's state does not grow
with N; the Hopfield memory's is the adapters' size exactly, so its ratio is 1 and is printed as
``hopfield_ratio=``). D = FAA_GT - FAA_recalled needs trained tasks and is left to the agents (issue 16).

    python benchmarks/adapter_memory_scaling.py [--max-n 512] [--bayespcn-max-n 16] [--overlap 0.9] [--out fig.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from agents.adapters.memory import (BayesPCNMemory, ExactMemory, HopfieldMemory, adapter_key, read_adapter,
                                    write_adapter)

LAYERS, WIDTH, RANK = 2, 64, 4
DIM = LAYERS * 2 * WIDTH * RANK


def synthetic_adapters(kind: str, n: int, overlap: float, seed: int) -> torch.Tensor:
    """(n, DIM) adapter vectors of ``kind`` (module docstring), float32."""
    g = torch.Generator().manual_seed(seed)

    def draw(count):
        if kind == "gaussian":
            return torch.randn(count, DIM, generator=g)
        parts = []
        for _ in range(LAYERS):
            parts.append((torch.rand(count, RANK * WIDTH, generator=g) * 2 - 1) / math.sqrt(WIDTH))  # A
            parts.append(0.02 * torch.randn(count, WIDTH * RANK, generator=g))  # B
        return torch.cat(parts, dim=1)

    # one adapter at a time, so that the first N adapters do not depend on how many are drawn
    shared, own = draw(1), torch.cat([draw(1) for _ in range(n)])
    return (math.sqrt(overlap) * shared + math.sqrt(1 - overlap) * own).float()


def measure(memory, adapters: torch.Tensor, grid: list[int]) -> list[tuple[int, float, float, float, float]]:
    """Fill ``memory`` in order and read every stored adapter back at each N of ``grid``:
    (N, mean error, max error, confusion, seconds)."""
    rows, written, start = [], 0, time.perf_counter()
    for n in grid:
        while written < n:
            write_adapter(memory, adapters[written])
            written += 1
        stored = adapters[:n]
        keys = torch.stack([adapter_key(x) for x in stored])
        if isinstance(memory, BayesPCNMemory):  # one batched inference for the n reads
            recalled = torch.cat([keys, memory.read_many(keys)], dim=1)
        else:
            recalled = torch.stack([read_adapter(memory, k) for k in keys])
        # on the value (the entries after the key): the recalled key is the query itself, so it is always exact
        got, want = recalled[:, keys.shape[1]:], stored[:, keys.shape[1]:]
        error = (got - want).norm(dim=1) / want.norm(dim=1)
        nearest = torch.cdist(got.double(), want.double()).argmin(dim=1)
        confusion = (nearest != torch.arange(n)).double().mean().item()
        rows.append((n, error.mean().item(), error.max().item(), confusion, time.perf_counter() - start))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-n", type=int, default=512, help="the largest number of stored adapters (a power of 2)")
    p.add_argument("--bayespcn-max-n", type=int, default=16, help="BayesPCN runs up to this N (its reads cost)")
    p.add_argument("--overlap", type=float, default=0.9, help="rho of the 'lora' kind")
    p.add_argument("--kinds", default="gaussian,lora")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the figure (PNG) here")
    args = p.parse_args(argv)
    if args.max_n < 1 or args.bayespcn_max_n < 1 or not 0 <= args.overlap < 1:
        p.error("--max-n and --bayespcn-max-n must be >= 1 and --overlap in [0, 1)")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in ("gaussian", "lora") for k in kinds):
        p.error(f"--kinds must name gaussian and / or lora, got {args.kinds!r}")
    torch.set_num_threads(args.threads)
    grid = [2 ** i for i in range(int(math.log2(args.max_n)) + 1)]
    bpcn_grid = [n for n in grid if n <= args.bayespcn_max_n]
    memories = {"exact": (ExactMemory, grid), "hopfield": (HopfieldMemory, grid),
                "hopfield_raw": (lambda: HopfieldMemory(normalize="none"), grid),
                "bayespcn": (lambda: BayesPCNMemory(seed=args.seed), bpcn_grid)}
    results, sizes = {}, {}
    print(f"{DIM}-entry adapter vectors, key {adapter_key(torch.ones(DIM)).numel()} entries; N = {grid[0]}..{grid[-1]}"
          f" (BayesPCN to {bpcn_grid[-1]}); overlap {args.overlap} for 'lora'")
    print(f"{'kind':<9} {'memory':<13} {'N':>5} {'err':>9} {'max':>9} {'conf':>6} {'s':>7}")
    for kind in kinds:
        overlap = args.overlap if kind == "lora" else 0.0
        adapters = synthetic_adapters(kind, grid[-1], overlap, args.seed)
        for name, (factory, ns) in memories.items():
            memory = factory()
            rows = measure(memory, adapters, ns)
            results[kind, name] = rows
            sizes[name] = memory.memory_size_bytes()
            for n, err, worst, conf, seconds in rows:
                print(f"{kind:<9} {name:<13} {n:>5} {err:>9.2e} {worst:>9.2e} {conf:>6.3f} {seconds:>7.1f}", flush=True)
    every = grid[-1] * DIM * 4
    print(f"bytes at N={grid[-1]}: every adapter {every:,}; " + "; ".join(
        f"{name} {size:,}" + (" (fixed size)" if name == "bayespcn" else "") for name, size in sizes.items()))
    if args.out:
        _figure(results, args.out, args.overlap)
        print(f"figure: {args.out}")
    print(f"hopfield_ratio={sizes['hopfield'] / every:.3f}")
    print(f"ratio={sizes['bayespcn'] / every:.3f}")


def _figure(results, path: str, overlap: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_err, ax_conf) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"gaussian": "-", "lora": "--"}
    colours = {"exact": "k", "hopfield": "tab:blue", "hopfield_raw": "tab:orange", "bayespcn": "tab:green"}
    for (kind, name), rows in results.items():
        ns = [r[0] for r in rows]
        label = f"{name}, {kind}" + (f" (rho {overlap})" if kind == "lora" else "")
        # log axes: an exact zero is drawn at 1e-12
        ax_err.plot(ns, [max(r[1], 1e-12) for r in rows], styles[kind], color=colours[name], marker="o", ms=3,
                    label=label)
        ax_conf.plot(ns, [r[3] for r in rows], styles[kind], color=colours[name], marker="o", ms=3, label=label)
    ax_err.set(xscale="log", yscale="log", xlabel="stored adapters N", ylabel="mean relative recall error",
               title="recall error (exact store: 0, drawn at 1e-12)")
    ax_conf.set(xscale="log", xlabel="stored adapters N", ylabel="share of reads nearer another adapter",
                title="task confusion", ylim=(-0.03, 1.03))
    ax_conf.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
