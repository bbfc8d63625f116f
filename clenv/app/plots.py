"""PNG figures from saved runs (matplotlib, Agg backend).

Each function takes ``groups``: a dict mapping a label (e.g. ``"RandomLabelFashionMNIST-v0 / base"``) to the runs
(:class:`~clenv.loop.RunResult`, usually seeds) of that configuration, draws the mean over runs (and a +/- std band
where a curve is drawn), writes the PNG atomically and returns its path, or None when no run has the data.

- :func:`learning_curves`: average online accuracy per task (NeuMoSync Figure 2 style), one line per label.
- :func:`accuracy_matrices`: R[i][j] heatmaps (rows: after task i; columns: task j).
- :func:`stability_curves`: continual-evaluation accuracy of every seen task over steps, task switches marked.
- :func:`diagnostics_over_tasks`: dormant ratio, feature rank, weight magnitude, zero-gradient fraction per task.
- :func:`agent_traces`: an agent's own per-step signals (``records["agent_diagnostics"]``, e.g. NeuMoSync's
  per-layer coefficient means, its Figure 4), one panel per signal family, one line per layer.
- :func:`mask_tiling`: the stored training masks of mask-routed agents on their D x D grid, one RGB tile per seed,
  one colour per task (FTN Figures 1 and 4).
- :func:`task_curves`: each task's score after training through task i under mask recovery (``records
  ["perf_recovered"]``, FTN Figure 3), one panel per label, one curve per task.
- :func:`save_figure`: the atomic PNG writer they share, for figures of your own.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from clenv.results import atomic_write_bytes

__all__ = ["learning_curves", "accuracy_matrices", "stability_curves", "diagnostics_over_tasks", "agent_traces",
           "mask_tiling", "mask_rgb", "task_curves", "save_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically, close it, and return the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Stack ragged 1-D series by truncating to the shortest (seeds of one config have equal lengths)."""
    n = min(len(r) for r in rows)
    return np.stack([np.asarray(r, dtype=np.float64)[:n] for r in rows])


def _integer_ticks(ax, axis="x"):
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def _band(ax, x, data, label):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN points (a diagnostic not recorded) stay NaN
        mean = np.nanmean(data, 0)
        std = np.nanstd(data, 0, ddof=1) if data.shape[0] > 1 else None
    line, = ax.plot(x, mean, label=label)
    if std is not None:
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def learning_curves(groups: dict, path) -> Path | None:
    """Online task accuracy against task index, one panel per env, one line per agent."""
    plt = _plt()
    by_env: dict[str, list] = {}
    for label, runs in groups.items():
        # RL streams' per-step reward is no accuracy (rl_returns plots their returns)
        runs = [r for r in runs if r.task_accuracy and "avg_task_return" not in r.metrics]
        if runs:
            by_env.setdefault(runs[0].env_id or "env", []).append((label, runs))
    if not by_env:
        return None
    fig, axes = plt.subplots(1, len(by_env), figsize=(5.5 * len(by_env), 4), squeeze=False, layout="constrained")
    for ax, (env, items) in zip(axes[0], by_env.items()):
        for label, runs in items:
            data = _stack([np.asarray(r.task_accuracy) for r in runs])
            _band(ax, np.arange(data.shape[1]), data, f"{runs[0].agent} (n={len(runs)})")
        ax.set(title=env, xlabel="task", ylabel="average online task accuracy", ylim=(0, 1))
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def accuracy_matrices(groups: dict, path) -> Path | None:
    """Mean held-out accuracy matrix R per label (rows: after training task i, columns: task j)."""
    plt = _plt()
    items = [(label, [r.records["accuracy_matrix"] for r in runs if "accuracy_matrix" in r.records])
             for label, runs in groups.items()]
    items = [(label, ms) for label, ms in items if ms]
    if not items:
        return None
    fig, axes = plt.subplots(1, len(items), figsize=(4.6 * len(items), 4), squeeze=False, layout="constrained")
    for ax, (label, ms) in zip(axes[0], items):
        n = min(m.shape[0] for m in ms)
        R = np.nanmean(np.stack([np.asarray(m, dtype=np.float64)[:n, :n] for m in ms]), 0)
        im = ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if R[i, j] < 0.5 else "black")
        ax.set(title=f"{label} (n={len(ms)})", xlabel="evaluated task j", ylabel="after training task i")
        _integer_ticks(ax, "x")
        _integer_ticks(ax, "y")
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


_TASK_COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float64)


def mask_rgb(masks: np.ndarray, side: int) -> np.ndarray:
    """(tasks, H) binary masks as a (D, D, 3) image: task t's slots in colour t (red, green, blue, then yellow,
    magenta, cyan), summed and clipped per channel, so slots shared by tasks show mixed colours."""
    m = np.asarray(masks, dtype=np.float64)
    colours = _TASK_COLOURS[np.arange(m.shape[0]) % len(_TASK_COLOURS)]
    return np.clip(m.T @ colours, 0.0, 1.0).reshape(int(side), int(side), 3)


def mask_tiling(groups: dict, path, max_seeds: int = 8) -> Path | None:
    """One row per label, one tile per seed (up to ``max_seeds``): the stored masks (``records["masks_stored"]``)
    on the ``records["mask_grid"]`` grid as RGB overlays, one colour per task. Runs whose every mask is all ones
    (NoMask, EWC, LoRA-Naive: no routing) are left out; their tiles would be uniformly white."""
    plt = _plt()

    def routed(r) -> bool:
        return "masks_stored" in r.records and "mask_grid" in r.records and not np.all(
            np.asarray(r.records["masks_stored"]) > 0.5)

    items = [(label, [r for r in runs if routed(r)][:max_seeds]) for label, runs in groups.items()]
    items = [(label, rs) for label, rs in items if rs]
    if not items:
        return None
    cols = max(len(rs) for _, rs in items)
    fig, axes = plt.subplots(len(items), cols, figsize=(max(4.0, 1.9 * cols + 0.8), 2.1 * len(items) + 0.4),
                             squeeze=False, layout="constrained")
    for row, (label, rs) in zip(axes, items):
        for ax in row:
            ax.axis("off")
        for ax, r in zip(row, rs):
            ax.imshow(mask_rgb(r.records["masks_stored"], int(r.records["mask_grid"])), interpolation="nearest")
            ax.set_title(f"seed {r.seed}", fontsize=8)
        row[0].text(-0.08, 0.5, label, transform=row[0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
    fig.suptitle("Stored training masks on the component grid\n(one colour per task; mixed: shared slots)",
                 fontsize=9)
    return save_figure(fig, path)


def stability_curves(groups: dict, path) -> Path | None:
    """Continual evaluation: each task's held-out accuracy over training steps (mean over runs), the task switches as
    dashed lines, and the worst-case accuracy WC-ACC in black."""
    plt = _plt()
    items = [(label, [r for r in runs if "stability_acc" in r.records]) for label, runs in groups.items()]
    items = [(label, runs) for label, runs in items if runs]
    if not items:
        return None
    fig, axes = plt.subplots(len(items), 1, figsize=(9, 3.2 * len(items)), squeeze=False, layout="constrained")
    for ax, (label, runs) in zip(axes[:, 0], items):
        n = min(len(r.records["stability_step"]) for r in runs)
        steps = np.asarray(runs[0].records["stability_step"])[:n]
        acc = np.stack([np.asarray(r.records["stability_acc"], dtype=np.float64)[:n] for r in runs])
        block = np.asarray(runs[0].records["stability_block"])[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # tasks not yet seen are all-NaN columns
            mean = np.nanmean(acc, 0)
        for j in range(mean.shape[1]):
            if np.isfinite(mean[:, j]).any():
                ax.plot(steps, mean[:, j], lw=1.2, label=f"task {j}")
        wc = np.nanmean(np.stack([np.asarray(r.records["stability_wc_acc"], dtype=np.float64)[:n] for r in runs]), 0)
        ax.plot(steps, wc, color="black", lw=1.5, ls=":", label="WC-ACC")
        for s in steps[:-1][np.diff(block) > 0]:  # the last evaluation of each task (its fin_k)
            ax.axvline(s, color="grey", ls="--", lw=0.8)
        ax.set(title=f"{label} (n={len(runs)})", xlabel="step", ylabel="held-out accuracy", ylim=(0, 1))
        ax.legend(fontsize=7, ncol=min(6, mean.shape[1] + 1), loc="upper right")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def first_task_around_switches(groups: dict, path, signal: str = "gain") -> Path | None:
    """The stability gap as the NGM-SGD paper draws it: task 0's held-out accuracy over training for every method of
    an env (mean over runs, a band of one std), task switches dashed, and under it each method's traced ``signal``
    (``records["agent_diagnostics"][signal]``, e.g. NGM-SGD's gain) where it has one. Groups are "env / method"."""
    plt = _plt()
    by_env: dict[str, list] = {}
    for label, runs in groups.items():
        runs = [r for r in runs if "stability_acc" in r.records]
        if runs:
            env, _, method = label.partition(" / ")
            by_env.setdefault(env, []).append((method or label, runs))
    if not by_env:
        return None
    fig, axes = plt.subplots(2, len(by_env), figsize=(7 * len(by_env), 6), squeeze=False, sharex="col",
                             height_ratios=(3, 1), layout="constrained")
    for col, (env, methods) in enumerate(sorted(by_env.items())):
        top, bottom = axes[0, col], axes[1, col]
        traced = False
        for i, (method, runs) in enumerate(methods):
            n = min(len(r.records["stability_step"]) for r in runs)
            steps = np.asarray(runs[0].records["stability_step"])[:n]
            first = np.stack([np.asarray(r.records["stability_acc"], dtype=np.float64)[:n, 0] for r in runs])
            _band(top, steps, first, f"{method} (n={len(runs)})")
            series = [r.records.get("agent_diagnostics", {}) for r in runs]
            if all(signal in d for d in series):
                m = min(len(d[signal]) for d in series)
                bottom.plot(np.asarray(series[0]["step"])[:m], np.mean([d[signal][:m] for d in series], 0),
                            color=f"C{i}", lw=1.2, label=method)
                traced = True
        block = np.asarray(methods[0][1][0].records["stability_block"])
        steps = np.asarray(methods[0][1][0].records["stability_step"])
        for s in steps[:-1][np.diff(block) > 0]:
            top.axvline(s, color="grey", ls=":", lw=0.8)
            bottom.axvline(s, color="grey", ls=":", lw=0.8)
        top.set(title=env, ylabel="task 0 held-out accuracy", ylim=(0, 1))
        top.legend(fontsize=7)
        top.grid(alpha=0.3)
        bottom.set(xlabel="step", ylabel=signal if traced else f"({signal} not traced)")
        bottom.grid(alpha=0.3)
    return save_figure(fig, path)


_DIAG = ("dormant_ratio", "feature_rank", "weight_magnitude", "zero_grad_fraction")


def diagnostics_over_tasks(groups: dict, path, keys=_DIAG) -> Path | None:
    """The pooled plasticity diagnostics recorded at each task end, one panel per diagnostic."""
    plt = _plt()
    items = [(label, [r for r in runs if r.records.get("diagnostics")]) for label, runs in groups.items()]
    items = [(label, runs) for label, runs in items if runs]
    if not items:
        return None
    cols = 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    for ax, key in zip(axes.ravel(), keys):
        for label, runs in items:
            series = [np.array([d.get(key, np.nan) if d.get(key) is not None else np.nan
                                for d in _first_network(r.records["diagnostics"])], dtype=np.float64) for r in runs]
            data = _stack(series)
            _band(ax, np.arange(data.shape[1]), data, label)
        ax.set(title=key, xlabel="task")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    return save_figure(fig, path)


def _first_network(rows: list[dict]) -> list[dict]:
    """RL diagnostics name their network (PPO: actor and critic rows per task): keep the first one's rows."""
    first = rows[0].get("network") if rows else None
    return [d for d in rows if d.get("network") == first]


def rl_returns(groups: dict, path) -> Path | None:
    """RL runs: per-task mean episode return (left) and, for streams that revisit tasks, each revisit's return
    minus its first visit's by visit number (right); mean +/- std over seeds, one line per configuration."""
    plt = _plt()
    items = [(label, [r for r in runs if "avg_task_return" in r.metrics and r.records.get("episodes")])
             for label, runs in groups.items()]
    items = [(label, runs) for label, runs in items if runs]
    if not items:
        return None
    revisits = any(r.records.get("revisits") for _, runs in items for r in runs)
    fig, axes = plt.subplots(1, 2 if revisits else 1, figsize=(11 if revisits else 5.5, 4), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    for label, runs in items:
        data = _stack([np.asarray(r.task_return, dtype=np.float64) for r in runs])
        _band(ax, np.arange(data.shape[1]), data, f"{label} (n={len(runs)})")
    ax.set(xlabel="task (stream order)", ylabel="mean episode return")
    _integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if revisits:
        bx = axes[0, 1]
        for label, runs in items:
            per_run = []
            for r in runs:
                rows = r.records.get("revisits") or []
                visits = sorted({row["visit"] for row in rows if row["visit"] > 0})
                per_run.append(np.array([np.nanmean([row["change"] if row["change"] is not None else np.nan
                                                     for row in rows if row["visit"] == v]) for v in visits]))
            data = _stack(per_run)
            if data.size:
                _band(bx, np.arange(1, data.shape[1] + 1), data, label)
        bx.axhline(0, color="k", lw=0.8)
        bx.set(xlabel="visit (1 = first revisit)", ylabel="return - first visit's return")
        _integer_ticks(bx)
        bx.grid(alpha=0.3)
        bx.legend(fontsize=7)
    return save_figure(fig, path)


def agent_traces(groups: dict, path, families=None) -> Path | None:
    """The agent's traced signals over steps (mean over runs, +/- std), task switches as dashed lines.

    Signals named ``family/part`` (``alpha_sm/fc0``) share the panel ``family`` with one line per part; a signal
    without ``/`` gets its own panel. ``families`` picks and orders panels (default: all, in first-seen order)."""
    plt = _plt()
    items = [(label, [r for r in runs if r.records.get("agent_diagnostics")]) for label, runs in groups.items()]
    items = [(label, runs) for label, runs in items if runs]
    if not items:
        return None
    panels: dict[str, list[str]] = {}
    for _, runs in items:
        for key in runs[0].records["agent_diagnostics"]:
            if key != "step":
                fam = key.split("/", 1)[0]
                if key not in panels.setdefault(fam, []):
                    panels[fam].append(key)
    names = [f for f in (families or panels) if f in panels]
    if not names:
        return None
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    for ax, fam in zip(axes.ravel(), names):
        for label, runs in items:
            n = min(len(r.records["agent_diagnostics"]["step"]) for r in runs)
            steps = np.asarray(runs[0].records["agent_diagnostics"]["step"])[:n]
            for key in panels[fam]:
                series = [r.records["agent_diagnostics"].get(key) for r in runs]
                series = [np.asarray(v, dtype=np.float64)[:n] for v in series if v is not None]
                if series:
                    part = key.split("/", 1)[1] if "/" in key else key
                    _band(ax, steps, np.stack(series), part if len(items) == 1 else f"{label}: {part}")
        for s in np.cumsum(items[0][1][0].task_steps)[:-1]:
            ax.axvline(s, color="grey", ls="--", lw=0.8)
        ax.set(title=fam, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    if len(items) == 1:
        fig.suptitle(items[0][0])
    return save_figure(fig, path)


def _task_names(run, n: int) -> list[str]:
    """The stream's task names where the run's env has them (the style-shift stream's transformations)."""
    env = (run.config or {}).get("env") or {}
    if env.get("tasks"):
        return [str(t) for t in env["tasks"]][:n]
    if str(run.env_id or "").startswith("StyleShiftText"):
        from clenv.envs.style_shift import TRANSFORMS

        return list(TRANSFORMS)[:n]
    return [f"task {j}" for j in range(n)]


def task_curves(groups: dict, path, record: str = "perf_recovered") -> Path | None:
    """FTN Figure 3: one panel per label, one curve per task j, x = "after training through task i" (i >= j), y =
    the task's score in ``records[record]`` (the mask-recovery matrix; per-token CE on language streams), mean over
    runs with a band of one std."""
    plt = _plt()
    items = [(label, [r for r in runs if record in r.records and np.ndim(r.records[record]) == 2
                      and np.shape(r.records[record])[0] >= 2]) for label, runs in groups.items()]
    items = [(label, runs) for label, runs in items if runs]
    if not items:
        return None
    cols = min(3, len(items))
    rows = math.ceil(len(items) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax, (label, runs) in zip(axes.ravel(), items):
        n = min(np.shape(r.records[record])[0] for r in runs)
        data = np.stack([np.asarray(r.records[record], dtype=np.float64)[:n, :n] for r in runs])
        metric = next((m for m in ("ce", "mse") if m in runs[0].metrics), "acc")
        for j, name in enumerate(_task_names(runs[0], n)):
            _band(ax, np.arange(j, n), data[:, j:, j], name)
        ax.set(title=f"{label} (n={len(runs)})", xlabel="after training through task i",
               ylabel={"ce": "per-token CE (test)", "mse": "MSE (test)"}.get(metric, "accuracy (test)"))
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(items):]:
        ax.set_visible(False)
    fig.suptitle("Per-task score through the stream (mask-recovery protocol)", fontsize=9)
    return save_figure(fig, path)
