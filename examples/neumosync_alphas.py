"""NeuMoSync's modulation signals from one run: per-layer coefficient means over steps (the paper's Figure 4) and the
per-neuron coefficient distributions at every task end (Figures 14 and 15).

The run records them through :class:`clenv.Evaluation` (``agent_traces=True``): the agent's ``trace()`` (per-layer
means of a_SM, a_WC, a_AL, a_ARM and mean |a_SM| on the training batch) every ``--trace-every`` steps, and its
``diagnostics()`` (per-neuron means over the batch) at each task end. Both are saved with the run, so
``clenv report`` redraws the first figure (``agent_traces.png``) from the result files.

    python examples/neumosync_alphas.py [--tasks 4] [--samples 256] [--epochs 10] [--out runs/neumosync_alphas]

Writes ``alpha_traces.png`` and ``alpha_distributions.png`` under ``--out`` and prints their paths. Defaults run in
about 20 s on one CPU thread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv
from clenv.app import plots

#: The four coefficients in the order the agent reports them, with the paper's names.
COEFFICIENTS = (("sm", "a_SM (synaptic)"), ("wc", "a_WC (consolidation)"), ("al", "a_AL (PReLU slope)"),
                ("arm", "a_ARM (offset)"))


def distributions(result, path: Path) -> Path:
    """One row per coefficient, one column per layer: the per-neuron values at each task end, a histogram per task
    (Figures 14 and 15)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ends = result.records["agent_trace"]
    layers = ends[0]["layers"]
    fig, axes = plt.subplots(len(COEFFICIENTS), len(layers), figsize=(3.6 * len(layers), 2.4 * len(COEFFICIENTS)),
                             squeeze=False, layout="constrained")
    colours = plt.cm.viridis(np.linspace(0, 1, len(ends)))
    for i, (c, title) in enumerate(COEFFICIENTS):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            for colour, end in zip(colours, ends):
                values = np.asarray(end["alpha"][c].get(layer, []), dtype=np.float64)
                if values.size:
                    ax.hist(values, bins=30, histtype="step", color=colour, label=f"task {end['task_id']}")
            if not any(layer in end["alpha"][c] for end in ends):
                ax.text(0.5, 0.5, "no activation here", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{title}, {layer}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("per-neuron coefficients (mean over the last batch) at each task end")
    return plots.save_figure(fig, path)


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="RandomLabelFashionMNIST-v0")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace-every", type=int, default=4)
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip the gradient norm (not in the paper)")
    p.add_argument("--out", default="runs/neumosync_alphas")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.tasks < 1 or args.samples < 1 or args.epochs < 1 or args.trace_every < 1:
        p.error("--tasks, --samples, --epochs and --trace-every must be >= 1")
    torch.set_num_threads(args.threads)

    env = gym.make(args.env, num_tasks=args.tasks, samples_per_task=args.samples, epochs_per_task=args.epochs,
                   augment=False)
    agent = agents.make("neumosync", env, seed=args.seed, max_grad_norm=args.max_grad_norm)
    result = clenv.run(env, agent, seed=args.seed, evaluation=clenv.Evaluation(trace_every=args.trace_every))
    print(f"NeuMoSync on {args.env}: per-task online accuracy "
          + " ".join(f"{100 * a:.1f}" for a in result.task_accuracy))
    out = Path(args.out)
    written = [plots.agent_traces({f"NeuMoSync on {args.env}, seed {args.seed}": [result]}, out / "alpha_traces.png"),
               distributions(result, out / "alpha_distributions.png")]
    for w in written:
        print(f"wrote {w}")
    return written


if __name__ == "__main__":
    main()
