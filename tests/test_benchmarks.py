"""The benchmark scripts run and end with their ``ratio=`` line (their values are the machine's, not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_vectorised_seeds_benchmark_runs_and_ends_with_its_ratio():
    """benchmarks/vectorised_seeds.py compares the two on the same work (it checks the per-step rewards) and ends
    with ``ratio=`` (its value is the machine's, not asserted)."""
    script = BENCHMARKS / "vectorised_seeds.py"
    out = subprocess.run([sys.executable, str(script), "--env", "RandomLabelDigits-v0", "--agents", "base,cbp",
                          "--seeds", "2", "--samples", "64", "--epochs", "1", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d{3}", lines[-1])
    assert [l.split(":")[0] for l in lines[:-1]] == ["base", "cbp"] and all("identical: True" in l for l in lines[:-1])


def test_protocol_times_benchmark_projects_each_run():
    """benchmarks/protocol_times.py measures each (stream, agent) in its own process and projects the full protocol
    from its step count; a stream's projected time is ms/step x steps."""
    script = BENCHMARKS / "protocol_times.py"
    out = subprocess.run([sys.executable, str(script), "--envs", "RandomLabelDigits-v0", "--agents", "base,l2",
                          "--steps", "20", "--warmup", "5"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d{3}", lines[-1])
    rows = [l for l in lines if l.startswith("| RandomLabelDigits-v0")]
    assert [r.split("|")[2].strip() for r in rows] == ["base", "l2"]
    assert all(r.split("|")[5].strip() == "9,600" for r in rows)  # 30 tasks x 256 samples x 20 epochs / 16


@pytest.mark.slow  # about a minute: it trains five adapters and evaluates them at every N
def test_adapter_recall_capacity_benchmark_runs_and_its_independent_keys_lose_nothing(tmp_path):
    """benchmarks/adapter_recall_capacity.py at a tiny size (a random base): the exact-key case has D = 0 at every N,
    and the figure is written."""
    script = BENCHMARKS / "adapter_recall_capacity.py"
    fig = tmp_path / "capacity.png"
    out = subprocess.run([sys.executable, str(script), "--samples-per-class", "32", "--max-n", "20",
                          "--bayespcn-max-n", "5", "--base-model", "random", "--out", str(fig)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [l.split() for l in out.stdout.splitlines() if l.startswith(("independent", "shared"))]
    assert [int(r[2]) for r in rows if r[:2] == ["independent", "hopfield"]] == [5, 10, 20]
    assert all(float(r[3]) == 0.0 for r in rows if r[:2] == ["independent", "hopfield"])
    assert fig.exists() and out.stdout.strip().splitlines()[-1].startswith("d_")


def test_loop_overhead_benchmark_checks_the_same_work_and_ends_with_its_ratio():
    """benchmarks/loop_overhead.py runs clenv.run, the hand-written loop and (when installed) Avalanche's Naive on
    the same batches; it stops with an error if their per-step accuracies differ, so a clean exit means the
    contenders did the same work. Ends with ``ratio=`` (its value is the machine's, not asserted)."""
    import importlib.util

    script = BENCHMARKS / "loop_overhead.py"
    out = subprocess.run([sys.executable, str(script), "--env", "RandomLabelDigits-v0", "--samples", "64",
                          "--epochs", "1", "--repeats", "1", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d{3}", lines[-1]) and re.fullmatch(r"cpu_ratio=\d+\.\d{3}", lines[-2])
    has_avalanche = importlib.util.find_spec("avalanche") is not None
    assert any(l.startswith("avalanche_over_clenv=") for l in lines) == has_avalanche
