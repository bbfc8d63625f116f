"""The seed rule's agent half: ``seed_explicit`` says whether ``seed`` was given, and ``reseed(s)`` makes an agent
the one it would have been if made with ``seed=s`` (network, optimiser, every generator it owns)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import agents
import clenv  # noqa: F401  (registers the envs)
from agents.base import random_streams

ENV_KW = dict(num_tasks=2, samples_per_task=64, epochs_per_task=1)
# Mechanisms that draw from the agent's generators within a few steps.
KW = {"cbp": dict(replacement_rate=0.2, maturity_threshold=1), "redo": dict(reset_period=2, dormant_threshold=0.5),
      "cbp+er": dict(replacement_rate=0.2, maturity_threshold=1, replay_batch_size=8),
      "neumosync+agem": dict(replay_batch_size=8), "er": dict(replay_batch_size=8)}
NAMES = ["base", "cbp", "redo", "shrink_perturb_continual", "er", "hat", "neumosync", "cbp+er", "neumosync+agem"]


def _env():
    return gym.make("RandomLabelDigits-v0", **ENV_KW)


def _tensors(state, path=""):
    if isinstance(state, torch.Tensor):
        yield path, state
    elif isinstance(state, dict):
        for k, v in state.items():
            yield from _tensors(v, f"{path}.{k}")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from _tensors(v, f"{path}.{i}")


def _assert_same_state(a, b):
    ta, tb = dict(_tensors(a.state_dict())), dict(_tensors(b.state_dict()))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _train(agent, steps=6):
    g = torch.Generator().manual_seed(123)
    agent.on_task_switch(0)
    for _ in range(steps):
        agent.learn(torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))


@pytest.mark.parametrize("name", NAMES)
def test_reseed_equals_construction_with_that_seed(name):
    made = agents.make(name, _env(), **KW.get(name, {}))
    assert made.seed_explicit is False and made.hparams["seed"] == 0
    made.reseed(3)
    seeded = agents.make(name, _env(), seed=3, **KW.get(name, {}))
    assert seeded.seed_explicit is True
    assert made.seed_explicit is False and made.hparams == seeded.hparams and made.hparams["seed"] == 3
    _assert_same_state(made, seeded)
    other = agents.make(name, _env(), seed=4, **KW.get(name, {}))
    assert not torch.equal(next(other.network.parameters()), next(made.network.parameters()))  # the seed matters
    _train(made), _train(seeded)
    _assert_same_state(made, seeded)
    assert list(random_streams(made)) == list(random_streams(seeded))


def test_reseed_discards_training_and_keeps_the_hparam_source():
    a = agents.make("cbp", _env(), **KW["cbp"])
    source = a.hparam_source
    _train(a)
    a.reseed(0)
    _assert_same_state(a, agents.make("cbp", _env(), seed=0, **KW["cbp"]))
    assert a.num_updates == 0 and a.hparam_source == source


def test_tianshou_agents_reseed():
    pytest.importorskip("tianshou")
    env = gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=50)
    a = agents.make("tianshou_dqn", env, hidden=(8,))
    assert a.seed_explicit is False
    a.reseed(2)
    b = agents.make("tianshou_dqn", env, hidden=(8,), seed=2)
    assert b.seed_explicit and a.hparams == b.hparams
    _assert_same_state(a, b)
    obs, info = env.reset(seed=0)
    assert [a.act(obs, info) for _ in range(20)] == [b.act(obs, info) for _ in range(20)]


def test_reseed_to_the_same_seed_keeps_an_untrained_agent_and_its_objects():
    a = agents.make("cbp", _env())
    net = a.network
    a.reseed(0)
    assert a.network is net  # nothing to change: references held to it stay valid
    _assert_same_state(a, agents.make("cbp", _env(), seed=0))
