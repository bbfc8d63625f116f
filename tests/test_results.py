"""Result format (atomic JSON + npz), run layout, `clenv report` tables and figures, loggers."""

import csv
import io
import json
import os

import numpy as np
import pytest

from clenv.loggers import ConsoleSummary, TensorBoardLogger, format_summary
from clenv.loop import RunResult
from clenv.metrics import online_metrics
from clenv.app.report import aggregate, report_main
from clenv.results import FORMAT, atomic_write_bytes, find_runs, load_run, run_dir, save_run

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(seed, acc=(0.1, 0.2, 0.3), agent="base", env="RandomLabelDigits-v0"):
    """A RunResult shaped like an evaluated run, without training."""
    T = len(acc)
    rng = np.random.default_rng(seed)
    r = RunResult(env_id=env, agent=agent, seed=seed, task_ids=list(range(T)), task_accuracy=list(acc),
                  task_steps=[4] * T, num_task_switches=T - 1, steps=4 * T, episodes=1, wall_time=1.5,
                  step_reward=rng.random(4 * T).astype(np.float32), step_task=np.repeat(np.arange(T), 4))
    r.metrics = {**online_metrics(acc), "lca_f": 0.5 + seed / 100, "avg_sg": float("nan")}
    R = rng.random((T, T))
    steps = np.array([0, 2, 4, 6, 8, 10, 12])
    block = np.array([0, 0, 0, 1, 1, 2, 2])
    sacc = rng.random((7, T))
    r.records = {"accuracy_matrix": R, "stability_step": steps, "stability_block": block, "stability_acc": sacc,
                 "stability_wc_acc": sacc[:, 0], "diagnostics": [{"task": k, "dormant_ratio": 0.1 * k,
                                                                   "feature_rank": 10.0 - k, "weight_magnitude": 0.02,
                                                                   "zero_grad_fraction": float("nan")}
                                                                  for k in range(T)],
                 "probe_gamma_source": "table5",
                 "agent_diagnostics": {"step": np.arange(1, 4 * T + 1, dtype=np.float64),
                                       "alpha_sm/fc0": rng.random(4 * T), "alpha_sm/fc1": rng.random(4 * T),
                                       "temperature": rng.random(4 * T)}}
    r.config = {"env": {"num_tasks": T}, "agent": {"lr": 0.01, "hidden": (100, 100)}}
    return r


def test_save_load_round_trip(tmp_path):
    r = fake_run(0)
    d = save_run(r, tmp_path / "run")
    back = load_run(d)
    assert (back.env_id, back.agent, back.seed, back.steps) == (r.env_id, r.agent, r.seed, r.steps)
    assert back.task_accuracy == r.task_accuracy and back.task_ids == r.task_ids
    np.testing.assert_array_equal(back.step_reward, r.step_reward)
    np.testing.assert_array_equal(back.step_task, r.step_task)
    np.testing.assert_array_equal(back.records["accuracy_matrix"], r.records["accuracy_matrix"])
    np.testing.assert_array_equal(back.records["agent_diagnostics"]["alpha_sm/fc1"],
                                  r.records["agent_diagnostics"]["alpha_sm/fc1"])
    assert back.metrics["lca_f"] == r.metrics["lca_f"] and np.isnan(back.metrics["avg_sg"])
    assert back.records["diagnostics"][1]["dormant_ratio"] == pytest.approx(0.1)
    assert back.records["diagnostics"][1]["zero_grad_fraction"] is None  # non-finite -> null in JSON
    assert back.config["agent"]["hidden"] == [100, 100]
    assert back.config["versions"]["numpy"] == np.__version__
    # Strict JSON: no NaN tokens.
    doc = json.loads((d / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["format"] == FORMAT and "torch" in doc["versions"]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "x.json"
    atomic_write_bytes(p, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["x.json"]  # no temp file left behind


def test_run_dir_layout_and_find_runs(tmp_path):
    d = run_dir(tmp_path / "runs", "RandomLabelDigits-v0", "cbp+er", 3, timestamp="T1")
    assert d == tmp_path / "runs" / "RandomLabelDigits-v0" / "cbp+er" / "seed3-T1"
    d2 = run_dir(tmp_path / "runs", "a/b", "x y", None)
    assert d2.parent == tmp_path / "runs" / "a_b" / "x_y" and d2.name.startswith("seedNone-")
    save_run(fake_run(0), d)
    save_run(fake_run(1), run_dir(tmp_path / "runs", "RandomLabelDigits-v0", "base", 1, timestamp="T2"))
    assert len(find_runs([tmp_path / "runs"])) == 2
    assert find_runs([d, tmp_path / "runs"]).count(d.resolve()) == 1
    with pytest.raises(FileNotFoundError):
        find_runs([tmp_path / "missing"])
    with pytest.raises(FileNotFoundError, match="no result.json"):
        load_run(tmp_path)


def test_aggregate_mean_and_sample_std():
    runs = [fake_run(s, acc=(a, a)) for s, a in zip(range(3), (0.1, 0.2, 0.3))]
    agg = aggregate(runs)[("RandomLabelDigits-v0", "base")]
    mean, std, n = agg["avg_online_acc"]
    assert (mean, n) == (pytest.approx(0.2), 3)
    assert std == pytest.approx(0.1)  # sample std of 0.1, 0.2, 0.3
    assert agg["avg_sg"][2] == 0  # NaN everywhere: no finite value


def test_report_on_three_seeds_writes_tables_and_figures(tmp_path, capsys):
    root = tmp_path / "runs"
    for s, a in zip(range(3), (0.1, 0.2, 0.3)):
        save_run(fake_run(s, acc=(a, a, a)), run_dir(root, "RandomLabelDigits-v0", "base", s, timestamp=f"T{s}"))
    save_run(fake_run(0, agent="scratch"), run_dir(root, "RandomLabelDigits-v0", "scratch", 0, timestamp="T"))
    out = tmp_path / "report"
    assert report_main([str(root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| base | 20.00 (10.00) | 20.00 (10.00) |" in text  # 10% / 25% windows: mean 0.2, std 0.1, in %
    assert "| scratch |" in text
    assert "| avg-SG |" not in text and "| avg-SG (" not in text  # a column with no finite value is left out
    assert "LCA_F" in text and "51.00 (1.00)" in text  # lca_f = 0.50, 0.51, 0.52
    assert "4 runs, 2 configurations" in capsys.readouterr().out
    for name in ("learning_curves.png", "accuracy_matrix.png", "stability_gap.png", "diagnostics.png",
                 "agent_traces.png", "first_task_stability.png"):
        assert (out / name).read_bytes()[:8] == PNG
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0] == "env,agent,metric,mean,std,n"


def test_agent_traces_groups_signals_into_family_panels(tmp_path, monkeypatch):
    """``family/part`` signals share a panel (one line per part); a run without traces draws nothing."""
    from clenv.app import plots

    drawn, band = {}, plots._band

    def spy(ax, x, data, label):
        drawn.setdefault(id(ax), []).append((label, data.shape))
        band(ax, x, data, label)

    monkeypatch.setattr(plots, "_band", spy)
    runs = [fake_run(s) for s in range(2)]
    assert plots.agent_traces({"base": runs}, tmp_path / "t.png").read_bytes()[:8] == PNG
    panels = sorted(drawn.values(), key=len)
    assert [[lbl for lbl, _ in p] for p in panels] == [["temperature"], ["fc0", "fc1"]]
    assert all(shape == (2, 12) for p in panels for _, shape in p)  # two runs, every traced step
    bare = fake_run(0)
    del bare.records["agent_diagnostics"]
    assert plots.agent_traces({"base": [bare]}, tmp_path / "none.png") is None
    assert plots.agent_traces({"base": runs}, tmp_path / "x.png", families=["nothing"]) is None


def test_report_without_runs_fails_clearly(tmp_path, capsys):
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no run" in capsys.readouterr().err


def test_console_summary_prints_metrics():
    buf = io.StringIO()
    r = fake_run(0)
    ConsoleSummary(keys=["lca_f"], stream=buf).summary(r)
    out = buf.getvalue()
    assert out.startswith("base on RandomLabelDigits-v0  seed=0") and "lca_f" in out and "0.5000" in out
    assert "avg_online_acc" not in out
    assert "avg_online_acc" in format_summary(r)


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    lg = TensorBoardLogger(str(tmp_path / "tb"))
    lg.log({"lca_f": 0.5, "bad": float("nan")}, 3)
    lg.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["lca_f"]  # the NaN was skipped
    assert [(e.step, e.value) for e in acc.Scalars("lca_f")] == [(3, 0.5)]


def test_rewriting_a_run_folder_never_pairs_two_saves(tmp_path, monkeypatch):
    """A save killed between its arrays and its JSON leaves the previous save whole (old code: new arrays.npz
    beside the old result.json)."""
    import clenv.results as results

    save_run(fake_run(0), tmp_path)
    second = fake_run(1)
    real = results.atomic_write_bytes

    def killed_at_json(path, data):
        if path.name == "result.json":
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(results, "atomic_write_bytes", killed_at_json)
    with pytest.raises(KeyboardInterrupt):
        save_run(second, tmp_path)
    back = load_run(tmp_path)
    assert back.seed == 0 and np.array_equal(back.step_reward, fake_run(0).step_reward)
    monkeypatch.setattr(results, "atomic_write_bytes", real)
    save_run(second, tmp_path)
    back = load_run(tmp_path)
    assert back.seed == 1 and np.array_equal(back.step_reward, second.step_reward)
    assert len(list(tmp_path.glob("arrays-*.npz"))) == 1  # the spent arrays files are gone


def test_report_keeps_configurations_apart_and_labels_them(tmp_path, capsys):
    """Runs of one agent with other settings are other rows, labelled by what differs (old code: one row of
    '2 seeds')."""
    a = fake_run(0, acc=(0.1, 0.2, 0.3))
    b = fake_run(1, acc=(0.7, 0.8, 0.9))
    c = fake_run(2, acc=(0.1, 0.2, 0.3))
    a.config = {"env": {"num_tasks": 3}, "agent": {"lr": 0.01, "optimizer": "sgd", "seed": 0}}
    c.config = {"env": {"num_tasks": 3}, "agent": {"lr": 0.01, "optimizer": "sgd", "seed": 2}}
    b.config = {"env": {"num_tasks": 3}, "agent": {"lr": 0.001, "optimizer": "adam", "seed": 1}}
    for i, r in enumerate((a, b, c)):
        save_run(r, tmp_path / "runs" / f"r{i}")
    assert report_main([str(tmp_path / "runs"), "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "3 runs, 2 configurations" in text and "ran under 2 configurations" in text
    assert "| base[lr=0.001,optimizer=adam] | 90.00 (0.00)" in text  # last-10% column, one seed
    assert "| base[lr=0.01,optimizer=sgd] | 30.00 (0.00)" in text  # seeds 0 and 2 of one configuration
    assert "over up to 2 seeds" in text


def test_report_shows_no_probe_table_from_online_metrics_alone(tmp_path, capsys):
    r = fake_run(0)
    r.metrics = online_metrics([0.1, 0.2, 0.3])
    save_run(r, tmp_path / "run")
    assert report_main(["--no-figures", "--out", str(tmp_path / "rep"), str(tmp_path / "run")]) == 0  # options first
    text = capsys.readouterr().out
    assert "over the last x% of tasks" in text
    assert "Forgetting" not in text and "Held-out" not in text


def test_first_task_figure_draws_each_method_and_its_gain(tmp_path, monkeypatch):
    """NGM-SGD's figure: one panel per env with a line per method for task 0, the traced gain under it."""
    from clenv.app import plots

    runs = {}
    for name in ("ngm_sgd", "momentum_sgd"):
        rs = [fake_run(s, agent=name) for s in range(2)]
        for r in rs:
            if name == "ngm_sgd":
                r.records["agent_diagnostics"]["gain"] = np.linspace(1, 3, 12)
        runs[f"RandomLabelDigits-v0 / {name}"] = rs
    drawn = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig) or real(fig, path))
    path = plots.first_task_around_switches(runs, tmp_path / "f.png")
    assert path.read_bytes().startswith(PNG)
    (fig,) = drawn
    top, bottom = fig.axes
    assert len(top.get_lines()) - 2 == 2  # a line per method (and the two switch markers)
    assert [line.get_label() for line in bottom.get_lines() if not line.get_label().startswith("_")] == ["ngm_sgd"]
    assert plots.first_task_around_switches({"x / y": [fake_run(0)]}, tmp_path / "g.png") is not None
    r = fake_run(0)
    del r.records["stability_acc"]
    assert plots.first_task_around_switches({"x / y": [r]}, tmp_path / "h.png") is None


def test_report_gives_the_ngm_gap_on_the_seed_mean_curve_with_delta_method_bars(tmp_path, capsys):
    from clenv.metrics.stability import ngm_stability_delta

    runs = [fake_run(s) for s in range(3)]
    for i, r in enumerate(runs):
        save_run(r, tmp_path / "runs" / f"s{i}")
    assert report_main([str(tmp_path / "runs"), "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    want = ngm_stability_delta(np.stack([r.records["stability_acc"][:, 0] for r in runs]),
                               runs[0].records["stability_block"])["ngm_avg_sg"]
    rows = list(csv.reader(io.StringIO((tmp_path / "rep" / "metrics.csv").read_text())))
    (row,) = [r for r in rows if r[2] == "ngm_avg_sg_delta"]
    assert (float(row[3]), float(row[4]), int(row[5])) == (pytest.approx(want[0]), pytest.approx(want[1]), 3)
    assert f"{want[0]:.3f} ({want[1]:.3f})" in capsys.readouterr().out
