"""The package's structure: one direction of dependency, no import circles, one run specification for every command,
and a user's own agent in a single file running from the CLI."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clenv.app.cli import main
from clenv.app.spec import RunSpec

ROOT = Path(__file__).resolve().parents[1] / "clenv"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """clenv module -> the clenv / agents modules it imports anywhere in its text (top level or inside functions)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from clenv import loop` imports the module clenv.loop; `from clenv.x import f` imports clenv.x
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t.split(".")[0] in ("clenv", "agents")}
        graph[name] = edges - {name}
    return graph


def test_the_library_never_imports_the_application_layer_or_agents():
    graph = import_graph()
    library = [m for m in graph if not (m == "clenv.app" or m.startswith("clenv.app."))]
    assert "clenv.loop" in library and "clenv.app.cli" in graph  # the walk saw both layers
    bad = {m: sorted(t for t in graph[m] if t.startswith(("clenv.app", "agents"))) for m in library}
    assert not {m: t for m, t in bad.items() if t}


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    # `import clenv` runs clenv/__init__.py, which imports its submodules lazily: count those edges too
    nodes = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(nodes[m]):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t):] + [t])
                return True
            if t not in state and visit(t, path + [t]):
                return True
        state[m] = 2
        return False

    for m in sorted(nodes):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_private_names_do_not_cross_modules():
    """No clenv module imports another's underscore name (the loop's internals stay the loop's)."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clenv"):
                offenders += [f"{_module_name(path)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders


# ---------------------------------------------------------------------------------------------- one run spec
ENV = ["--env", "RandomLabelDigits-v0", "--env-set", "num_tasks=2", "--env-set", "samples_per_task=32",
       "--env-set", "epochs_per_task=2", "--env-set", "test_samples_per_task=64"]


def _run_files(root: Path) -> dict[str, tuple[dict, dict]]:
    """relative run folder -> (result.json without what differs between two executions, arrays)."""
    out = {}
    for f in root.rglob("result.json"):
        doc = json.loads(f.read_text())
        for k in ("created", "versions", "arrays"):
            doc.pop(k)
        doc["summary"].pop("wall_time")
        doc["metrics"].pop("probe_time_s", None)
        with np.load(f.parent / doc.pop("arrays_file", "arrays.npz")) as z:
            arrays = {k: z[k] for k in z.files}
        out[str(f.parent.relative_to(root))] = (doc, arrays)
    return out


def test_the_four_commands_write_identical_results_for_one_specification(tmp_path, capsys):
    common = ENV + ["--no-progress"]
    # reproduce first: its protocol decides the probe budget, which the other commands are then given
    assert main(["reproduce", "table1", "--benchmark", "random_label_mnist", "--agents", "cbp", "--seeds", "1",
                 "--out", str(tmp_path / "reproduce"), *common]) == 0
    ((_, (doc, _)),) = _run_files(tmp_path / "reproduce").items()
    evaluation = doc["config"]["identity"]["evaluation"]
    assert evaluation["adaptation"] is True and evaluation["gamma"] >= 2
    ev = [a for k, v in evaluation.items() for a in ("--eval-set", f"{k}={json.dumps(v)}")]
    assert main(["run", "--agent", "cbp", "--seed", "1", "--out", str(tmp_path / "run"), *common, *ev]) == 0
    assert main(["compare", "--agents", "cbp", "--seeds", "1", "--out", str(tmp_path / "compare"), *common, *ev]) == 0
    assert main(["sweep", "--agents", "cbp", "--seeds", "1", "--backend", "sequential", "--out",
                 str(tmp_path / "sweep"), *ENV, *ev]) == 0
    files = {cmd: _run_files(tmp_path / cmd / ("table1" if cmd == "reproduce" else ""))
             for cmd in ("reproduce", "run", "compare", "sweep")}
    (folder, (ref_doc, ref_arrays)), = files["run"].items()
    assert folder.startswith("RandomLabelDigits-v0/cbp/seed1-")
    assert ref_doc["config"]["identity"]["hparams"]["seed"] == 1  # the run seed seeded the agent
    for cmd, runs in files.items():
        assert list(runs) == [folder], cmd  # the same key names the same folder
        doc, arrays = runs[folder]
        assert doc == ref_doc, cmd
        assert arrays.keys() == ref_arrays.keys() and all(np.array_equal(arrays[k], ref_arrays[k], equal_nan=True)
                                                          for k in arrays), cmd
    # a run that `clenv run` did is done for `clenv sweep`
    capsys.readouterr()
    assert main(["sweep", "--agents", "cbp", "--seeds", "1", "--backend", "sequential", "--out",
                 str(tmp_path / "run"), *ENV, *ev]) == 0
    assert "1 already done, 0 to run" in capsys.readouterr().out


def test_a_spec_key_is_its_resolved_configuration():
    a = RunSpec("RandomLabelDigits-v0", "base", 0, {"num_tasks": 2}, {}).resolve()
    b = RunSpec("RandomLabelDigits-v0", "base", 0, {"num_tasks": 2, "batch_size": 16}, {"lr": 1e-2}).resolve()
    c = RunSpec("RandomLabelDigits-v0", "base", 1, {"num_tasks": 2}, {}).resolve()
    d = RunSpec("RandomLabelDigits-v0", "base", 0, {"num_tasks": 2}, {"seed": 1}).resolve()
    assert a.key == b.key  # defaults given explicitly: the same run (digits' row: SGD 1e-2, batch 16)
    assert len({a.key, c.key, d.key}) == 3  # another run seed, or another agent seed, is another run


# ---------------------------------------------------------------------------------------------- a user's agent
EXAMPLE_AGENT = ROOT.parent / "examples" / "my_agent.py"  # the documented one-file agent (docs/agents.md)


@pytest.fixture
def user_agent_dir(tmp_path, monkeypatch):
    shutil.copy(EXAMPLE_AGENT, tmp_path / "my_agents.py")  # a file outside any package, in the user's directory
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_user_agent_in_one_file_runs_from_the_cli_and_in_a_sweep(user_agent_dir, capsys):
    out = user_agent_dir / "runs"
    assert main(["run", "--agent", "my_agents:L1Agent", "--agent-set", "l1_lambda=0.01", "--out", str(out),
                 "--no-progress", *ENV]) == 0
    (result,) = out.rglob("result.json")
    doc = json.loads(result.read_text())
    assert doc["config"]["agent"]["l1_lambda"] == 0.01 and doc["agent"] == "my_agents:L1Agent"
    assert main(["sweep", "--agents", "my_agents:L1Agent", "--grid", "l1_lambda=0.01,0.1", "--backend", "sequential",
                 "--out", str(out), *ENV]) == 0
    text = capsys.readouterr().out
    assert "2 runs" in text and "1 already done, 1 to run" in text  # the CLI's run is the sweep's first point
    assert len(list(out.rglob("result.json"))) == 2
    # ... and in worker processes, which import it from the user's directory too
    assert main(["compare", "--agents", "my_agents:L1Agent", "--seeds", "0,1", "--jobs", "2", "--no-save",
                 "--no-progress", *ENV]) == 0
    assert "wall with 2 process(es)" in capsys.readouterr().out


def test_a_user_agent_runs_from_the_console_script_in_its_directory(user_agent_dir):
    exe = Path(sys.executable).with_name("clenv")
    proc = subprocess.run([str(exe), "run", "--agent", "my_agents:L1Agent", "--no-save", "--no-progress", *ENV,
                           "--total-steps", "3"], capture_output=True, text=True, timeout=300, cwd=user_agent_dir)
    assert proc.returncode == 0, proc.stderr
    assert "my_agents:L1Agent on RandomLabelDigits-v0, seed 0: 3 steps" in proc.stdout
    bad = subprocess.run([str(exe), "run", "--agent", "my_agents:Nope", "--no-save", *ENV], capture_output=True,
                         text=True, timeout=300, cwd=user_agent_dir)
    assert bad.returncode == 2 and "cannot load agent 'my_agents:Nope'" in bad.stderr
