"""Time one NeuMoSync training step against one ``base`` step on RandomLabelCIFAR10 shapes (CPU, same run).

Shapes: 3x32x32 uint8-range inputs, batch 16, 10 classes, the paper's MLP 100-100 MainNetwork. A step is the agent's
whole ``learn`` (forward, backward, optimiser step, after-update hooks: for NeuMoSync the activity EMA and the
ConsolidatedNetwork EMA). Steps alternate between the agents so that machine load hits both alike; the median is
reported. The last line is ``ratio=<neumosync/base>`` for the transformer controller with the paper's CIFAR-10
embedding (e = d_ff = 512, Table 10). ``--resnet`` also times the sparse encoder-decoder controller (K = 0.1,
Appendix E.1) on ResNet-18 against a ``base`` ResNet-18 step.

    python benchmarks/neumosync_step.py [--steps 200] [--threads 1] [--resnet]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import agents

SPEC = {"input_shape": (3, 32, 32), "num_outputs": 10, "action_type": "labels", "backbone": "mlp",
        "task_aware": False, "num_tasks": 1, "device": "cpu"}


def _time_steps(named_agents: dict, steps: int, batch: int = 16) -> dict[str, float]:
    """Median seconds per learn() for each agent, interleaved step by step."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(batch, 3, 32, 32, generator=g) for _ in range(8)]
    ys = [torch.randint(0, 10, (batch,), generator=g) for _ in range(8)]
    times = {k: [] for k in named_agents}
    for i in range(steps + 5):
        for name, agent in named_agents.items():
            t = time.perf_counter()
            agent.learn(xs[i % 8], ys[i % 8])
            if i >= 5:  # warm-up
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resnet", action="store_true", help="also time the sparse controller on ResNet-18")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    contenders = {
        "base": agents.make("base", SPEC),
        "neumosync_e128": agents.make("neumosync", SPEC, d_ff=128),
        "neumosync_e512": agents.make("neumosync", SPEC, d_ff=512),
    }
    for name in ("neumosync_e128", "neumosync_e512"):
        o = contenders[name].parameter_overhead()
        print(f"{name}: MainNetwork {o['base']:,} params, overhead {o['overhead']:,} ({100 * o['share']:.2f}%)")
    med = _time_steps(contenders, args.steps)
    for name, t in med.items():
        print(f"{name:>16}: {1e3 * t:8.3f} ms/step   x{t / med['base']:.2f}")

    if args.resnet:
        spec = {**SPEC, "backbone": "resnet18"}
        res = {"base_resnet18": agents.make("base", spec),
               "neumosync_sparse_resnet18": agents.make("neumosync", spec, controller="sparse", sparse_fraction=0.1)}
        o = res["neumosync_sparse_resnet18"].parameter_overhead()
        n = res["neumosync_sparse_resnet18"].network.num_neurons
        print(f"resnet18: {n} neurons, MainNetwork {o['base']:,} params, controller+features {o['overhead']:,} "
              f"({100 * o['share']:.3f}%)")
        rmed = _time_steps(res, max(3, args.steps // 20))
        for name, t in rmed.items():
            print(f"{name:>26}: {1e3 * t:9.1f} ms/step")
        print(f"resnet18_sparse_ratio={rmed['neumosync_sparse_resnet18'] / rmed['base_resnet18']:.2f}")
    print(f"ratio={med['neumosync_e512'] / med['base']:.2f}")


if __name__ == "__main__":
    main()
