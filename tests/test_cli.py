"""The `clenv` command line: list, run, compare, and its errors."""

import json
import subprocess
import sys

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
                 "--no-save", "--no-progress", *SMALL])
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
