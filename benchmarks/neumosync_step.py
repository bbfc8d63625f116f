"""Time one NeuMoSync training step against one ``base`` step on RandomLabelCIFAR10 shapes (CPU, same run).

Shapes: 3x32x32 inputs, batch 16, 10 classes, the paper's MLP 100-100 MainNetwork. A step is the agent's whole
``learn`` (forward, backward, optimiser step, after-update hooks: for NeuMoSync the activity EMA and the
ConsolidatedNetwork EMA). Steps alternate between the agents so that machine load hits all alike; the median thread
CPU time is reported (wall time too: on a shared machine it includes time spent descheduled).

Contenders: ``base`` with its paper optimiser (SGD lr 1e-2, Table 10) and with NeuMoSync's (Adam lr 1e-3, the
ratio's reference: the optimiser is not NeuMoSync's cost, and foreach Adam costs ~35 us per parameter tensor here);
NeuMoSync with no controller (the floor: theta/phi matmuls, modulated activations, EMAs); the ``lowrank``
controller (opt-in, not the paper's); the paper's transformer controller with e = 128 and e = 512 (Table 10,
Random-Label CIFAR-10), run by the restructured kernels (``fused=True``, the default). For each: median ms, ratio
to both bases, aten ops per step and matmul FLOPs per step (forward + backward, ``torch.utils.flop_counter``) over
base's. A step costs at least its FLOP ratio at base's efficiency, so the figure of merit is the time ratio over the
FLOP ratio: ``time_over_flop_e128`` / ``_e512`` (1.0: the step runs its matmul FLOPs as efficiently as base does).
The last line is ``ratio=<max over e in (128, 512) of time ratio / FLOP ratio>``, time ratios against base with the
same optimiser; ``ratio_no_controller`` is the floor's time ratio. ``--reference`` also times the same model as
plain autograd ops (``fused=False``: the implementation before the kernels), ``--compile`` the contenders with
``compile=True`` (torch.compile of the network forward; FLOPs and ops counted eagerly). ``--resnet`` also times the
sparse encoder-decoder controller (K = 0.1, Appendix E.1) on ResNet-18 against a ``base`` ResNet-18 step, with both
FLOP counts.

    python benchmarks/neumosync_step.py [--steps 200] [--threads 1] [--reference] [--compile] [--resnet]
                                        [--device cpu|cuda]

``--device cuda`` times the same steps on a GPU (synchronised wall time), the setting of the paper's Table 16.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import agents

SPEC = {"input_shape": (3, 32, 32), "num_outputs": 10, "action_type": "labels", "backbone": "mlp",
        "task_aware": False, "num_tasks": 1, "device": "cpu"}

CONTENDERS = {
    "base_sgd": ("base", dict(optimizer="sgd", lr=1e-2)),
    "base_adam": ("base", dict(optimizer="adam", lr=1e-3)),
    "neumosync_no_controller": ("neumosync", dict(controller="none")),
    "neumosync_lowrank_e128": ("neumosync", dict(controller="lowrank", d_ff=128)),
    "neumosync_e128": ("neumosync", dict(d_ff=128)),
    "neumosync_e512": ("neumosync", dict(d_ff=512)),
}


class _OpCounter(TorchDispatchMode):
    """Counts aten ops that reach the dispatcher (forward, backward and optimiser)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _batches(batch: int = 16, n: int = 8, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    return ([torch.rand(batch, 3, 32, 32, generator=g).to(device) for _ in range(n)],
            [torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(n)])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _time_steps(named_agents: dict, steps: int, device: str = "cpu") -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per learn() for each agent, interleaved step by step: (thread CPU time, or the synchronised
    wall time on a GPU; wall time)."""
    xs, ys = _batches(device=device)
    gpu = device.startswith("cuda")
    cpu = {k: [] for k in named_agents}
    wall = {k: [] for k in named_agents}
    for i in range(steps + 5):
        for name, agent in named_agents.items():
            _sync(device)
            c, w = time.thread_time(), time.perf_counter()
            agent.learn(xs[i % 8], ys[i % 8])
            _sync(device)
            dw = time.perf_counter() - w
            if i >= 5:  # warm-up
                cpu[name].append(dw if gpu else time.thread_time() - c)
                wall[name].append(dw)
    return ({k: statistics.median(v) for k, v in cpu.items()}, {k: statistics.median(v) for k, v in wall.items()})


def _count(agent, device: str = "cpu") -> tuple[int, float]:
    """(aten ops, matmul/conv FLOPs) of one learn() step (eager: a compiled forward is counted uncompiled)."""
    xs, ys = _batches(device=device)
    net = getattr(agent, "network", None)
    compiled = bool(getattr(net, "compile", False))
    if compiled:
        net.compile = False
    try:
        agent.learn(xs[0], ys[0])
        with _OpCounter() as ops:
            agent.learn(xs[1], ys[1])
        with FlopCounterMode(display=False) as flops:
            agent.learn(xs[2], ys[2])
    finally:
        if compiled:
            net.compile = True
    return ops.count, flops.get_total_flops()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference", action="store_true", help="also time the plain-autograd model (fused=False)")
    p.add_argument("--compile", action="store_true", help="also time the contenders with compile=True")
    p.add_argument("--resnet", action="store_true", help="also time the sparse controller on ResNet-18")
    p.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda[:k] (the paper's Table 16)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    torch.set_num_threads(args.threads)
    spec = {**SPEC, "device": args.device}

    table = dict(CONTENDERS)
    if args.reference:
        table.update({f"{k}_plain": (table[k][0], {**table[k][1], "fused": False})
                      for k in ("neumosync_e128", "neumosync_e512")})
    if args.compile:
        table.update({f"{k}_compiled": (table[k][0], {**table[k][1], "compile": True})
                      for k in ("neumosync_no_controller", "neumosync_e128", "neumosync_e512")})
    contenders = {k: agents.make(name, spec, **hp) for k, (name, hp) in table.items()}
    for name, agent in contenders.items():
        if name.startswith("neumosync"):
            o = agent.parameter_overhead()
            print(f"{name}: MainNetwork {o['base']:,} params, overhead {o['overhead']:,} ({100 * o['share']:.2f}%)")
    counts = {k: _count(a, args.device) for k, a in contenders.items()}
    cpu, wall = _time_steps(contenders, args.steps, args.device)
    where = f"{args.threads} thread(s)" if args.device == "cpu" else f"{args.device} (cpu ms = synchronised wall time)"
    print(f"{args.steps} interleaved steps, batch 16, {where}; median per step; torch {torch.__version__}, CPU "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'':>32} {'cpu ms':>8} {'wall ms':>8} {'/base_adam':>10} {'/base_sgd':>9} {'aten ops':>9} {'MFLOP':>8} "
          f"{'FLOP/base':>9} {'time/FLOP':>9}")
    base_flops = counts["base_adam"][1]
    for name in contenders:
        ops, flops = counts[name]
        t = cpu[name] / cpu["base_adam"]
        print(f"{name:>32} {1e3 * cpu[name]:8.3f} {1e3 * wall[name]:8.3f} {t:10.2f} "
              f"{cpu[name] / cpu['base_sgd']:9.2f} {ops:9d} {flops / 1e6:8.1f} {flops / base_flops:9.2f} "
              f"{t / (flops / base_flops):9.2f}")
    print(f"reference: base_adam {1e3 * cpu['base_adam']:.3f} ms/step, base_sgd {1e3 * cpu['base_sgd']:.3f} ms/step")
    if args.resnet:
        rspec = {**spec, "backbone": "resnet18"}
        res = {"base_resnet18": agents.make("base", rspec),
               "neumosync_sparse_resnet18": agents.make("neumosync", rspec, controller="sparse", sparse_fraction=0.1)}
        o = res["neumosync_sparse_resnet18"].parameter_overhead()
        n = res["neumosync_sparse_resnet18"].network.num_neurons
        print(f"resnet18: {n} neurons, MainNetwork {o['base']:,} params, controller+features {o['overhead']:,} "
              f"({100 * o['share']:.3f}%)")
        rflops = {k: _count(a, args.device)[1] for k, a in res.items()}
        rcpu, _ = _time_steps(res, max(3, args.steps // 20), args.device)
        for name, t in rcpu.items():
            print(f"{name:>26}: {1e3 * t:9.1f} ms/step, {rflops[name] / 1e9:7.2f} GFLOP/step")
        print(f"resnet18_sparse_flop_ratio={rflops['neumosync_sparse_resnet18'] / rflops['base_resnet18']:.2f}")
        print(f"resnet18_sparse_ratio={rcpu['neumosync_sparse_resnet18'] / rcpu['base_resnet18']:.2f}")
    # The paper's controller runs its feed-forward block on every (sample, neuron) pair (B x N tokens), so its FLOPs,
    # not its 5% parameter share, set its cost.
    for name in ("neumosync_no_controller", "neumosync_lowrank_e128", "neumosync_e128", "neumosync_e512"):
        short = name.removeprefix("neumosync_")
        print(f"flop_ratio_{short}={counts[name][1] / base_flops:.2f}")
    for name in contenders:
        if name.startswith("neumosync") and name != "neumosync_e512":
            print(f"ratio_{name.removeprefix('neumosync_')}={cpu[name] / cpu['base_adam']:.2f}")
    merit = {}
    for e in (128, 512):
        name = f"neumosync_e{e}"
        merit[e] = (cpu[name] / cpu["base_adam"]) / (counts[name][1] / base_flops)
        print(f"time_over_flop_e{e}={merit[e]:.2f}")
    print(f"ratio_e512={cpu['neumosync_e512'] / cpu['base_adam']:.2f}")
    print(f"ratio={max(merit.values()):.2f}")


if __name__ == "__main__":
    main()
