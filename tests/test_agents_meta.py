"""Meta-learning baselines: MAML (reset to the meta-initialisation at each task) and ANML (NM-gated PLN)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from agents.common.meta import TaskSampler, meta_stream_seed, meta_train


@pytest.fixture(scope="module")
def split_env():
    return gym.make("SplitFashionMNIST-v0", num_tasks=2, steps_per_task=20, batch_size=64)


def test_maml_runs_two_tasks_and_resets_to_meta_init(split_env):
    agent = agents.make("maml", split_env, meta_steps=3, inner_steps=2)
    assert len(agent.meta_history) == 3
    init = {k: v.clone() for k, v in agent.meta_init.items()}
    assert all(torch.equal(v, init[k]) for k, v in agent.network.state_dict().items())
    result = clenv.run(split_env, agent, seed=0, progress=False)
    assert len(result.task_accuracy) == 2
    assert any(not torch.equal(v, init[k]) for k, v in agent.network.state_dict().items())  # trained on task 1
    agent.on_task_switch(2)
    assert all(torch.equal(v, init[k]) for k, v in agent.network.state_dict().items())


def test_maml_meta_init_differs_from_plain_init(split_env):
    base = agents.make("base", split_env, optimizer="sgd")
    maml = agents.make("maml", split_env, meta_steps=2, inner_steps=1)
    diff = [not torch.equal(a, b) for a, b in zip(base.network.state_dict().values(),
                                                 maml.network.state_dict().values())]
    assert all(diff)  # same seed, same plain init: every tensor was moved by meta-training


def test_meta_training_reduces_query_loss_on_the_task_distribution(split_env):
    torch.manual_seed(0)
    from agents.backbones import build_backbone

    net = build_backbone("mlp", (1, 28, 28), 10)
    env = split_env.unwrapped
    env.reset(seed=0)
    sampler = TaskSampler(env.config, meta_stream_seed(0), "cpu", max_samples=512)
    hist = meta_train(net, sampler, steps=30, inner_steps=2, inner_lr=1e-2, meta_batch=2, meta_lr=1e-3,
                      batch_size=32, query_size=64, first_order=True, seed=0)
    assert np.mean(hist[-5:]) < np.mean(hist[:5])


def test_meta_tasks_come_from_another_stream_seed(split_env):
    env = split_env.unwrapped
    env.reset(seed=0)
    sampler = TaskSampler(env.config, meta_stream_seed(0), "cpu")
    assert sampler.env.stream_seed != env.stream_seed
    assert sampler.num_tasks == env.num_tasks


def test_maml_needs_a_clenv_stream():
    spec = {"input_shape": (1, 8, 8), "num_outputs": 3, "action_type": "labels", "backbone": "mlp",
            "task_aware": False, "num_tasks": 2, "device": "cpu", "env_config": None, "batch_size": 4}
    with pytest.raises(ValueError, match="task distribution"):
        agents.make("maml", spec, meta_steps=1)


def test_anml_gates_features_and_trains_only_late_layers(split_env):
    agent = agents.make("anml", split_env, meta_steps=2, inner_steps=2)
    net = agent.network
    x = torch.rand(8, 1, 28, 28)
    gate = torch.sigmoid(net.nm(x))
    assert gate.shape == net.pln.body(x).shape and float(gate.min()) > 0 and float(gate.max()) < 1
    assert torch.allclose(agent.predict(x), net.pln.head(net.pln.body(x) * gate), atol=1e-6)
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    assert any(n.startswith("nm.") for n in frozen) and "pln.body.1.weight" in frozen
    assert set(trainable) == {"pln.body.3.weight", "pln.body.3.bias", "pln.head.weight", "pln.head.bias"}
    result = clenv.run(split_env, agent, seed=0, progress=False)
    assert len(result.task_accuracy) == 2
    for n, p in net.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), n
        else:
            assert not torch.equal(p.detach(), trainable[n]), n  # trained continually, never reset
