"""Time each adapter agent's training step against plain LoRA on the same frozen base (same run, same batches).

Shapes: StyleShiftText-v0 (batch 8 of 96 byte tokens, 260 ids). The base is a GPT-2 of the pretrained base's
architecture (:data:`agents.adapters.base_lm.DEFAULT_CONFIG`: 2 layers, 128 wide, 4 heads), randomly initialised
here, since weights do not change the time and no pretraining is needed to run this. Adapters sit on every
``c_attn`` with each agent's defaults. A step is the agent's whole step through the common API, ``act`` then
``observe``: for LoRA-FTN that includes the SmoothKWTA configurer's S = 15 relaxed-mask passes, for LoRA-Bank the
8 one-hot scoring passes, for NeuroLoRA the gate and the orthogonality loss.

Steps alternate between contenders so machine load hits all alike; the median wall time per step is reported with
the matmul FLOPs per step (``torch.utils.flop_counter``) and the trainable parameters. Every line reads
``x<time / lora>``; the last two lines are ``flylora_ratio=`` and ``ratio=<neurolora / lora>``.

    python benchmarks/adapter_step.py [--steps 10] [--threads 1] [--device cpu|cuda] [--agents lora,flylora,...]
"""

from __future__ import annotations

import argparse
import statistics

import gymnasium as gym
import torch

import agents
import clenv  # noqa: F401  (registers the env ids)
from agent_steps import record_batches, time_steps
from agents.adapters.base_lm import DEFAULT_CONFIG

CONTENDERS = ("lora", "ewc_lora", "flylora", "neurolora", "lora_naive", "lora_fixed_mask", "lora_bank", "lora_ftn")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--agents", default=",".join(CONTENDERS), help="comma-separated; lora is always timed")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be a positive integer, got {args.steps}")
    names = ["lora"] + [n for n in args.agents.split(",") if n and n != "lora"]
    unknown = [n for n in names if n not in agents.available()]
    if unknown:
        p.error(f"unknown agent(s) {unknown}; available: {agents.available()}")
    torch.set_num_threads(args.threads)
    env = gym.make("StyleShiftText-v0", device=args.device)
    base = dict(base_model="random", base_n_layer=DEFAULT_CONFIG["n_layer"], base_n_embd=DEFAULT_CONFIG["n_embd"],
                base_n_head=DEFAULT_CONFIG["n_head"], device=args.device)
    contenders = {n: agents.make(n, env, seed=0, **base) for n in names}
    times, flops = time_steps(contenders, record_batches(env, args.steps + 2), warmup=2, device=args.device)
    print(f"device {args.device}, threads {args.threads}, batch {env.unwrapped.batch_size} x "
          f"{env.unwrapped.max_length} tokens, {args.steps} steps; base GPT-2 {DEFAULT_CONFIG['n_layer']} x "
          f"{DEFAULT_CONFIG['n_embd']}")
    ref = statistics.median(times["lora"])
    for name, agent in contenders.items():
        ms = statistics.median(times[name]) * 1e3
        print(f"{name:16s} trainable {agent.adapter_parameter_count:9d}  {ms:9.1f} ms/step  x{ms / 1e3 / ref:6.2f} "
              f"lora  matmul GFLOP/step {flops[name] / 1e9:7.2f} (x{flops[name] / flops['lora']:.2f})")
    for label, name in (("flylora_ratio", "flylora"), ("ratio", "neurolora")):
        if name in times:
            print(f"{label}={statistics.median(times[name]) / ref:.3f}")


if __name__ == "__main__":
    main()
