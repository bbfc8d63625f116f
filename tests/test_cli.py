"""The `clenv` command line: list, run, compare, and its errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clenv.app.cli import main
from clenv.app.spec import UsageError, parse_assignments, parse_value

SMALL = ["--env-set", "num_tasks=2", "--env-set", "samples_per_task=32", "--env-set", "epochs_per_task=2"]


def test_list_shows_ids_protocols_and_data_sources(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "RandomLabelCIFAR10-v0" in out and "num_tasks=100" in out and "torchvision" in out
    assert "RandomLabelDigits-v0" in out and "scikit-learn" in out
    assert main(["list", "--agents"]) == 0
    agents_out = capsys.readouterr().out.split()
    assert "base" in agents_out and "scratch" in agents_out


def test_run_writes_a_result_folder_and_prints_a_summary(tmp_path, capsys):
    code = main(["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--seed", "3", "--out", str(tmp_path),
                 "--no-progress", "--agent-set", "optimizer=adam", "--agent-set", "lr=1e-3", *SMALL])
    assert code == 0
    out = capsys.readouterr().out
    assert "1 task switches" in out and "avg online acc" in out
    written = list(tmp_path.rglob("result.json"))
    assert len(written) == 1, "expected one result file"
    record = json.loads(written[0].read_text())
    assert record["seed"] == 3 and len(record["tasks"]["task_accuracy"]) == 2
    assert (record["config"]["agent"]["optimizer"], record["config"]["agent"]["lr"]) == ("adam", 0.001)


def test_compare_prints_agents_side_by_side(capsys):
    code = main(["compare", "--env", "RandomLabelDigits-v0", "--agents", "base,scratch", "--seeds", "0,1",
                 "--no-save", "--no-progress", "--jobs", "1", *SMALL])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("mean (std)"):]
    assert "base" in table and "scratch" in table and " 2 " in table


@pytest.mark.parametrize("argv, message", [
    (["run", "--env", "NoSuchEnv-v0", "--agent", "base"], "unknown env id"),
    (["run", "--env", "RandomLabelDigits-v0", "--agent", "nope", "--no-save"], "unknown agent 'nope'"),
    (["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--env-set", "epochs=3"], "unknown keyword"),
    (["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--env-set", "oops"], "key=value"),
    (["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--agent-set", "lrr=1"], "unknown hyperparameter"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written for a rejected run


def test_value_parsing():
    assert parse_value("3") == 3 and parse_value("1e-3") == 0.001 and parse_value("false") is False
    assert parse_value("none") is None and parse_value("(100, 100)") == (100, 100) and parse_value("adam") == "adam"
    assert parse_assignments(["a=1", "b=x"], "--env-set") == {"a": 1, "b": "x"}
    with pytest.raises(UsageError):
        parse_assignments(["1a=2"], "--env-set")


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "clenv.app.cli", "list"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "PermutedMNIST-v0" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["run", "--agent", "base", "--seed", "-1"], "integers >= 0, got -1"),
    (["compare", "--agents", "base", "--seeds", "0,x"], "integers >= 0, got 'x'"),
    (["compare", "--agents", "base,crleu", "--seeds", "0"], "unknown agent 'crleu'; did you mean 'crelu'?"),
    (["run", "--agent", "base", "--agent-set", "lr=fast"], "hyperparameter lr='fast' should be a number"),
    (["run", "--agent", "base", "--env-set", "batch_size=abc"], "batch_size"),
    (["run", "--agent", "base", "--total-steps", "0"], "--total-steps must be >= 1"),
    (["run", "--agent", "base", "--eval-set", "forget=true"], "--eval-set"),
])
def test_bad_input_is_refused_before_any_run_starts(argv, message, capsys, tmp_path):
    out = tmp_path / "runs"
    assert main([*argv, "--env", "RandomLabelDigits-v0", *SMALL, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line, no traceback
    assert not out.exists()  # nothing ran, nothing was written (old code: base ran to the end before crleu failed)


def test_a_gymnasium_env_that_is_not_a_stream_is_named(capsys):
    assert main(["run", "--env", "CartPole-v1", "--agent", "base", "--no-save"]) == 2
    assert "'CartPole-v1' is a gymnasium env, not a clenv stream" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["file", "readonly"])
def test_an_unusable_out_is_refused_before_the_compute(kind, tmp_path, capsys, monkeypatch):
    import clenv.app.cli as cli

    ran = []
    monkeypatch.setattr(cli, "execute", lambda *a, **k: ran.append(a))
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a directory")
    else:
        out.mkdir()
        out.chmod(0o500)
        if __import__("os").access(out, __import__("os").W_OK):  # root ignores the mode bits
            pytest.skip("running as root: a read-only directory is still writable")
    assert main(["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--out", str(out), *SMALL]) == 2
    assert "--out" in capsys.readouterr().err and not ran


def test_evaluate_alone_attaches_the_default_evaluation(tmp_path):
    assert main(["run", "--env", "RandomLabelDigits-v0", "--agent", "base", "--evaluate", "--out", str(tmp_path),
                 "--no-progress", *SMALL]) == 0
    (f,) = tmp_path.rglob("result.json")
    doc = json.loads(f.read_text())
    assert doc["config"]["identity"]["evaluation"] == {} and "probe_time_s" in doc["metrics"]


@pytest.mark.parametrize("command", ["sweep", "reproduce", "compare"])
def test_ctrl_c_ends_any_command_with_one_line(command, capsys, monkeypatch, tmp_path):
    import clenv.app.spec as spec

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(spec.ResolvedRun, "build_agent", interrupted)
    argv = {"sweep": ["sweep", "--env", "RandomLabelDigits-v0", "--agents", "base", "--backend", "sequential"],
            "reproduce": ["reproduce", "table2", "--agents", "ViT", "--seeds", "0", "--env", "RandomLabelDigits-v0"],
            "compare": ["compare", "--env", "RandomLabelDigits-v0", "--agents", "base", "--jobs", "1"]}[command]
    assert main([*argv, *SMALL, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_compare_in_worker_processes_writes_what_one_process_writes(tmp_path, capsys):
    """--jobs 2 runs the four runs in two spawned processes; every result file is the one --jobs 1 writes."""
    from tests.test_structure import _run_files

    argv = ["compare", "--env", "RandomLabelDigits-v0", "--agents", "base,scratch", "--seeds", "0,1", "--no-progress",
            *SMALL]
    assert main([*argv, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert "wall with 2 process(es)" in capsys.readouterr().out
    one, two = _run_files(tmp_path / "one"), _run_files(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for k in one:
        assert one[k][0] == two[k][0] and all(np.array_equal(one[k][1][a], two[k][1][a]) for a in one[k][1])


from agents.ewc import EWCAgent  # noqa: E402 - for the user agent below


class DivergingEWC(EWCAgent):
    """EWC whose SGD step on the penalty diverges after its first task."""

    NAME = "diverging_ewc"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, ewc_lambda=1e7)


def _pid_and_threads(tag):
    import os

    import torch

    if tag == "fail":
        raise ValueError("call failed")
    return tag, os.getpid(), torch.get_num_threads()


def test_in_workers_runs_a_share_in_this_process_and_restores_its_threads():
    """With --jobs 2 this process is one of the two: its thread takes calls from the queue the worker takes from (the
    worker gets the first call at once, the thread here the second, before the worker has even started), at the
    requested thread count, and this process's own thread count is back afterwards."""
    import os

    import torch

    from clenv.app.spec import in_workers

    original = torch.get_num_threads()
    torch.set_num_threads(2)  # this process at 2 threads, the calls asked at 1: the calls run here must see 1
    try:
        out = dict(in_workers(_pid_and_threads, [(k,) for k in range(4)], jobs=2, threads=1))
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="call failed"):  # a failure here reaches the caller
            list(in_workers(_pid_and_threads, [(0,), ("fail",), (2,)], jobs=2, threads=1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)
    assert sorted(out) == [0, 1, 2, 3] and [out[k][0] for k in range(4)] == [0, 1, 2, 3]
    assert out[0][1] != os.getpid() and out[1][1] == os.getpid()
    assert all(threads == 1 for _, _, threads in out.values())
    assert len({pid for _, pid, _ in out.values()}) == 2


def test_compare_leaves_a_diverged_run_out_and_says_so(capsys):
    """EWC at Gamma 1e7 (a user agent class) diverges; compare still prints the table of the runs that finished,
    names the one left out, and exits 0 (a diverged run is a result of the method, not a usage error)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # EWC's own warning before it diverges
        assert main(["compare", "--env", "RandomLabelDigits-v0", "--agents", "tests.test_cli:DivergingEWC,base",
                     "--seeds", "0", "--no-save", "--no-progress", "--jobs", "1", "--env-set", "num_tasks=3",
                     "--env-set", "samples_per_task=64", "--env-set", "epochs_per_task=2"]) == 0
    out = capsys.readouterr().out
    assert "left out: tests.test_cli:DivergingEWC seed 0 diverged: diverging_ewc: training diverged before the end of" in out
    assert "| base" in out and "DivergingEWC |" not in out
