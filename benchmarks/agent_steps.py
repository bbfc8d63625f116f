"""The timing harness of the agent-step benchmarks (ftn_step.py, adapter_step.py): record a stream's batches once,
then time each contender's whole step through the common API (``act`` then ``observe``) on the same batches, the
contenders alternating step by step so that machine load hits all alike, with the matmul FLOPs of one step."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def record_batches(env, n: int, seed: int = 0) -> list[tuple]:
    """``n`` (observation, step info) pairs of ``env`` under random actions."""
    obs, _ = env.reset(seed=seed)
    batches = []
    for _ in range(n):
        nxt, _, _, _, info = env.step(env.action_space.sample())
        batches.append((obs, info))
        obs = nxt
    return batches


def agent_step(agent, obs, info) -> None:
    action = agent.act(obs, {})
    agent.observe(obs, action, 0.0, obs, False, False, info)


def time_steps(contenders: dict, batches: list[tuple], *, warmup: int, device: str = "cpu"):
    """(seconds per step by contender, matmul FLOPs of one step by contender): ``warmup`` batches warm every
    contender up and the first of them is counted for FLOPs; the rest are timed, alternating contenders."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    times = {name: [] for name in contenders}
    flops = {}
    for name, agent in contenders.items():
        for obs, info in batches[:warmup]:
            agent_step(agent, obs, info)
        with FlopCounterMode(display=False) as counter:
            agent_step(agent, *batches[0])
        flops[name] = counter.get_total_flops()
    for obs, info in batches[warmup:]:
        for name, agent in contenders.items():
            sync()
            t0 = time.perf_counter()
            agent_step(agent, obs, info)
            sync()
            times[name].append(time.perf_counter() - t0)
    return times, flops
