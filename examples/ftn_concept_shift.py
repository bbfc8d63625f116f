"""Functional Task Networks on the concept-shift stream: FTN-Slow against FixedMask and NoMask, both protocols.

Trains each method on ConceptShiftClassification-v0 (3 tasks that ask for unrelated functions of the same inputs),
evaluates every task after every task under its stored training mask and under a mask recovered from a support batch
(``clenv.Evaluation(masks=True)``), prints ACC / FM for both and draws the stored masks on the grid
(``ftn_masks.png``, one colour per task, FTN Figure 1).

    python examples/ftn_concept_shift.py            # a 16 x 16 grid (H = 256, k = 32), a few minutes on one core
    python examples/ftn_concept_shift.py --full     # Experiment 1's H = 1,024 on 32 x 32, k = 128 (~10 min a run)
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import agents
import clenv
from clenv.app.plots import mask_tiling


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the paper's model size")
    p.add_argument("--steps", type=int, default=1000, help="steps per task (the paper: 1,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="ftn_masks.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    size = {} if args.full else dict(num_neurons=256, k=32)
    groups = {}
    print(f"{'method':10s} {'ACC':>6s} {'FM':>6s} {'ACC stored':>11s} {'FM stored':>10s} {'mask overlap':>13s}")
    for name in ("ftn_slow", "fixed_mask", "no_mask"):
        env = gym.make("ConceptShiftClassification-v0", steps_per_task=args.steps)
        agent = agents.make(name, env, **size)
        result = clenv.run(env, agent, seed=args.seed, evaluation=clenv.Evaluation(masks=True), progress=False)
        m = result.metrics
        print(f"{name:10s} {m['acc']:6.3f} {m['fm']:6.3f} {m['acc_stored']:11.3f} {m['fm_stored']:10.3f} "
              f"{m['mask_overlap']:13.2f}")
        groups[name] = [result]
    print(f"wrote {mask_tiling(groups, args.out)}")


if __name__ == "__main__":
    main()
