"""Adapters on the text style-shift stream: plain LoRA against NeuroLoRA in sequence, then two adapters merged.

1. Sequential fine-tuning. Train ``lora`` and ``neurolora`` on the first tasks of StyleShiftText-v0, one after the
   other, on the pretrained in-repo base. Print the accuracy matrix's BWT (NeuroLoRA Table 3's measure) and what
   each model writes for a held-out sentence under every task, decoded greedily.
2. Merging. Train one LoRA adapter per task on single-task streams (``tasks=(name,)``). Merge them by Task
   Arithmetic into a fresh agent of the same seed (NeuroLoRA Table 2), and print each task's per-token accuracy,
   alone and merged.

    python examples/adapters_style_shift.py            # 3 tasks x 100 steps; a few minutes on one core
    python examples/adapters_style_shift.py --tasks 6 --steps 200   # the paper's stream
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import agents
import clenv
from agents.adapters import install_merged, task_arithmetic, task_vector
from clenv.data.style_corpus import TEST
from clenv.envs.style_shift import BOS, EOS, SEP, TRANSFORMS, decode, encode
from clenv.probes.base import accuracy


@torch.no_grad()
def transform(agent, text: str, max_new: int = 80) -> str:
    """Greedy decoding of ``[BOS] text [SEP]`` until EOS: what the adapted model writes for ``text``."""
    ids = [BOS, *encode(text).tolist(), SEP]
    agent.network.eval()
    for _ in range(max_new):
        if len(ids) >= agent.env_spec["max_length"]:
            break
        logits = agent.predict(torch.tensor([ids], device=agent.device))
        nxt = int(logits[0, -1].argmax())
        if nxt == EOS:
            break
        ids.append(nxt)
    return decode(ids[ids.index(SEP) + 1:])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=3, help="the first N of the six transformations")
    p.add_argument("--steps", type=int, default=100, help="steps per task (the paper: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-model", default="pretrained", help="'pretrained' (the in-repo base) or 'random'")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = list(TRANSFORMS)[:args.tasks]
    sentence = TEST[0]
    print(f"1. sequential fine-tuning over {names}, {args.steps} steps each")
    for name in ("lora", "neurolora"):
        env = gym.make("StyleShiftText-v0", num_tasks=args.tasks, steps_per_task=args.steps)
        agent = agents.make(name, env, base_model=args.base_model)
        result = clenv.run(env, agent, seed=args.seed, evaluation=clenv.Evaluation(forgetting=True), progress=False)
        m = result.metrics
        print(f"  {name:10s} ACC {100 * m['acc']:5.1f}%  BWT {100 * m['bwt']:+6.1f}  ({result.wall_time:.0f} s)")
        print(f"    after the last task ({names[-1]}), {sentence!r} -> {transform(agent, sentence)!r}")

    print(f"2. one LoRA adapter per task, merged by Task Arithmetic (scale {1 / len(names):.2f})")
    vectors, alone = [], {}
    for name in names:
        env = gym.make("StyleShiftText-v0", tasks=(name,), num_tasks=1, steps_per_task=args.steps)
        agent = agents.make("lora", env, base_model=args.base_model)
        result = clenv.run(env, agent, seed=args.seed, evaluation=clenv.Evaluation(heldout=True), progress=False)
        vectors.append(task_vector(agent, agent.fresh()))
        alone[name] = result.metrics["test_acc"]
    env = gym.make("StyleShiftText-v0", num_tasks=args.tasks, steps_per_task=args.steps)
    env.reset(seed=args.seed)
    merged = agents.make("lora", env, base_model=args.base_model)
    install_merged(merged, task_arithmetic(vectors, 1 / len(names)))
    for t, name in enumerate(names):
        merged_acc = accuracy(merged, env.unwrapped.test_batches(t))  # per-token, as test_acc is
        print(f"  {name:15s} alone {100 * alone[name]:5.1f}%  merged {100 * merged_acc:5.1f}%  "
              f"{sentence!r} -> {transform(merged, sentence)!r}")


if __name__ == "__main__":
    main()
