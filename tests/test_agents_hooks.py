"""The agent base's hooks are public names called through super(), and a one-file agent (examples/my_agent.py) runs
through the base and composes with the library's methods."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import agents
import clenv
from agents.base import Agent, SupervisedAgent
from agents.compose import compose

ROOT = Path(__file__).resolve().parents[1]


def _env(**kw):
    return gym.make("RandomLabelDigits-v0", **{"num_tasks": 2, "samples_per_task": 64, "epochs_per_task": 1, **kw})


def test_no_registered_agent_overrides_a_private_method_of_the_base():
    # A hook a method overrides must be public (documented, called through super()); a private name is not part of
    # the contract and would not compose.
    base = {n for klass in (Agent, SupervisedAgent) for n in vars(klass)
            if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))}
    for name in agents.available():
        if name.startswith(("tianshou", "sb3")):  # RL agents: tests/test_tianshou.py, test_sb3.py
            continue
        cls = agents.agent_class(name)
        for klass in cls.__mro__:
            if klass in (Agent, SupervisedAgent, object):
                continue
            assert not base & set(vars(klass)), f"{klass.__name__} overrides {sorted(base & set(vars(klass)))}"


def test_read_env_composes_through_super():
    # HAT adds steps_per_task, MAML / ANML add the env configuration: composed, both extensions run.
    spec = agents.agent_class("hat+maml").read_env(_env())
    assert spec["steps_per_task"] == 4 and spec["env_config"]["num_tasks"] == 2
    assert {"input_shape", "num_outputs", "backbone"} <= set(spec)


def _example():
    path = ROOT / "examples" / "my_agent.py"
    spec = importlib.util.spec_from_file_location("my_agent_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_agent_adds_its_penalty_and_runs_through_the_base():
    L1Agent = _example().L1Agent
    env = _env()
    agent = L1Agent(env, seed=0, l1_lambda=1e-3)
    assert agent.hparams["l1_lambda"] == 1e-3 and agent.hparams["lr"] == 1e-2  # DEFAULTS merged with the base's
    weights = [p for p in agent.network.parameters() if p.dim() >= 2]
    expected = 1e-3 * sum(float(p.detach().abs().sum()) for p in weights)
    assert float(agent.regularizer().detach()) == pytest.approx(expected, rel=1e-6)
    result = clenv.run(env, agent, seed=0, progress=False)
    assert result.steps == agent.num_updates == 8
    # The penalty's gradient is l1_lambda * sign(w): one step of a heavily penalised agent from the same init
    # moves every weight toward zero by lr * l1_lambda more than the plain agent's step does.
    plain, heavy = agents.make("base", env, seed=0), L1Agent(env, seed=0, l1_lambda=0.5)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    w0 = heavy.network.head.weight.detach().clone()
    plain.learn(x, y), heavy.learn(x, y)
    shift = (plain.network.head.weight - heavy.network.head.weight).detach()
    torch.testing.assert_close(shift, 1e-2 * 0.5 * torch.sign(w0), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="l1_lambda"):
        L1Agent(env, l1_lambda=-1.0)


def test_example_agent_composes_with_library_methods():
    L1Agent = _example().L1Agent
    cls = compose("l1+cbp", [L1Agent, agents.agent_class("cbp")])
    agent = cls(_env(), seed=0, replacement_rate=0.2, maturity_threshold=1, l1_lambda=1e-3)
    clenv.run(_env(), agent, seed=0, progress=False)
    assert agent.replaced_total > 0 and agent.hparams["optimizer"] == "sgd"  # first-named class's defaults win
