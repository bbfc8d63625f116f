"""clenv.app.paper_tables reference data and the ``clenv reproduce`` command."""

import contextlib
import math
import re
from pathlib import Path

import pytest

from clenv import protocols
from clenv.app import paper_tables as papers
from clenv.app.cli import main
from clenv.registry import protocol
from clenv.app.report import TABLES as REPORT_TABLES
from clenv.app.reproduce import plan, probe_budget, select_methods

SEED_PAPER = Path("/work/shared/seeds/000_c039e5521929aa7c.txt")

# Metric names clenv produces: the report's tables plus the online names of clenv.metrics.online.
REPORT_METRICS = {m for _, cols in REPORT_TABLES for m, _ in cols} | {"avg_online_acc"}


def test_reference_data_parses_and_names_real_metrics():
    for t in papers.TABLES.values():
        assert t.cells and t.methods
        labels = {m.label for m in t.methods}
        for c in t.cells:
            assert c.metric in REPORT_METRICS, (t.id, c.metric)
            assert c.benchmark in protocols.BENCHMARKS, (t.id, c.benchmark)
            assert c.method in labels, (t.id, c.method)
            assert 0.0 <= abs(c.mean) <= 100.0 and (c.std >= 0.0 or math.isnan(c.std))  # NaN: no spread given
        # Every (benchmark, method, metric) at most once, and every column filled for every method listed.
        keys = [(c.benchmark, c.method, c.metric) for c in t.cells]
        assert len(keys) == len(set(keys)), t.id
        for b in t.benchmarks:
            assert protocol(protocols.BENCHMARKS[b].paper_env) is not None
            assert protocol(protocols.BENCHMARKS[b].stand_in) is not None


def test_known_cells_and_a_copy_slip_is_caught():
    t1 = papers.table("Table 1")
    cell = {(c.benchmark, c.method, c.metric): c for c in t1.cells}
    c = cell[("random_label_cifar10", "NeuMoSync", "lca_b")]
    assert (c.mean, c.std) == (18.90, 0.58)
    assert len([c for c in t1.cells if c.benchmark == "class_split_cifar100"]) == 4 * 10  # no CReLU row there
    with pytest.raises(ValueError, match="values for"):
        papers.parse_rows("X\t1.0 (0.1)\t2.0 (0.2)", [("b", "m", "h")])
    assert papers.normalize_table_id("T27") == papers.normalize_table_id("table 27") == "table27"


@pytest.mark.skipif(not SEED_PAPER.is_file(), reason="the paper's text is not on this machine")
def test_every_row_is_in_the_paper():
    """Each stored row's numbers occur, in order, as one row of the paper's text (labels may be normalised)."""
    num = re.compile(r"(-?\d+(?:\.\d+)?)\s*\(\s*(\d+(?:\.\d+)?)\s*\)")
    paper_rows = set()
    for line in SEED_PAPER.read_text().splitlines():
        vals = tuple((float(a), float(b)) for a, b in num.findall(line.replace("<b>", "").replace("</b>", "")))
        if vals:
            paper_rows.add(vals)
    def within(vals, row):  # vals as consecutive cells of one printed row
        return any(row[i:i + len(vals)] == vals for i in range(len(row) - len(vals) + 1))

    for t in (t for t in papers.TABLES.values() if t.paper == "NeuMoSync"):  # the seed is NeuMoSync's text
        by_row: dict = {}
        for c in t.cells:
            # Table 1 (and the plasticity table, its last column) has one row per (benchmark, method); the others
            # one row per method across benchmarks.
            per_bench = t.id in ("table1", "plasticity")
            by_row.setdefault((c.benchmark if per_bench else "", c.method), []).append((c.mean, c.std))
        for key, vals in by_row.items():
            if t.id == "plasticity":
                assert any(within(tuple(vals), row) for row in paper_rows), (t.id, key)
            else:
                assert tuple(vals) in paper_rows, (t.id, key)


def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for tid in papers.table_ids():
        assert f"{tid}:" in out
    assert "NeuMoSync (1D Conv)" in out


def test_bad_input_is_a_clear_error(capsys):
    assert main(["reproduce", "table99"]) == 2
    assert "no reference data" in capsys.readouterr().err
    assert main(["reproduce", "table1", "--benchmark", "split_cifar10"]) == 2
    assert "has no benchmark" in capsys.readouterr().err
    assert main(["reproduce", "table1", "--agents", "hat"]) == 2
    assert "has no method" in capsys.readouterr().err


def test_methods_select_by_agent_label_or_key():
    t = papers.table("2")
    assert [m.label for m in select_methods(t, "neumosync")] == ["NeuMoSync (MLP)", "NeuMoSync (1D Conv)",
                                                                  "NeuMoSync"]
    assert [m.key for m in select_methods(t, "NeuMoSync (MLP),base")] == ["neumosync[controller=mlp]",
                                                                          "base[backbone=vit]"]


def test_plan_scales_with_minimums_and_stands_in():
    b = protocols.BENCHMARKS["random_label_cifar10"]
    p = plan(b, scale=0.01, check_data=False)
    # 100 tasks x 0.01 = 1 -> the minimum 2; 50 epochs x 0.01 -> 0.5 -> rounds to 0 -> the minimum 1
    assert p["env_kwargs"]["num_tasks"] == 2 and p["env_kwargs"]["epochs_per_task"] == 1
    assert any("scaled x0.01" in n for n in p["notes"])
    # The CIFAR-10 data is not on the test machines: the Fashion-MNIST stand-in keeps the CIFAR protocol.
    s = plan(b, scale=1.0)
    if s["env_id"] != b.paper_env:
        assert s["env_id"] == "RandomLabelFashionMNIST-v0" and s["env_kwargs"]["num_tasks"] == 100
        assert s["env_kwargs"]["dataset"] == "fashion_mnist" and any("stand" in n or "not on" in n
                                                                     for n in s["notes"])
    # gamma keeps Table 5's share of a task: 187 of 3750 steps -> 19 of 375, and never below 2 or above a task.
    t1 = papers.table("1")
    assert probe_budget(t1, b, 375, 3750)[0] == 19
    assert probe_budget(t1, b, 3750, 3750) == (187, "gamma = 187 (Table 5)")
    assert probe_budget(t1, b, 5, 3750)[0] == 2 and probe_budget(t1, b, 1, 3750)[0] == 1


def test_tiny_reproduction_prints_paper_and_ours_side_by_side(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["reproduce", "table1", "--benchmark", "Random-Label MNIST", "--agents", "cbp,crelu", "--seeds", "0",
               "--env", "RandomLabelDigits-v0", "--scale", "0.1", "--env-set", "samples_per_task=64",
               "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for label in ("1. CBP · ours", "1. CBP · paper", "2. CReLU · ours", "2. CReLU · paper"):
        assert any(r.startswith(f"| {label} |") for r in rows), label
    # The paper's cell appears verbatim next to ours (Table 1, Random-Label MNIST, CBP, LCA_F = 11.68 (0.77)).
    paper_cbp = next(r for r in rows if r.startswith("| 1. CBP · paper |"))
    assert "11.68 (0.77)" in paper_cbp and "36.41 (1.25)" in paper_cbp
    ours_cbp = next(r for r in rows if r.startswith("| 1. CBP · ours |"))
    assert "-" not in ours_cbp.split("|")[2:-1]  # every column measured
    assert "scaled x0.1" in text and "gamma = " in text and "NeuMoSync Table 7" in text
    saved = sorted(out.rglob("result.json"))
    assert len(saved) == 2 and (out / "table1" / "comparison.md").is_file()
    assert {p.parts[-3] for p in saved} == {"cbp", "crelu"}


def test_a_rerun_reuses_the_finished_runs_and_fresh_runs_them_again(tmp_path, capsys, monkeypatch):
    from clenv.app import spec

    argv = ["reproduce", "table1", "--benchmark", "Random-Label MNIST", "--agents", "cbp,crelu", "--seeds", "0",
            "--env", "RandomLabelDigits-v0", "--scale", "0.1", "--env-set", "samples_per_task=64", "--no-progress",
            "--jobs", "1", "--out", str(tmp_path)]
    assert main(argv[:5] + ["cbp"] + argv[6:]) == 0  # an interrupted attempt that finished only cbp
    first = capsys.readouterr().out
    ran = []
    real = spec.execute
    monkeypatch.setattr(spec, "execute", lambda r, **kw: ran.append(r.spec.agent) or real(r, **kw))
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert ran == ["crelu"]  # cbp's result was loaded from its folder
    row = lambda text: next(r for r in text.splitlines() if r.startswith("| 1. CBP · ours |"))  # noqa: E731
    assert row(again) == row(first)
    assert main(argv + ["--fresh"]) == 0 and ran == ["crelu", "cbp", "crelu"]
    assert row(capsys.readouterr().out) == row(first)  # the same spec, the same numbers


def test_plasticity_table_is_table1s_final_accuracy_with_base_beside_it():
    t, t1 = papers.table("plasticity"), papers.table("table1")
    assert [m.agent for m in t.methods] == ["base", "cbp", "crelu", "redo", "l2init+ewc", "neumosync"]
    final = {(c.benchmark, c.method): c.mean for c in t1.cells if c.metric == "avg_online_acc"}
    assert {(c.benchmark, c.method): c.mean for c in t.cells} == {
        k: v for k, v in final.items() if k[0] in t.benchmarks}
    assert final[("random_label_mnist", "NeuMoSync")] == 58.67 and ("random_label_mnist", "Base") not in final


def test_an_interrupted_reproduction_resumes_from_its_checkpoint(tmp_path, capsys, monkeypatch):
    import clenv
    from clenv.results import load_run

    argv = ["reproduce", "plasticity", "--benchmark", "random_label_mnist", "--agents", "base", "--seeds", "3",
            "--env", "RandomLabelDigits-v0", "--scale", "0.1", "--env-set", "samples_per_task=64", "--no-progress",
            "--jobs", "1"]
    assert main(argv + ["--out", str(tmp_path / "whole"), "--checkpoint-every", "0"]) == 0
    real_save = clenv.Checkpoint.save

    def save_then_die(self, *a, **kw):  # the process is killed right after its second checkpoint
        path = real_save(self, *a, **kw)
        if len(self.saved_steps) == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(clenv.Checkpoint, "save", save_then_die)
    assert main(argv + ["--out", str(tmp_path / "cut"), "--checkpoint-every", "7"]) == 130
    assert "rerun the command" in capsys.readouterr().err
    (left,) = (tmp_path / "cut" / "plasticity" / ".checkpoints").glob("*/checkpoint.pt")
    monkeypatch.setattr(clenv.Checkpoint, "save", real_save)
    resumed, real_resume = [], clenv.resume
    monkeypatch.setattr(clenv, "resume", lambda path, *a, **kw: resumed.append(path) or real_resume(path, *a, **kw))
    assert main(argv + ["--out", str(tmp_path / "cut"), "--checkpoint-every", "7"]) == 0
    assert resumed == [left.parent] and not left.parent.exists()  # continued, then the spent checkpoint removed
    whole, cut = (load_run(next((tmp_path / d).rglob("result.json")).parent) for d in ("whole", "cut"))
    assert whole.step_reward.tolist() == cut.step_reward.tolist()  # the same run, uninterrupted or not
    assert main(argv + ["--checkpoint-every", "-1"]) == 2 and "--checkpoint-every" in capsys.readouterr().err


def test_reproduce_ngm_runs_the_stability_probes_and_prints_the_papers_gap(capsys):
    """`clenv reproduce ngm` evaluates after every iteration (ngm_compat) and sets avg-SG beside the paper's."""
    assert main(["reproduce", "ngm", "--benchmark", "ngm_split_mnist", "--agents", "sgd", "--seeds", "0", "--scale",
                 "0.4", "--env-set", "steps_per_task=10", "--no-save", "--no-progress", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("| 1. SGD · ours"))
    paper = next(line for line in out.splitlines() if line.startswith("| 1. SGD · paper"))
    assert paper.endswith("| 0.034 (-) |")  # a ratio to three digits; the sources give no spread
    assert re.search(r"\| \d+\.\d{3} \(0\.000\) \|$", ours)  # our avg-SG was measured (one seed)
    assert "paper: mean (spread) as printed, 5 seeds" in out


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_diverged_run_is_reported_and_the_others_go_on(jobs, tmp_path):
    """EWC at Gamma 1e7 diverges (FloatingPointError at its second consolidation); with on_diverged the base run
    beside it still runs and is saved, the diverged one leaves (None, None), in this process or a worker, and its
    divergence is recorded so that a rerun reports it without running it again."""
    from clenv.app.spec import RunSpec, execute_all

    kw = {"num_tasks": 3, "samples_per_task": 64, "epochs_per_task": 2}
    runs = [RunSpec("RandomLabelDigits-v0", "ewc", 0, kw, {"ewc_lambda": 1e7, "optimizer": "sgd", "lr": 1e-2}),
            RunSpec("RandomLabelDigits-v0", "base", 0, kw, {})]
    failures = []
    with pytest.warns(RuntimeWarning, match="diverges") if jobs == 1 else contextlib.nullcontext():
        out = execute_all([r.resolve() for r in runs], jobs=jobs, out=tmp_path, checkpoint_every=5,
                          on_diverged=lambda r, message: failures.append((r.spec.agent, message)))
    assert out[0] == (None, None) and out[1][0].agent == "base" and (out[1][1] / "result.json").is_file()
    assert [a for a, _ in failures] == ["ewc"] and "diverged before the end of task" in failures[0][1]
    # both checkpointed every 5 steps; the diverged run's spent checkpoint is removed like a finished one's
    assert (tmp_path / ".checkpoints").is_dir() and not any((tmp_path / ".checkpoints").iterdir())
    # A rerun with reuse reports the recorded divergence again without running anything.
    import clenv.app.spec as spec

    again = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spec, "execute", lambda *a, **kw: pytest.fail("a recorded run was run again"))
        mp.setattr(spec, "in_workers", lambda *a, **kw: pytest.fail("a recorded run was run again"))
        out2 = execute_all([r.resolve() for r in runs], jobs=jobs, out=tmp_path, reuse=True,
                           on_diverged=lambda r, message: again.append((r.spec.agent, message)))
    assert again == failures and out2[0] == (None, None) and out2[1][0].steps == out[1][0].steps
    with pytest.raises(FloatingPointError):  # without on_diverged the error reaches the caller
        execute_all([runs[0].resolve()], jobs=1)


def test_reproduce_prints_a_diverged_method_as_a_note(capsys):
    argv = ["reproduce", "plasticity", "--benchmark", "random_label_mnist", "--agents", "l2init+ewc", "--seeds", "0",
            "--env", "RandomLabelDigits-v0", "--scale", "0.1", "--env-set", "samples_per_task=64", "--no-progress",
            "--jobs", "1", "--no-save", "--agent-set", "ewc_lambda=1e7"]
    with pytest.warns(RuntimeWarning):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "- L2Init + EWC seed 0 diverged: l2init+ewc: training diverged before the end of task" in out
