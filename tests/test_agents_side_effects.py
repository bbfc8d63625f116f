"""Forward passes that are not the training step leave an agent's running statistics alone.

One mechanism in the base (``SupervisedAgent.auxiliary_forward``) covers A-GEM's memory gradient, ER's answering
pass (the step then trains on stream + replay), ReDo's probe, EWC's Fisher and ``predict``: BatchNorm running
statistics, NeuMoSync's neuron activity EMA and trace, and CBP's / HAT's recorded activations are fed by the
training forward only. Checked across compositions, on the CNN with BatchNorm after every conv.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch

import agents
import agents.base
import clenv
from agents.compose import compose

ENV_KW = dict(num_tasks=2, samples_per_task=64, epochs_per_task=2)  # 16 steps


class BatchNormCNN:
    """Test mixin: the 8-16-32-64 CNN with BatchNorm after every conv."""

    DEFAULTS = dict(backbone="cnn")

    def backbone_options(self):
        return {**super().backbone_options(), "batchnorm": True}


def _make(name, **kw):
    cls = compose(f"bn+{name}", [BatchNormCNN, agents.agent_class(name)])
    env = gym.make("RandomLabelDigits-v0", **ENV_KW)
    if "replay_batch_size" in agents.base.collect_defaults(cls):
        kw = {"replay_batch_size": 8, **kw}
    return cls(env, seed=0, **kw), env


def _norms(agent):
    return [m for m in agent.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]


COMPOSITIONS = ["neumosync+agem", "neumosync+er", "cbp+agem", "agem", "er"]


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_batchnorm_counts_one_training_forward_per_step(name):
    agent, env = _make(name)
    assert _norms(agent)
    clenv.run(env, agent, seed=1, progress=False)
    assert agent.num_updates == 16 and len(agent.memory) > 0
    for bn in _norms(agent):
        # The memory forward (A-GEM) and the answering forward (ER) are not counted.
        assert int(bn.num_batches_tracked) == agent.num_updates


@pytest.mark.parametrize("name", ["neumosync+agem", "cbp+agem"])
def test_statistics_do_not_depend_on_the_memory_batch(name):
    # A-GEM's reference gradient comes from the memory; the statistics of the step must come from the stream batch
    # only. Two copies that differ only in their memory's contents take one step on the same batch.
    agent, env = _make(name)
    clenv.run(env, agent, seed=1, progress=False, total_steps=6)
    other = copy.deepcopy(agent)
    other.memory.x = torch.flip(other.memory.x, dims=(-1,)).contiguous()  # other inputs, same labels and draws
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    for a in (agent, other):
        a.learn(x, y)
    for bn_a, bn_b in zip(_norms(agent), _norms(other)):
        assert torch.equal(bn_a.running_mean, bn_b.running_mean) and torch.equal(bn_a.running_var, bn_b.running_var)
    if hasattr(agent.network, "activity"):
        # The activity EMA is updated after the step from the training pass's pre-activations, which are computed
        # before any projection, so they are the same in both copies.
        assert torch.equal(agent.network.activity, other.network.activity)
        assert torch.equal(agent.network.last_alphas, other.network.last_alphas)
    if hasattr(agent, "gnt"):
        for sa, sb in zip(agent.gnt.states, other.gnt.states):
            assert torch.equal(sa["age"], sb["age"])
        assert agent._features is not None and other._features is not None
        for k in agent._features:
            assert torch.equal(agent._features[k], other._features[k])


def _state_tensors(agent):
    out = {}

    def walk(v, path):
        if isinstance(v, torch.Tensor):
            out[path] = v.detach().clone()
        elif isinstance(v, dict):
            for k, w in v.items():
                walk(w, f"{path}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, w in enumerate(v):
                walk(w, f"{path}.{i}")
    walk(agent.state_dict(), "")
    return out


@pytest.mark.parametrize("name", ["neumosync", "cbp", "hat", "neumosync+agem", "redo", "ewc"])
def test_predict_changes_no_state(name):
    agent, env = _make(name)
    clenv.run(env, agent, seed=1, progress=False, total_steps=5)
    before = _state_tensors(agent)
    alphas = getattr(agent.network, "last_alphas", None)
    features = getattr(agent, "_features", None)
    for mode in (True, False):  # probes may find the network in either mode
        agent.network.train(mode)
        agent.predict(torch.rand(32, 1, 8, 8))
    after = _state_tensors(agent)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    if alphas is not None:
        assert agent.network.last_alphas is alphas
    assert getattr(agent, "_features", None) is features


def test_auxiliary_forward_restores_what_it_froze():
    agent, _ = _make("neumosync")
    with agent.auxiliary_forward():
        assert agent.auxiliary and agent.network.statistics_frozen
        assert not any(bn.track_running_stats for bn in _norms(agent))
        with agent.auxiliary_forward():
            assert agent.auxiliary
        assert agent.auxiliary and agent.network.statistics_frozen  # a nested block restores the outer state
    assert not agent.auxiliary and not agent.network.statistics_frozen
    assert all(bn.track_running_stats for bn in _norms(agent))
