"""The stability gap under joint training: NGM-SGD against momentum-SGD and Adam (arXiv 2507.14056, Table 1).

Runs each agent on each joint stream for several seeds, evaluates after every iteration (and once before the first)
and prints, per stream and agent:

- the NGM scripts' block arithmetic on task-1 accuracy (``ngm_compat``, spec 1.6): avg-ACC, avg-min-ACC, WC-ACC and
  avg-SG, as the mean +- sample std over seeds and, beside it, computed on the seed-mean curve with the authors'
  delta-method error bar (the per-iteration std across seeds propagated through each ratio);
- De Lange et al.'s min-ACC / WC-ACC and the SG of each context just finished, on every context's own held-out set;
- the wall time.

``--json PATH`` keeps the curves (task-1 accuracy, gain, entropy per iteration) and the per-seed metrics;
``--figure PATH`` draws task-1 accuracy around the switches with the gain trace under it.

    python examples/ngm_stability_gap.py                                  # both Fashion-MNIST streams, 5 seeds
    python examples/ngm_stability_gap.py --envs JointSplitFashionMNIST-v0 --seeds 42 --agents ngm_sgd,adam
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv
from clenv.envs.supervised import SupervisedStreamEnv
from clenv.loop import Callback
from clenv.metrics.stability import continual_eval_metrics, ngm_stability, ngm_stability_delta

PAPER_SG = {  # avg-SG, spec 1.7 ([2nd]); the Fashion-MNIST streams stand in for the MNIST benchmarks
    "JointSplitFashionMNIST-v0": {"ngm_sgd": 0.017, "momentum_sgd": 0.267, "adam": 0.283, "sgd": 0.034},
    "JointRotatedFashionMNIST-v0": {"ngm_sgd": 0.054, "momentum_sgd": 0.117, "adam": 0.092, "sgd": 0.053},
}


class ContextEvaluation(Callback):
    """Accuracy on each context's own held-out samples after every iteration (and before the first).

    The joint env's task k is the union of contexts 0..k; a twin env with ``joint=False`` and the same stream seed
    serves context k alone. Context 0 (task 1 of the paper) is evaluated on ``first`` samples, the others on
    ``other``, each a fixed subset. Contexts not yet seen are NaN."""

    def __init__(self, first: int = 1000, other: int = 250):
        self.first, self.other = int(first), int(other)

    def on_run_start(self, env, agent, result) -> None:
        u = env.unwrapped
        twin = SupervisedStreamEnv(**{**u.config, "joint": False})
        twin.reset(options={"stream_seed": u.stream_seed})
        self.data = []
        for k in range(u.num_tasks):
            n = self.first if k == 0 else self.other
            xs, ys = zip(*twin.test_batches(k, batch_size=4096, max_samples=n))
            self.data.append((agent.preprocess(torch.cat(xs)), torch.cat(ys)))
        self.acc, self.block, self.seen = [], [], 0
        self._evaluate(agent, 0)

    def on_step(self, env, agent, step) -> None:
        self._evaluate(agent, int(step["task_id"]))

    def _evaluate(self, agent, block: int) -> None:
        row = np.full(len(self.data), np.nan)
        for k in range(block + 1):
            x, y = self.data[k]
            row[k] = float((agent.predict(x).argmax(1) == y).float().mean())
        self.acc.append(row)
        self.block.append(block)

    def on_run_end(self, env, agent, result) -> None:
        acc, block = np.stack(self.acc), np.asarray(self.block)
        result.records["context_acc"], result.records["context_block"] = acc, block
        result.metrics.update({f"delange/{k}": v for k, v in continual_eval_metrics(acc, block).items()})
        result.metrics.update(ngm_stability(acc[:, 0], block))


def parse_agent(spec: str) -> tuple[str, dict]:
    """``"name"`` or ``"name[key=value;key=value]"`` (values read as Python literals): a table row with explicit
    hyperparameters, e.g. ``adam[lr=0.001]``, ``ngm_sgd[gain_on='head']``."""
    import ast

    name, _, rest = spec.partition("[")
    kw = {}
    for item in filter(None, rest.rstrip("]").split(";")):
        key, _, value = item.partition("=")
        try:
            kw[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kw[key.strip()] = value.strip()
    return name.strip(), kw


def run_one(env_id: str, agent_spec: str, seed: int, first: int, other: int) -> dict:
    env = gym.make(env_id)
    name, kw = parse_agent(agent_spec)
    agent = agents.make(name, env, seed=seed, **kw)
    agent_name = agent_spec
    probe = ContextEvaluation(first, other)
    t0 = time.perf_counter()
    result = clenv.run(env, agent, seed=seed, callbacks=[probe], evaluation=clenv.Evaluation(agent_traces=True),
                       progress=False)
    wall = time.perf_counter() - t0
    traces = result.records.get("agent_diagnostics", {})
    return {"env": env_id, "agent": agent_name, "seed": seed, "wall_s": wall,
            "hparams": {k: (list(v) if isinstance(v, tuple) else v) for k, v in agent.hparams.items()},
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "task1": result.records["context_acc"][:, 0].tolist(), "block": result.records["context_block"].tolist(),
            "gain": np.asarray(traces.get("gain", [])).tolist(), "entropy": np.asarray(traces.get("entropy", [])).tolist()}


def table(runs: list[dict]) -> str:
    lines = []
    for env_id in dict.fromkeys(r["env"] for r in runs):
        lines.append(f"\n{env_id}  (accuracies in %, avg-SG relative; mean +- std over seeds | seed-mean curve +- "
                     f"delta method)")
        head = (f"{'agent':<28}{'seeds':>5} | {'avg-ACC':>12}{'avg-min-ACC':>13}{'WC-ACC':>12}{'avg-SG':>14}"
                f" | {'avg-SG (delta)':>16} | {'DL min-ACC':>11}{'DL WC-ACC':>10}{'DL avg-SG':>10}"
                f" | {'paper SG':>8} | {'wall s':>7}")
        lines += [head, "-" * len(head)]
        for name in dict.fromkeys(r["agent"] for r in runs if r["env"] == env_id):
            rs = [r for r in runs if r["env"] == env_id and r["agent"] == name]

            def ms(key, scale=1.0):
                v = np.array([r["metrics"][key] for r in rs]) * scale
                return f"{v.mean():.2f}+-{v.std(ddof=1) if len(v) > 1 else 0:.2f}" if scale != 1 else \
                    f"{v.mean():.3f}+-{v.std(ddof=1) if len(v) > 1 else 0:.3f}"
            d = ngm_stability_delta(np.array([r["task1"] for r in rs]), np.array(rs[0]["block"]))
            paper = PAPER_SG.get(env_id, {}).get(parse_agent(name)[0] if "[" not in name else None)
            lines.append(f"{name:<28}{len(rs):>5} | {ms('ngm_avg_acc', 100):>12}{ms('ngm_avg_min_acc', 100):>13}"
                         f"{ms('ngm_wc_acc', 100):>12}{ms('ngm_avg_sg'):>14} | "
                         f"{d['ngm_avg_sg'][0]:.3f}+-{d['ngm_avg_sg'][1]:.3f}".rjust(16) +
                         f" | {ms('delange/min_acc', 100):>12}{ms('delange/wc_acc', 100):>13}"
                         f"{np.mean([r['metrics']['delange/avg_sg'] for r in rs]):>10.3f}"
                         f" | {paper if paper is not None else '-':>8} | {np.mean([r['wall_s'] for r in rs]):>7.1f}")
    return "\n".join(lines)


def figure(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in runs))
    fig, axes = plt.subplots(2, len(envs), figsize=(6 * len(envs), 6), sharex="col", squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for j, env_id in enumerate(envs):
        for name in dict.fromkeys(r["agent"] for r in runs if r["env"] == env_id):
            rs = [r for r in runs if r["env"] == env_id and r["agent"] == name]
            curve = 100 * np.array([r["task1"] for r in rs])
            t = np.arange(curve.shape[1])
            line, = axes[0, j].plot(t, curve.mean(0), label=name, lw=1)
            axes[0, j].fill_between(t, curve.mean(0) - curve.std(0), curve.mean(0) + curve.std(0), alpha=0.2,
                                    color=line.get_color())
            if rs[0]["gain"] and name.startswith("ngm"):
                axes[1, j].plot(np.arange(1, len(rs[0]["gain"]) + 1), np.mean([r["gain"] for r in rs], 0),
                                color=line.get_color(), label=f"{name} gain")
        block = np.array([r for r in runs if r["env"] == env_id][0]["block"])
        for s in np.flatnonzero(np.diff(block)) + 1:
            for ax in axes[:, j]:
                ax.axvline(s, color="grey", ls=":", lw=0.8)
        axes[0, j].set(title=env_id, ylabel="task-1 accuracy (%)")
        axes[1, j].set(xlabel="iteration", ylabel="gain g")
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="JointSplitFashionMNIST-v0,JointRotatedFashionMNIST-v0")
    ap.add_argument("--agents", default="ngm_sgd,momentum_sgd,adam",
                    help="comma-separated; name[key=value;...] for explicit hyperparameters, e.g. adam[lr=0.001]")
    ap.add_argument("--seeds", default="42,43,44,45,46", help="the scripts' base seed 42 and the next four")
    ap.add_argument("--first", type=int, default=1000, help="held-out samples of context 1 (task-1 accuracy)")
    ap.add_argument("--other", type=int, default=250, help="held-out samples of each later context")
    ap.add_argument("--json", default=None, help="write every run (curves, metrics) here; appended as it goes")
    ap.add_argument("--load", default=None, help="print the table (and figure) of a --json file, running nothing")
    ap.add_argument("--figure", default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.load:
        runs = json.load(open(a.load))
    else:
        runs = []
        for env_id in a.envs.split(","):
            for name in a.agents.split(","):
                for seed in (int(s) for s in a.seeds.split(",")):
                    runs.append(run_one(env_id, name, seed, a.first, a.other))
                    m = runs[-1]["metrics"]
                    print(f"{env_id} {name} seed {seed}: ngm avg-SG {m['ngm_avg_sg']:.3f} avg-ACC "
                          f"{100 * m['ngm_avg_acc']:.1f} ({runs[-1]['wall_s']:.0f} s)", flush=True)
                    if a.json:
                        json.dump(runs, open(a.json, "w"))
    print(table(runs))
    if a.figure:
        figure(runs, a.figure)


if __name__ == "__main__":
    main()
