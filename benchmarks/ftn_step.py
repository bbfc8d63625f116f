"""Time one FTN training step against a dense MLP of the same parameter count (same run, same batches).

Shapes: ConceptShiftClassification-v0 (24-D latents, batch 256, 2 classes). A step is the agent's whole step through
the common API, ``act`` then ``observe``: for FTN-Slow the neuron forward, the SmoothKWTA configurer (S = 1 Adam step
on the mask logits, T = 15 smoothing passes, top-k), the masked readout, backward and Adam. Contenders:

- ``dense``: ``base`` with a 24-w-w-2 ReLU MLP, w chosen so that its parameters match FTN's (~732k), Adam 3e-4;
- ``no_mask``: the FTN model without a configurer (the body's own cost);
- ``ftn_slow`` and ``ftn_fast`` (Experiment 1 defaults).

Steps alternate between contenders so machine load hits all alike; the median wall time per step is reported with
the matmul FLOPs per step (forward + backward, ``torch.utils.flop_counter``). The FTN body is 1,024 independent
8-wide MLPs: its batched products are small matrices (8 x 8 per neuron), memory-bound on a CPU, so the time ratio
sits well above the FLOP ratio there. The last line is ``ratio=<ftn_slow / dense>``.

    python benchmarks/ftn_step.py [--steps 30] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import math
import statistics

import gymnasium as gym
import torch

import agents
import clenv  # noqa: F401  (registers the env ids)
from agent_steps import record_batches, time_steps


def dense_width(params: int, d_in: int = 24, out: int = 2) -> int:
    """w with w^2 + (d_in + out + 2) w + out = params (two hidden layers of width w, biases included)."""
    b = d_in + out + 2
    return int(round((-b + math.sqrt(b * b + 4 * (params - out))) / 2))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = gym.make("ConceptShiftClassification-v0", device=args.device)
    ftn_params = sum(t.numel() for t in agents.make("no_mask", env).network.parameters())
    w = dense_width(ftn_params)
    contenders = {"dense": agents.make("base", env, hidden=(w, w), optimizer="adam", lr=3e-4),
                  "no_mask": agents.make("no_mask", env), "ftn_slow": agents.make("ftn_slow", env),
                  "ftn_fast": agents.make("ftn_fast", env)}
    times, flops = time_steps(contenders, record_batches(env, args.steps + 3), warmup=3, device=args.device)
    params = {n: sum(t.numel() for t in a.network.parameters()) for n, a in contenders.items()}
    print(f"device {args.device}, threads {args.threads}, batch {env.unwrapped.batch_size}, {args.steps} steps; "
          f"dense MLP 24-{w}-{w}-2")
    ref = statistics.median(times["dense"])
    for name in contenders:
        ms = statistics.median(times[name]) * 1e3
        print(f"{name:9s} params {params[name]:8d}  {ms:8.2f} ms/step  x{ms / 1e3 / ref:5.2f} dense  "
              f"matmul GFLOP/step {flops[name] / 1e9:6.3f} (x{flops[name] / flops['dense']:.2f})")
    print(f"flop_ratio={flops['ftn_slow'] / flops['dense']:.3f}")
    print(f"ratio={statistics.median(times['ftn_slow']) / ref:.3f}")


if __name__ == "__main__":
    main()
