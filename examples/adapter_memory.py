"""Task adapters stored in associative memories (004_49f6201e6e679480.txt): train one q / v LoRA adapter + head per
task of Split Fashion-MNIST on a frozen ViT, write each to the exact store, a Modern Hopfield memory and BayesPCN, then
switch tasks by recalling adapters: from the task id (TIL) and from the image alone through a task predictor (MTS).

    python examples/adapter_memory.py                        # the registered protocol, about 11 min on one core
    python examples/adapter_memory.py --samples-per-class 300 --predictor-epochs 2   # about 2 min

The base ViT was pretrained on scikit-learn's digits (upsampled), never on Fashion-MNIST; the first run trains and
caches it (about 2 min). Prints per-task accuracy with each memory's recalled adapters, D = FAA_GT - FAA, the recall
errors and what each memory costs in bytes, then shows that a recalled vector of the wrong layout is refused.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import agents
import clenv


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples-per-class", type=int, default=None, help="default: every training image")
    p.add_argument("--predictor-epochs", type=int, default=10, help="the task predictor's epochs (the paper: 10)")
    p.add_argument("--base-model", default="pretrained", help="'pretrained' (default) or 'random'")
    p.add_argument("--recall-samples", type=int, default=None, help="test images per task (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    kw = {} if args.samples_per_class is None else {"samples_per_class": args.samples_per_class}
    env = gym.make("SplitFashionMNIST-5S-v0", **kw)
    agent = agents.make("adapter_memory", env, base_model=args.base_model, predictor_epochs=args.predictor_epochs)
    result = clenv.run(env, agent, seed=args.seed, evaluation=clenv.Evaluation(adapter_recall=True,
                                                                             recall_samples=args.recall_samples))
    m, rec = result.metrics, result.records["adapter_recall"]

    print(f"\n{'task':<6}" + "".join(f"{name:>11}" for name in rec["memories"]) + f"{'MTS (H)':>11}{'task acc':>10}")
    for i, t in enumerate(rec["tasks"]):
        row = "".join(f"{100 * rec['til_accuracy'][name][i]:>10.2f}%" for name in rec["memories"])
        print(f"{t:<6}{row}{100 * rec['mts_accuracy']['hopfield'][i]:>10.2f}%{100 * rec['task_accuracy'][i]:>9.2f}%")
    print(f"\nFAA_GT {100 * m['faa_gt']:.2f}%   TIL: D_Hopfield {100 * m['d_til_hopfield']:+.3f}  "
          f"D_BayesPCN {100 * m['d_til_bayespcn']:+.3f} (points)")
    print(f"MTS: task accuracy {100 * m['task_acc']:.2f}%, FAA {100 * m['faa_mts_hopfield']:.2f}%, "
          f"D {100 * m['d_mts_hopfield']:+.2f}")
    print(f"recall error ||theta - recalled||: Hopfield {m['recall_error_hopfield']:.2e}, "
          f"BayesPCN {m['recall_error_bayespcn']:.2e}")
    print(f"bytes: every adapter {m['adapter_bytes']:,.0f}; Hopfield {m['memory_bytes_hopfield']:,.0f}; "
          f"BayesPCN {m['memory_bytes_bayespcn']:,.0f} (a fixed size, however many adapters)")

    # A vector of another layout is refused before anything is installed.
    wrong = agent.recalled_adapter(rec["tasks"][0], "hopfield")[:-1]
    try:
        with agent.using_adapter(wrong):
            pass
    except ValueError as err:
        print(f"\nrefused: {err}")
    return m


if __name__ == "__main__":
    main()
