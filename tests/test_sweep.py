"""clenv sweep: expansion, validation at the boundary, sequential and Ray backends, skip-finished resume."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import agents
import clenv
from clenv.app import spec, sweep
from clenv.results import load_run
from clenv.app.sweep import SweepConfigError, expand, run_sweep, sweep_main, validate_config

ENV_KW = dict(num_tasks=2, samples_per_task=32, batch_size=16, epochs_per_task=2, test_samples_per_task=16)


def config(tmp_path, **over):
    doc = dict(envs=["RandomLabelDigits-v0"], env_kwargs=ENV_KW, agents=["base", "scratch"],
               agent_kwargs={"optimizer": "adam", "lr": 1e-3}, seeds=[0, 1], out=str(tmp_path / "runs"),
               backend="sequential")
    doc.update(over)
    return doc


def quiet(*_):
    pass


def test_expand_counts_labels_and_keys(tmp_path):
    doc = config(tmp_path, grid={"lr": [1e-3, 1e-2], "momentum": [0.0]},
                 agents={"base": {}, "scratch": {"weight_decay": 0.1}})
    specs = expand(validate_config(doc))
    assert len(specs) == 1 * 2 * 2 * 1 * 2
    keys = {s.resolve().key for s in specs}
    assert len(keys) == len(specs)
    assert {s.label for s in specs} == {"base[lr=0.001,momentum=0.0]", "base[lr=0.01,momentum=0.0]",
                                        "scratch[lr=0.001,momentum=0.0]", "scratch[lr=0.01,momentum=0.0]"}
    s = next(s for s in specs if s.agent == "scratch" and s.agent_kwargs["lr"] == 1e-2)
    assert s.agent_kwargs == {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 0.1}
    # the key covers everything that changes the result: another total_steps is another run
    other = expand(validate_config({**doc, "total_steps": 3}))
    assert not {x.resolve().key for x in other} & keys
    # ... while asking for a default explicitly is the same run (the key hashes the resolved configuration)
    explicit = expand(validate_config({**doc, "agent_kwargs": {**doc["agent_kwargs"], "betas": [0.9, 0.999]}}))
    assert {x.resolve().key for x in explicit} == keys


def test_sequential_sweep_saves_one_record_per_run_equal_to_a_direct_run(tmp_path, capsys):
    assert sweep_main(["--config", _write(tmp_path, config(tmp_path))]) == 0
    out = capsys.readouterr().out
    dirs = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(dirs) == 4
    runs = {(r.agent, r.seed): r for r in (load_run(d.parent) for d in dirs)}
    assert set(runs) == {("base", 0), ("base", 1), ("scratch", 0), ("scratch", 1)}
    for (name, seed), r in runs.items():
        env = gym.make("RandomLabelDigits-v0", **ENV_KW)
        direct = clenv.run(env, agents.make(name, env, optimizer="adam", lr=1e-3), seed=seed, progress=False)
        assert np.array_equal(r.step_reward, direct.step_reward) and r.task_accuracy == direct.task_accuracy
        assert r.metrics["avg_online_acc"] == pytest.approx(direct.average_accuracy)
        hp = r.config["identity"]["hparams"]
        assert r.config["agent_name"] == name and (hp["optimizer"], hp["lr"], hp["seed"]) == ("adam", 1e-3, seed)
    table = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "| base |" in table and "| scratch |" in table and "over up to 2 seeds" in table
    assert "| base |" in out


def _write(tmp_path, doc, name="sweep.json"):
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_rerun_skips_finished_runs_and_redoes_only_missing_ones(tmp_path, monkeypatch):
    cfg = validate_config(config(tmp_path))
    first = run_sweep(cfg, log=quiet)
    assert len(first["done"]) == 4 and first["skipped"] == 0
    calls = []
    real = sweep.execute

    def counting(spec, *a, **k):
        calls.append(spec.describe())
        return real(spec, *a, **k)

    monkeypatch.setattr(sweep, "execute", counting)
    again = run_sweep(cfg, log=quiet)
    assert again["skipped"] == 4 and not again["done"] and calls == []
    victim = first["dirs"][2]
    (victim / "result.json").unlink()
    third = run_sweep(cfg, log=quiet)
    assert calls == [first["specs"][2].describe()] and third["skipped"] == 3 and len(third["dirs"]) == 4


def test_failed_run_is_reported_others_saved_and_retried_on_rerun(tmp_path, capsys):
    doc = config(tmp_path, agents={"base": {}, "scratch": {"backbone": "no_such_backbone"}}, seeds=[0])
    assert sweep_main(["--config", _write(tmp_path, doc)]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "no_such_backbone" in err
    assert [load_run(d.parent).agent for d in (tmp_path / "runs").rglob("result.json")] == ["base"]


def test_checkpointed_run_resumes_mid_stream(tmp_path, monkeypatch):
    cfg = validate_config(config(tmp_path, agents=["base"], seeds=[5], checkpoint_every=2))
    (spec,) = expand(cfg)
    ck_dir = tmp_path / "runs" / ".checkpoints" / spec.resolve().key
    env = gym.make("RandomLabelDigits-v0", **ENV_KW)
    clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=5, progress=False, total_steps=3,
              callbacks=[clenv.Checkpoint(ck_dir, every=2)])  # an interrupted run left a checkpoint at step 2
    assert (ck_dir / "checkpoint.pt").is_file()
    resumed = []
    real_resume = clenv.checkpoint.resume
    monkeypatch.setattr(clenv.checkpoint, "resume", lambda *a, **k: resumed.append(a[0]) or real_resume(*a, **k))
    report = run_sweep(cfg, log=quiet)
    r = load_run(report["dirs"][0])
    assert resumed == [ck_dir] and not ck_dir.exists()  # resumed, then the spent checkpoint is removed
    env = gym.make("RandomLabelDigits-v0", **ENV_KW)
    direct = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=5, progress=False)
    assert np.array_equal(r.step_reward, direct.step_reward)


@pytest.mark.parametrize("change,pattern", [
    (dict(agnets=["base"]), r"unknown sweep config key\(s\) 'agnets'; did you mean 'agents'\?"),
    (dict(agents=["base", "nope"]), r"'agents': unknown agent 'nope'"),
    (dict(agents=["base", "crleu"]), r"'agents': unknown agent 'crleu'; did you mean 'crelu'\?"),
    (dict(envs=["RandomLabelDigit-v0"]), r"'envs': unknown env id 'RandomLabelDigit-v0'; did you mean "
                                         r"'RandomLabelDigits-v0'\?"),
    (dict(grid={"lrr": [0.1]}), r"'grid'.*base\[lrr=0.1\].*unknown hyperparameter.*'lrr'"),
    (dict(grid={"lr": 0.1}), r"'grid.lr' must be a non-empty list"),
    (dict(seeds=["a"]), r"'seeds' must be a non-empty list of integers"),
    (dict(env_kwargs={"num_task": 3}), r"'env_kwargs'.*unknown keyword argument.*'num_task'"),
    (dict(agents={"base": {"lr2": 1}}), r"'agent_kwargs'.*unknown hyperparameter.*'lr2'"),
    (dict(agents={"base": {"lr": "fast"}}), r"'agent_kwargs'.*lr='fast' should be a number"),
    (dict(seeds=[0, -1]), r"'seeds'.*integers >= 0, got -1"),
    (dict(evaluation={"forget": True}), r"'evaluation'.*unexpected keyword argument 'forget'"),
    (dict(backend="dask"), r"'backend' must be one of ray, processes, sequential"),
    (dict(total_steps=0), r"'total_steps' must be an integer >= 1"),
    (dict(envs=None), r"'envs' is required"),
])
def test_bad_config_names_the_key(tmp_path, change, pattern):
    with pytest.raises(SweepConfigError, match=pattern):
        validate_config(config(tmp_path, **change))


def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path, config(tmp_path, seeds=[0, 0]))
    assert sweep_main(["--config", path]) == 2
    assert "'seeds' repeats a seed" in capsys.readouterr().err
    assert sweep_main(["--config", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "broken.json").write_text("{envs: ")
    assert sweep_main(["--config", str(tmp_path / "broken.json")]) == 2
    assert "invalid JSON" in capsys.readouterr().err
    assert sweep_main(["--env", "RandomLabelDigits-v0", "--agents", "base", "--seeds", "x", "--out",
                       str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_yaml_config_and_flags_override(tmp_path):
    yaml = pytest.importorskip("yaml")
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(config(tmp_path, seeds=[0, 1, 2])))
    args = sweep.build_parser().parse_args(["--config", str(p), "--seeds", "3", "--grid", "lr=0.1,0.2",
                                            "--grid", "hidden=[[8],[8,8]]"])
    cfg = validate_config(sweep._flags_to_config(args))
    assert cfg.seeds == [3] and cfg.grid == {"lr": [0.1, 0.2], "hidden": [[8], [8, 8]]}
    assert cfg.env_kwargs == ENV_KW and list(cfg.agents) == ["base", "scratch"]


def test_dry_run_lists_runs_without_running(tmp_path, capsys):
    assert sweep_main(["--config", _write(tmp_path, config(tmp_path)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("[todo]") == 4 and not (tmp_path / "runs").exists()


def test_without_ray_the_default_backend_is_local_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "_ray_available", lambda: False)
    messages = []
    report = run_sweep(validate_config(config(tmp_path, backend=None, agents=["base"], seeds=[0])),
                       log=messages.append)
    assert report["backend"] == "processes" and any("ray is not installed" in m for m in messages)
    assert len(report["done"]) == 1
    with pytest.raises(SweepConfigError, match="needs Ray"):
        run_sweep(validate_config(config(tmp_path, backend="ray", seeds=[7])), log=quiet)


def test_import_clenv_does_not_import_ray():
    code = "import sys, clenv, clenv.app.sweep, clenv.checkpoint; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["ray", "processes"])
def test_parallel_backends_match_sequential(tmp_path, backend):
    if backend == "ray":
        pytest.importorskip("ray")
    seq = run_sweep(validate_config(config(tmp_path / "seq")), log=quiet)
    extra = dict(num_cpus=2) if backend == "ray" else dict(jobs=2)
    ray_report = run_sweep(validate_config(config(tmp_path / backend, backend=backend, **extra)), log=quiet)
    assert ray_report["backend"] == backend and len(ray_report["done"]) == 4 and not ray_report["failed"]
    a = {(r.agent, r.seed): r for r in map(load_run, seq["dirs"])}
    b = {(r.agent, r.seed): r for r in map(load_run, ray_report["dirs"])}
    assert set(a) == set(b) and len(a) == 4
    for k in a:
        assert np.array_equal(a[k].step_reward, b[k].step_reward) and a[k].task_accuracy == b[k].task_accuracy
