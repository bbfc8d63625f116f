"""``clenv report RUN_DIR... [--out DIR]``: aggregate saved runs into mean (std) tables and PNG figures.

Runs (directories with ``result.json``, found at or below each RUN_DIR) are grouped by their full configuration (env
id and kwargs, agent and hyperparameters: :func:`clenv.app.spec.group_identity`); the seeds of a group are aggregated
as "mean (std)" with the sample standard deviation (ddof=1; 0 for one seed). A row is named by its agent; when one
agent ran under several configurations, each row adds what sets it apart (``base[lr=0.001]``) and the report says so.
Tables follow the papers' layouts, one table per env with one row per configuration:

- online accuracy over the last 10/25/50/75/100% of tasks (NeuMoSync Tables 2, 27-33);
- fast adaptation: BKT_γ/2, BKT_γ, BKT_mean, FKT_γ/2, FKT_γ, FKT_mean, LCA_0, LCA_F, LCA_B, final accuracy (Table 1);
- forgetting: ACC, AF (Chaudhry), AF (NeuMoSync App. F), BWT, FWT, FM, last-25% accuracy (Table 3);
- stability gap: min-ACC, WC-ACC, avg-SG, the NGM-SGD script's versions and its avg-SG on the seed-mean curve with
  delta-method error bars (the authors' error bars);
- plasticity diagnostics at the last task end;
- RL: mean episode return per task, and the return on revisited tasks against their first visit;
- mask routing (FTN Tables 1, 2 and 3, as fractions; per-token CE on language streams): mask-recovery and stored-mask
  scores, recall error, mask overlap, Table 4's decomposition against FixedMask (training-time overlap, recall error)
  and Table 5's pairwise overlap of the stored masks;
- adapter merging (NeuroLoRA Table 2, the summaries ``clenv reproduce neurolora_table2`` saves): the single-task
  adapters' average, Task Arithmetic and TIES, their relative change and the coefficients picked.

Accuracy-like metrics are shown in percent (as in the papers); ratios, ranks and magnitudes as they are. A table
appears only when some run has its own metrics (the online columns a probe table repeats for context do not count).
Writes ``report.md``, ``metrics.csv`` (every metric: mean, std, n) and ``learning_curves.png``,
``accuracy_matrix.png``, ``stability_gap.png``, ``first_task_stability.png`` (task 0 around each switch with the
agent's gain trace, NGM-SGD's figure), ``diagnostics.png``, ``mask_tiling.png`` (FTN Figures 1 / 4),
``task_curves.png`` (FTN Figure 3: each task's score after training through task i, mask-recovery protocol),
``rl_returns.png`` (RL: per-task mean episode return, and each revisit's return against its first visit) into
``--out`` (default ``./report``), and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from clenv.app.paper_tables import MEMORY_COLUMNS, MERGE_COLUMNS
from clenv.app.spec import canonical, group_identity, identity_key
from clenv.results import atomic_write_bytes, find_runs, load_run

__all__ = ["report_main", "aggregate", "TABLES", "MASK_TABLE", "MERGE_TABLE", "format_table", "decomposition",
           "decomposition_tables", "overlap_tables", "mask_metric"]

MASK_TABLE = "Mask routing (FTN Tables 1, 2): mask recovery, the stored masks, what recovery loses"
MERGE_TABLE = ("Adapter merging (NeuroLoRA Table 2): single-task adapters, Task Arithmetic and TIES (accuracies in %, "
               "rel.: relative change)")
TABLES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Average online task accuracy over the last x% of tasks (%)",
     (("online_acc_last10", "10%"), ("online_acc_last25", "25%"), ("online_acc_last50", "50%"),
      ("online_acc_last75", "75%"), ("online_acc_last100", "100%"))),
    ("Fast adaptation (%)",
     (("bkt_gamma_half", "BKT_γ/2"), ("bkt_gamma", "BKT_γ"), ("bkt", "BKT_mean"), ("fkt_gamma_half", "FKT_γ/2"),
      ("fkt_gamma", "FKT_γ"), ("fkt", "FKT_mean"), ("lca_0", "LCA_0"), ("lca_f", "LCA_F"), ("lca_b", "LCA_B"),
      ("acc", "Final accuracy"))),
    ("Forgetting (%)",
     (("acc", "ACC"), ("af_chaudhry", "AF (Chaudhry)"), ("af_neumosync", "AF (NeuMoSync)"), ("bwt", "BWT"),
      ("fwt", "FWT"), ("fm", "FM"), ("online_acc_last25", "Last 25%"))),
    ("Stability gap (accuracies in %, SG as a ratio)",
     (("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("avg_sg", "avg-SG"), ("wf_10", "WF^10"), ("wp_10", "WP^10"),
      ("ngm_avg_acc", "NGM avg-ACC"),
      ("ngm_avg_min_acc", "NGM avg-min-ACC"), ("ngm_wc_acc", "NGM WC-ACC"), ("ngm_avg_sg", "NGM avg-SG"),
      ("ngm_avg_sg_delta", "NGM avg-SG (δ)"))),
    (MASK_TABLE,
     (("acc", "ACC"), ("mse", "MSE"), ("ce", "CE"), ("fm", "FM"), ("acc_stored", "ACC stored"),
      ("mse_stored", "MSE stored"), ("ce_stored", "CE stored"), ("fm_stored", "FM stored"),
      ("recall_error", "recall error"), ("mask_overlap", "mask overlap"), ("mask_recall", "mask recall"))),
    (MERGE_TABLE, MERGE_COLUMNS),
    ("Adapters recalled from associative memories (TIL / MTS, accuracies in %, D in points)",
     MEMORY_COLUMNS + (("recall_error_hopfield", "recall err (H)"), ("recall_error_bayespcn", "recall err (BPCN)"))),
    ("Plasticity diagnostics at the last task end",
     (("dormant_ratio", "dormant ratio"), ("dead_fraction", "dead fraction"), ("feature_rank", "feature rank"),
      ("weight_magnitude", "weight magnitude"), ("zero_grad_fraction", "zero-grad fraction"))),
    ("Held-out test accuracy (%)", (("test_acc", "test acc"), ("avg_online_acc", "avg online acc"))),
    ("Mean episode return per task (RL streams)",
     (("avg_task_return", "all tasks"), ("task_return_last25", "last 25%"), ("task_return_last10", "last 10%"))),
    ("Return on revisited tasks against their first visit (RL streams that revisit tasks)",
     (("first_visit_return", "first visits"), ("revisit_return", "revisits"),
      ("revisit_return_change", "revisit - first"), ("last_visit_return_change", "last visit - first"))),
)

_NOT_PERCENT_PREFIX = ("sg_", "ngm_sg_", "agent/", "task_return_", "recall_error_", "memory_bytes_", "revisit_return",
                       "first_visit_return", "last_visit_return")
_NOT_PERCENT = {"avg_task_return", "avg_sg", "ngm_avg_sg", "ngm_avg_sg_delta", "dormant_ratio", "dead_fraction", "feature_rank", "weight_magnitude",
                "zero_grad_fraction", "gamma", "probe_time_s", "merge_ta_scale", "merge_ties_scale",
                "adapter_bytes"}


def is_percent(name: str) -> bool:
    """Whether a metric is an accuracy (or a difference of accuracies) shown in percent."""
    return name not in _NOT_PERCENT and not name.startswith(_NOT_PERCENT_PREFIX) and "/" not in name


def is_online(name: str) -> bool:
    """The metrics every run has (the loop's online accuracies), which probe tables only repeat."""
    return name in ("avg_online_acc", "final_task_online_acc") or name.startswith("online_acc_last")


def _short(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))


def configurations(runs, label=None) -> tuple[dict, list[str]]:
    """Runs grouped by configuration: ``{(env id, row label): [runs]}``, and a note per agent that ran under several
    configurations. The label is ``label(run)`` (default: the run's agent) plus, where several configurations
    share it, the env kwargs and hyperparameters in which they differ."""
    groups: dict[tuple[str, str], dict] = {}
    for r in runs:
        ident = group_identity(r.config, r.seed)
        name = label(r) if label is not None else str(r.agent)
        groups.setdefault((str(r.env_id), name), {}).setdefault(identity_key(ident), (ident, []))[1].append(r)
    out, notes = {}, []
    for (env, name), by_key in groups.items():
        if len(by_key) == 1:
            out[(env, name)] = next(iter(by_key.values()))[1]
            continue
        flat = {k: {**{f"env.{a}": b for a, b in (i.get("env") or {}).items()}, **(i.get("hparams") or {}),
                    **{a: b for a, b in i.items() if a not in ("env", "hparams")}} for k, (i, _) in by_key.items()}
        keys = sorted({a for f in flat.values() for a in f})
        differ = [a for a in keys if len({_short(canonical(f.get(a))) for f in flat.values()}) > 1]
        for k, (_, rs) in by_key.items():
            tag = ",".join(f"{a}={_short(flat[k].get(a))}" for a in differ)
            out[(env, f"{name}[{tag}]")] = rs
        notes.append(f"{name} on {env} ran under {len(by_key)} configurations (differing in {', '.join(differ)}): "
                     "one row each")
    return out, notes


def aggregate(runs, label=None) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(env id, row label) -> metric -> (mean, sample std, number of finite values), one row per configuration
    (:func:`configurations`)."""
    return _stats(configurations(runs, label)[0])


def _delta(rs) -> dict[str, tuple[float, float, int]]:
    """The NGM metrics the authors' way for one configuration: on the seed-mean task-0 curve, error bars by the delta
    method (:func:`clenv.metrics.stability.ngm_stability_delta`), as ``<name>_delta``; {} without continual
    evaluation or when the runs' evaluation blocks differ."""
    from clenv.metrics.stability import ngm_stability_delta

    rs = [r for r in rs if "stability_acc" in r.records and "stability_block" in r.records]
    if not rs:
        return {}
    block = np.asarray(rs[0].records["stability_block"])
    if any(not np.array_equal(np.asarray(r.records["stability_block"]), block) for r in rs):
        return {}
    curves = np.stack([np.asarray(r.records["stability_acc"], dtype=np.float64)[:, 0] for r in rs])
    return {f"{k}_delta": (float(m), float(e), len(rs)) for k, (m, e) in ngm_stability_delta(curves, block).items()}


def _stats(groups: dict) -> dict:
    out = {}
    for key, rs in groups.items():
        names = dict.fromkeys(k for r in rs for k in r.metrics)
        stats = {}
        for name in names:
            v = np.array([r.metrics.get(name, np.nan) for r in rs], dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                stats[name] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))
            else:
                stats[name] = (float("nan"), float("nan"), 0)
        out[key] = {**stats, **_delta(rs)}
    return out


def _cell(stat, percent: bool) -> str:
    mean, std, n = stat
    if n == 0 or not math.isfinite(mean):
        return "-"
    s = 100.0 if percent else 1.0
    digits = 2 if percent else 3  # ratios such as avg-SG (0.017) need the third digit
    spread = f"{std * s:.{digits}f}" if math.isfinite(std) else "-"  # a paper may give no spread
    return f"{mean * s:.{digits}f} ({spread})"


def format_table(title: str, columns, agg: dict, env: str, fractions: bool = False) -> str | None:
    """A Markdown table for one env: rows are agents, cells "mean (std)"; None when no agent has these metrics.
    ``fractions``: every cell as the value itself (3 decimals), as FTN's tables print accuracies and MSEs."""
    rows = [(agent, stats) for (e, agent), stats in sorted(agg.items()) if e == env]
    has = lambda s, c: c in s and s[c][2] > 0  # noqa: E731 - a finite value for metric c
    rows = [(a, s) for a, s in rows if any(has(s, c) for c, _ in columns)]
    own = [c for c, _ in columns if not is_online(c)]
    if not rows or (own and not any(has(s, c) for _, s in rows for c in own)):
        return None
    cols = [(c, h) for c, h in columns if any(has(s, c) for _, s in rows)]
    n = max(max(s.get(c, (0, 0, 0))[2] for c, _ in cols) for _, s in rows)
    lines = [f"### {title} — {env} (mean (std) over up to {n} seeds)", "",
             "| Method | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for agent, s in rows:
        cells = [_cell(s[c], is_percent(c) and not fractions) if c in s else "-" for c, _ in cols]
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def decomposition(stats: dict, reference: dict, regression: bool, metric: str | None = None) -> tuple[float, float]:
    """FTN Table 4 for one configuration: (training-time overlap, recall error) on the tasks before the last, from
    mean metrics. Overlap is the FixedMask ``reference``'s stored score minus this configuration's stored score,
    recall its stored minus its recovered score; excesses for a loss (MSE on regression, ``metric="ce"`` on language
    streams: signs reversed). NaN when a metric is missing."""
    m = metric or ("mse" if regression else "acc")
    sign = 1.0 if m == "acc" else -1.0
    get = lambda d, k: d[k][0] if k in d and d[k][2] else float("nan")  # noqa: E731
    stored, recovered, ref = get(stats, f"{m}_stored_prior"), get(stats, f"{m}_prior"), get(reference,
                                                                                          f"{m}_stored_prior")
    return sign * (ref - stored) + 0.0, sign * (stored - recovered) + 0.0  # + 0.0: no "-0.000" for a zero


def mask_metric(stats_rows) -> str:
    """The score of mask-evaluated runs: ``mse`` (regression), ``ce`` (language) or ``acc``."""
    rows = list(stats_rows)
    for m in ("mse", "ce"):
        if any(f"{m}_stored_prior" in st for st in rows):
            return m
    return "acc"


def decomposition_tables(agg: dict) -> list[str]:
    """Table 4's form per env that has a ``fixed_mask`` (or ``lora_fixed_mask``) configuration: every
    mask-evaluated configuration's overlap and recall error against it."""
    parts = []
    for env in sorted({e for e, _ in agg}):
        rows = {name: st for (e, name), st in agg.items() if e == env and "fm_stored" in st}
        refs = [name for name in rows if name.split("[")[0] in ("fixed_mask", "lora_fixed_mask")]
        if not refs:
            continue
        m = mask_metric(rows.values())
        what = {"mse": "MSE excess", "ce": "CE excess"}.get(m, "ACC drop")
        lines = [f"### Where the prior tasks' loss goes (FTN Table 4: {what} against {refs[0]}'s stored masks) — "
                 f"{env}", "", "| Method | overlap | recall |", "|---|---|---|"]
        for name, st in sorted(rows.items()):
            overlap, recall = decomposition(st, rows[refs[0]], m == "mse", m)
            lines.append(f"| {name} | {overlap:+.3f} | {recall:+.3f} |")
        parts += ["\n".join(lines), ""]
    return parts


def overlap_tables(groups: dict) -> list[str]:
    """FTN Table 5's form per configuration with stored masks: the pairwise overlap |m_i & m_j| / k of the tasks'
    stored training masks, mean over seeds (the diagonal, 1 by definition, is left out)."""
    parts = []
    for (env, name), runs in sorted(groups.items()):
        ms = [np.asarray(r.records["masks_stored"], dtype=np.float64) for r in runs if "masks_stored" in r.records]
        if not ms or len({m.shape for m in ms}) != 1 or ms[0].shape[0] < 2:
            continue
        over = np.mean([(m @ m.T) / np.maximum(m.sum(1), 1.0)[:, None] for m in ms], 0)
        T = over.shape[0]
        lines = [f"### Pairwise overlap of stored masks |m_i & m_j| / k — {env} / {name} (mean over {len(ms)} seeds)",
                 "", "| task | " + " | ".join(str(j) for j in range(T)) + " |", "|---" * (T + 1) + "|"]
        lines += [f"| {i} | " + " | ".join("." if i == j else f"{over[i, j]:.2f}" for j in range(T)) + " |"
                  for i in range(T)]
        parts += ["\n".join(lines), ""]
    return parts


def _csv(agg) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["env", "agent", "metric", "mean", "std", "n"])
    for (env, agent), stats in sorted(agg.items()):
        for name, (mean, std, n) in stats.items():
            w.writerow([env, agent, name, repr(mean), repr(std), n])
    return buf.getvalue().encode()


def report_main(argv=None) -> int:
    """Entry point of ``clenv report``: returns the exit status (0 on success, 2 when no run was found)."""
    p = argparse.ArgumentParser(prog="clenv report", description="Aggregate saved runs into mean (std) tables and "
                                "PNG figures.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders containing them")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    args = p.parse_intermixed_args(argv)  # options may stand before or after the folders
    try:
        dirs = find_runs(args.run_dirs)
    except FileNotFoundError as e:
        print(f"clenv report: {e}", file=sys.stderr)
        return 2
    if not dirs:
        print(f"clenv report: no run (a directory with result.json) under {' '.join(args.run_dirs)}",
              file=sys.stderr)
        return 2
    runs = [load_run(d) for d in dirs]
    groups, notes = configurations(runs)
    agg = _stats(groups)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    envs = sorted({e for e, _ in agg})
    parts = [f"# clenv report: {len(runs)} runs, {len(agg)} configurations", ""]
    parts += [f"- note: {n}" for n in notes] + ([""] if notes else [])
    # On regression streams the online "accuracies" are negative MSEs and FM an MSE difference: the percent columns
    # do not apply there, and those envs get the mask table's MSEs instead.
    regression = {e for (e, _), st in agg.items() if "avg_online_mse" in st}
    # A mask-evaluated language run's fm is a CE difference: the percent tables leave it out of that row.
    percent_agg = {key: {k: v for k, v in st.items() if not (k == "fm" and "ce_stored" in st)}
                   for key, st in agg.items()}
    # only mask-evaluated configurations (those with stored-mask scores) belong in the mask table
    mask_agg = {key: st for key, st in agg.items() if any(k.endswith("_stored") for k in st)}
    for title, columns in TABLES:
        for env in envs:
            columns_here = columns
            if env in regression and title != MASK_TABLE:
                columns_here = tuple((c, h) for c, h in columns if not is_percent(c))
                if not columns_here:
                    continue
            # FTN's tables print accuracies and MSEs as fractions, as the paper does
            t = format_table(title, columns_here, mask_agg if title == MASK_TABLE else percent_agg, env,
                             fractions=title == MASK_TABLE)
            if t:
                parts += [t, ""]
    parts += decomposition_tables(agg) + overlap_tables(groups)
    text = "\n".join(parts)
    atomic_write_bytes(out / "report.md", text.encode())
    atomic_write_bytes(out / "metrics.csv", _csv(agg))
    written = [out / "report.md", out / "metrics.csv"]
    if not args.no_figures:
        from clenv.app import plots

        figure_groups = {f"{env} / {name}": rs for (env, name), rs in groups.items()}
        for fn, name in ((plots.learning_curves, "learning_curves.png"), (plots.accuracy_matrices,
                         "accuracy_matrix.png"), (plots.stability_curves, "stability_gap.png"),
                         (plots.diagnostics_over_tasks, "diagnostics.png"),
                         (plots.rl_returns, "rl_returns.png"),
                         (plots.agent_traces, "agent_traces.png"),
                         (plots.first_task_around_switches, "first_task_stability.png"),
                         (plots.mask_tiling, "mask_tiling.png"), (plots.task_curves, "task_curves.png")):
            path = fn(figure_groups, out / name)
            if path is not None:
                written.append(path)
    print(text)
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(report_main())
