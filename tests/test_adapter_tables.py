"""`clenv reproduce` for the adapter family's paper tables (FTN Table 3, NeuroLoRA Tables 2-4) and `clenv report` on
their runs (FTN Figure 3's per-task curves, Table 5's overlap). Tiny settings throughout: 2 tasks of 2 steps
(``--scale 0.01 --env-set steps_per_task=2``), one seed, an explicit random 1-layer 32-wide base (no pretraining)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from clenv.app import paper_tables as papers
from clenv.app.report import report_main
from clenv.app.reproduce import reproduce_main
from clenv.results import find_runs, load_run

TINY = ["--seeds", "0", "--scale", "0.01", "--env-set", "steps_per_task=2", "--no-progress", "--jobs", "1",
        "--agent-set", "base_model=random", "--agent-set", "base_n_layer=1", "--agent-set", "base_n_embd=32",
        "--agent-set", "base_n_head=2"]
POOL = ["--agent-set", "components=16", "--agent-set", "rank=2", "--agent-set", "k=4", "--agent-set", "mask_steps=2"]
FLY = ["--agent-set", "rank=8", "--agent-set", "k=2"]


def _rows(text: str, prefix: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith(f"| {prefix}")]


def _number(cell: str) -> float:
    return float(cell.split(" (")[0])


def _task(run) -> str:
    return (run.config["env"].get("tasks") or ["upper"])[0]


def _runs(root):
    return [load_run(d) for d in find_runs([root])]


def test_the_tables_are_registered_with_their_paper_values():
    t = papers.table("ftn_table3")
    cell = {(c.method, c.metric): (c.mean, c.std) for c in t.cells}
    assert cell[("LoRA-FTN", "ce")] == (1.51, 0.08) and cell[("LoRA-Bank", "fm_stored")] == (0.11, 0.30)
    assert t.seeds == 7 and not t.percent and [m.agent for m in t.methods] == ["lora_naive", "lora_fixed_mask",
                                                                              "lora_bank", "lora_ftn"]
    bwt = {c.method: c.mean for c in papers.table("neurolora_table3").cells if c.metric == "bwt"}
    assert bwt == {"LoRA-Seq": -11.3, "EWC+LoRA": -7.5, "FlyLoRA-Seq": -4.3, "NeuroLoRA-Seq": -2.6}
    t2 = {(c.method, c.metric): c.mean for c in papers.table("neurolora_table2").cells}
    assert t2[("FlyLoRA", "merge_ta_drop")] == -5.1 and t2[("NeuroLoRA", "merge_ties_acc")] == 72.3
    assert all(math.isnan(c.std) for c in papers.table("neurolora_table2").cells)  # the paper prints no spreads
    assert len(papers.table("neurolora_table4").methods) == 7


def test_ftn_table3_prints_stored_and_reconfig_ce_and_fm_and_the_report_draws_figure_3(tmp_path, capsys):
    out = tmp_path / "runs"
    assert reproduce_main(["ftn_table3", "--agents", "lora_fixed_mask,lora_ftn", *TINY, *POOL,
                           "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert [h.strip() for h in header.split("|")[1:6]] == ["Method", "STORED CE", "STORED FM", "RECONFIG CE",
                                                           "RECONFIG FM"]
    runs = {r.agent: r for r in _runs(out / "ftn_table3")}
    for i, (label, key) in enumerate((("LoRA-Fixed", "lora_fixed_mask"), ("LoRA-FTN", "lora_ftn")), 1):
        (ours,) = _rows(text, f"{i}. {label} · ours")
        (paper,) = _rows(text, f"{i}. {label} · paper")
        m = runs[key].metrics
        for cell, metric in zip(ours[1:5], ("ce_stored", "fm_stored", "ce", "fm")):
            assert math.isfinite(m[metric]) and _number(cell) == pytest.approx(m[metric], abs=5e-4)
        assert paper[1:5] == {"LoRA-Fixed": ["1.390 (0.090)", "0.000 (0.000)", "1.390 (0.090)", "0.000 (0.000)"],
                              "LoRA-FTN": ["1.710 (0.160)", "0.340 (0.110)", "1.510 (0.080)", "0.070 (0.030)"]}[label]
    assert runs["lora_fixed_mask"].metrics["fm_stored"] == 0.0  # Theorem D.1, on the scaled stream too
    assert "Table 4 decomposition (CE excess" in text and "7 seeds" in text
    # clenv report: the mask table in CE, Table 5's overlap for the LoRA-FTN runs, FTN Figure 3's curves.
    assert report_main([str(out / "ftn_table3"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "CE stored" in report and "Pairwise overlap of stored masks" in report
    overlap = report[report.index("Pairwise overlap of stored masks |m_i & m_j| / k — StyleShiftText-v0 / lora_ftn"):]
    assert re.search(r"\| 0 \| \. \| \d\.\d\d \|", overlap) and "| 1 | " in overlap
    assert (tmp_path / "report" / "task_curves.png").stat().st_size > 0


def test_neurolora_table3_reads_per_task_final_accuracy_avg_and_bwt_from_the_matrix(tmp_path, capsys):
    out = tmp_path / "runs"
    assert reproduce_main(["neurolora_table3", "--agents", "lora,flylora", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert [h.strip() for h in header.split("|")[1:-1]] == ["Method", "upper", "lower", "Avg", "BWT"]
    runs = {r.agent: r for r in _runs(out / "neurolora_table3")}
    for i, (label, key) in enumerate((("LoRA-Seq", "lora"), ("FlyLoRA-Seq", "flylora")), 1):
        (ours,) = _rows(text, f"{i}. {label} · ours")
        R = np.asarray(runs[key].records["accuracy_matrix"])
        assert R.shape == (2, 2) and np.isfinite(R).all()
        expected = [100 * R[1, 0], 100 * R[1, 1], 100 * R[1].mean(), 100 * (R[1, 0] - R[0, 0])]
        assert [_number(c) for c in ours[1:]] == pytest.approx(expected, abs=5e-3)
        assert runs[key].metrics["bwt"] == pytest.approx(R[1, 0] - R[0, 0])
    (paper,) = _rows(text, "2. FlyLoRA-Seq · paper")
    assert paper[1:] == ["-", "-", "69.10 (-)", "-4.30 (-)"]
    # runs without masks: the report's forgetting table, and no mask table (its acc and fm would be the same numbers)
    assert report_main([str(out / "neurolora_table3"), "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "### Forgetting (%)" in report and "Mask routing" not in report


def test_neurolora_table2_merges_single_task_adapters_and_its_numbers_are_the_recorded_ones(tmp_path, capsys):
    out = tmp_path / "runs"
    assert reproduce_main(["neurolora_table2", "--agents", "lora,flylora", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert [h.strip() for h in header.split("|")[1:-1]] == ["Method", *(h for _, h in papers.MERGE_COLUMNS)]
    runs = _runs(out / "neurolora_table2")
    single = [r for r in runs if r.config.get("protocol") != "merging"]
    merged = {r.agent: r for r in runs if r.config.get("protocol") == "merging"}
    assert len(single) == 4 and set(merged) == {"lora (merged)", "flylora (merged)"}
    for r in single:  # each adapter saw one task alone (upper alone is the default order's first task: no tasks key)
        assert _task(r) in ("upper", "lower") and r.config["env"]["num_tasks"] == 1
    for i, (label, key) in enumerate((("LoRA", "lora"), ("FlyLoRA", "flylora")), 1):
        m = merged[f"{key} (merged)"].metrics
        # Installing an adapter's task vector alone in a fresh agent gives back its run's own held-out accuracy.
        for r in (r for r in single if r.agent == key):
            task = _task(r)
            assert m[f"merge_indiv_acc_{task}"] == pytest.approx(r.metrics["test_acc"], abs=1e-6)
        assert m["merge_ta_scale"] in papers.TA_SCALES and m["merge_ties_scale"] in papers.TIES_SCALES
        for kind in ("ta", "ties"):
            assert m[f"merge_{kind}_drop"] == pytest.approx((m[f"merge_{kind}_acc"] - m["merge_indiv_acc"])
                                                            / m["merge_indiv_acc"])
        (ours,) = _rows(text, f"{i}. {label} · ours")
        names = [n for n, _ in papers.MERGE_COLUMNS]
        for cell, name in zip(ours[1:], names):
            value = m[name] * (1 if name.endswith("_scale") else 100)
            assert math.isfinite(value) and _number(cell) == pytest.approx(value, abs=5e-3)
    (paper,) = _rows(text, "1. LoRA · paper")
    assert paper[1:6] == ["71.50 (-)", "58.20 (-)", "-18.60 (-)", "60.50 (-)", "-15.40 (-)"]
    assert "seeds not stated" in text
    # clenv report shows the summaries under their own row name.
    assert report_main([str(out / "neurolora_table2"), "--out", str(tmp_path / "report"), "--no-figures"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Adapter merging (NeuroLoRA Table 2)" in report and "| flylora (merged) |" in report


def test_neurolora_table4_averages_single_task_runs_and_prints_the_deltas(capsys):
    assert reproduce_main(["neurolora_table4", "--agents", "NeuroLoRA (full),neurolora_no_gate", *TINY, *FLY,
                           "--no-save"]) == 0
    text = capsys.readouterr().out
    (full,) = _rows(text, "1. NeuroLoRA (full) · ours")
    (ablated,) = _rows(text, "2. w/o Modulation Gate · ours")
    (delta,) = _rows(text, "w/o Modulation Gate")
    assert delta[2] == "-2.50" and delta[1] == f"{_number(ablated[1]) - _number(full[1]):+.2f}"
    assert "merged by" not in text.split("merging protocol:")[1].splitlines()[0]
