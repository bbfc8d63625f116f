"""The RL result format: revisit table and metrics, per-task diagnostics of the Q network, `clenv report` tables and
figures for RL runs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import clenv
from clenv.loop import revisit_metrics


def test_revisit_metrics_against_hand_computed_values():
    # Two distinct tasks visited A B A B A: first visits 10 and 20.
    table, m = revisit_metrics([10.0, 20.0, 4.0, 26.0, 7.0], [0, 1, 0, 1, 0])
    assert [(r["distinct"], r["visit"], r["change"]) for r in table] == [
        (0, 0, 0.0), (1, 0, 0.0), (0, 1, -6.0), (1, 1, 6.0), (0, 2, -3.0)]
    assert m["first_visit_return"] == 15.0
    assert m["revisit_return"] == pytest.approx((4 + 26 + 7) / 3)
    assert m["revisit_return_change"] == pytest.approx((-6 + 6 - 3) / 3)
    assert m["last_visit_return_change"] == pytest.approx((-3 + 6) / 2)  # last visits: task 4 (A), task 3 (B)
    # A task without a finished episode (NaN) is skipped, not averaged in as 0.
    _, m = revisit_metrics([10.0, float("nan"), 16.0], [0, 1, 0])
    assert m["revisit_return_change"] == 6.0 and m["first_visit_return"] == 10.0


def test_a_revisiting_stream_run_records_revisits_and_a_plain_one_does_not():
    class Fixed:  # a fixed, learning-free policy (a deterministic function of the observation)
        def act(self, obs, info):
            return int(np.random.default_rng(int(abs(obs[0]) * 1e6)).integers(2))

        def observe(self, *a):
            pass

    env = gym.make("PermutedCartPole-v0", num_tasks=4, steps_per_task=50)
    r = clenv.run(env, Fixed(), seed=0, progress=False)
    rows = r.records["revisits"]
    assert [(x["task"], x["distinct"], x["visit"]) for x in rows] == [(0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)]
    want = np.mean([r.task_return[2] - r.task_return[0], r.task_return[3] - r.task_return[1]])
    assert r.metrics["revisit_return_change"] == pytest.approx(want)
    plain = clenv.run(gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=50), Fixed(), seed=0,
                      progress=False)
    assert "revisits" not in plain.records and "revisit_return_change" not in plain.metrics


def test_a_saved_rl_run_loads_with_its_per_task_returns(tmp_path):
    """The per-task returns are derived from the saved episodes as the loop derives them: a loaded result has the
    same ``task_return`` as the run (NaN where no episode ended in a task)."""

    class Fixed:
        def act(self, obs, info):
            return int(np.random.default_rng(int(abs(obs[0]) * 1e6)).integers(2))

        def observe(self, *a):
            pass

    r = clenv.run(gym.make("PermutedCartPole-v0", num_tasks=4, steps_per_task=50), Fixed(), seed=0, progress=False)
    r.task_return[1] = float("nan")  # as if no episode had ended in task 1
    r.records["episodes"] = [e for e in r.records["episodes"] if e[0] != 1]
    loaded = clenv.results.load_run(clenv.results.save_run(r, tmp_path / "run"))
    assert len(loaded.task_return) == 4 and math.isnan(loaded.task_return[1])
    assert np.allclose(loaded.task_return, r.task_return, equal_nan=True, rtol=0, atol=0)


def test_rl_diagnostics_per_task_and_report(tmp_path, capsys):
    pytest.importorskip("tianshou")
    from clenv.app.cli import main

    out = tmp_path / "runs"
    for seed in ("0", "1"):
        assert main(["run", "--env", "PermutedCartPole-v0", "--agent", "tianshou_dqn", "--seed", seed,
                     "--out", str(out), "--no-progress", "--env-set", "num_tasks=4", "--env-set", "steps_per_task=150",
                     "--agent-set", "start_steps=50", "--agent-set", "hidden=[16,16]"]) == 0
    capsys.readouterr()
    run = clenv.results.load_run(next(out.rglob("result.json")).parent)
    diag = run.records["diagnostics"]
    assert [d["task"] for d in diag] == [0, 1, 2, 3] and {d["network"] for d in diag} == {"q"}
    for d in diag:
        assert 0 <= d["dormant_ratio"] <= 1 and 1 <= d["feature_rank"] <= 16 and d["weight_magnitude"] > 0
    assert run.metrics["dormant_ratio"] == diag[-1]["dormant_ratio"]
    assert len(run.records["revisits"]) == 4 and math.isfinite(run.metrics["revisit_return_change"])
    rep = tmp_path / "report"
    assert main(["report", str(out), "--out", str(rep)]) == 0
    text = (rep / "report.md").read_text()
    assert "Return on revisited tasks against their first visit" in text and "revisit - first" in text
    assert "Plasticity diagnostics at the last task end" in text
    assert (rep / "rl_returns.png").stat().st_size > 1000 and (rep / "diagnostics.png").is_file()
    assert not (rep / "learning_curves.png").exists()  # no accuracy curves of RL rewards
