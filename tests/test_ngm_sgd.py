"""NGM-SGD (arXiv 2507.14056): the identities of shared/specs/methods.md 1.5 and the pitfalls of 1.9, on 8x8 digits.

Tolerances: float32 arithmetic, so identities between two computations of the same quantity hold to 1e-5 relative
(weight moves, entropies); update-rule algebra done in float64 on Python floats holds to 1e-6 (the gains are
float32 buffers).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import agents
from agents.ngm_sgd import GainLinear, gain_layers, mean_entropy
from clenv.envs import SupervisedStreamEnv


def joint_digits(**kw):
    base = dict(dataset="digits", stream="ordered_split", num_tasks=5, joint=True, steps_per_task=6, batch_size=32)
    return SupervisedStreamEnv(**{**base, **kw})


def batch(env, n=32, seed=0):
    env.reset(seed=seed)
    x, y = next(env.test_batches(0, batch_size=n, split="train"))
    return x.float() / 255.0, y


def manual_logits(agent, x):
    """The MLP forward written out with W_eff = diag(g) W (zero biases): what the gain layers must compute."""
    h = x.flatten(1)
    layers = gain_layers(agent.network)
    for i, layer in enumerate(layers):
        h = h @ (layer.gains[:, None] * layer.weight).T
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h


def test_gain_layer_scales_rows_of_w_only_and_owns_no_trainable_gain():
    layer = GainLinear(5, 3)
    layer.gains.copy_(torch.tensor([0.5, 2.0, 3.0]))
    x = torch.randn(4, 5)
    assert torch.allclose(layer(x), x @ layer.effective_weight().T, atol=1e-6)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]  # gains and bias are buffers: no optimiser
    assert not layer.gains.requires_grad and torch.equal(layer.bias, torch.zeros(3))


def test_one_sgd_step_moves_effective_weights_by_lr_g_squared_times_gradient():
    env = joint_digits()
    agent = agents.make("ngm_sgd", env, seed=0, eta=0.4)
    x, y = batch(env)
    for _ in range(3):  # let the gains leave g0 so that g^2 is not 1
        agent.learn(x, y)
    before = [layer.weight.detach().clone() for layer in gain_layers(agent.network)]
    # The gains the next step will use: the update happens before its forward with the last step's entropy.
    probe = agent.clone()
    probe.step_gain(probe._drive)
    gains = [layer.gains.clone() for layer in gain_layers(probe.network)]
    assert min(float(g.min()) for g in gains) > 1.5
    w_eff = [(g[:, None] * w).requires_grad_(True) for g, w in zip(gains, before)]
    h = x.flatten(1)
    for i, w in enumerate(w_eff):
        h = h @ w.T
        h = torch.relu(h) if i < len(w_eff) - 1 else h
    grads = torch.autograd.grad(F.cross_entropy(h, y), w_eff)
    agent.learn(x, y)
    lr = agent.hparams["lr"]
    for g, w0, layer, grad in zip(gains, before, gain_layers(agent.network), grads):
        assert torch.equal(layer.gains, g)  # the step used (and kept) exactly these gains
        moved = g[:, None] * (layer.weight.detach() - w0)
        expected = -lr * g[:, None] ** 2 * grad
        assert torch.allclose(moved, expected, rtol=1e-4, atol=1e-7)


def test_gain_uses_the_previous_steps_entropy_before_the_forward_pass():
    env = joint_digits()
    agent = agents.make("ngm_sgd", env, seed=0, eta=0.4)
    x, y = batch(env)
    h1 = mean_entropy(manual_logits(agent, x))  # step 1 trains on the pre-update weights with g = g0
    agent.learn(x, y)
    assert agent.current_gain() == pytest.approx(1.0, abs=1e-6)  # H_prev = 0 at the first step: g stays g0
    assert agent.last_entropy == pytest.approx(h1, rel=1e-5)
    agent.learn(x, y)
    assert agent.current_gain() == pytest.approx(1.0 + 0.4 * h1, rel=1e-6)  # 0.9*1 + 0.1*1 + eta*H_1


def test_gain_settles_at_g0_plus_eta_h_over_one_minus_gamma():
    env = joint_digits()
    agent = agents.make("ngm_sgd", env, seed=0, eta=0.4, gamma=0.9, g0=1.0)
    for _ in range(400):
        agent.step_gain(0.7)
    assert agent.current_gain() == pytest.approx(1.0 + 0.4 * 0.7 / (1 - 0.9), rel=1e-6)  # 3.8
    g = agent.gains()
    assert torch.allclose(g, g[0].expand_as(g))  # one scalar drive: every neuron's gain is the same


def test_evaluation_applies_the_gain_and_never_updates_it():
    env = joint_digits()
    agent = agents.make("ngm_sgd", env, seed=0)
    x, y = batch(env)
    for _ in range(3):
        agent.learn(x, y)
    g = agent.gains().clone()
    assert float(g.mean()) > 1.5
    logits = agent.predict(x)
    for _ in range(3):
        agent.predict(x)
    assert torch.equal(agent.gains(), g)
    assert torch.allclose(logits, manual_logits(agent, x), rtol=1e-5, atol=1e-5)  # g W, not g0 W
    with torch.no_grad():  # a train-mode forward without gradients is not a training step either
        agent.forward(x)
    assert torch.equal(agent.gains(), g)


def test_an_er_replay_batch_does_not_move_the_gain():
    env = joint_digits(batch_size=16)
    agent = agents.make("ngm_sgd+er", env, seed=0, replay_batch_size=16)
    env.reset(seed=0)
    obs, info = env.reset(seed=0)
    for _ in range(4):  # fill the memory through the contract
        action = agent.act(obs, info)
        nxt, r, term, trunc, info = env.step(action)
        agent.observe(obs, action, r, nxt, term, trunc, info)
        obs = nxt
    assert len(agent.memory) > 0
    g = agent.gains().clone()
    agent.act(obs, info)  # with a memory, act only answers (an auxiliary pass)
    assert torch.equal(agent.gains(), g)
    # The step's entropy is the stream rows': the same network on the stream batch alone gives it.
    x, y = agent.preprocess(obs), torch.as_tensor(np.asarray(env.unwrapped._labels))
    probe = agent.clone()
    probe.step_gain(probe._drive)
    agent.learn(x, y)
    stream_h = mean_entropy(manual_logits(probe, x))
    mx, _ = probe.memory_batch()
    mixed_h = mean_entropy(manual_logits(probe, torch.cat([x, probe.preprocess(mx)])))
    assert agent.last_entropy == pytest.approx(stream_h, rel=1e-5)
    assert abs(stream_h - mixed_h) > 1e-3  # the check can tell the two apart


def test_resnet_gain_is_on_the_head_only():
    env = joint_digits(batch_size=8, steps_per_task=2)
    agent = agents.make("ngm_sgd", env, seed=0, backbone="resnet18", momentum=0.9, head_momentum=0.0, eta=0.2)
    net = agent.network
    assert gain_layers(net) == [net.head] and net.head.in_features == 160  # nf = 20: 8 * nf features
    assert abs(float(net.head.weight.detach().std()) - 0.05) < 0.01 and torch.equal(net.head.bias, torch.zeros(10))
    groups = agent.optimizer.param_groups
    assert [g["momentum"] for g in groups] == [0.9, 0.0] and groups[1]["params"] == [net.head.weight]
    x, y = batch(env, n=8)
    for _ in range(3):
        agent.learn(x, y)
    assert float(net.head.gains.mean()) > 1.0 and agent.trace()["gain"] == pytest.approx(float(net.head.gains[0]))


def test_gains_get_no_gradient_no_weight_decay_and_biases_stay_zero():
    env = joint_digits()
    agent = agents.make("ngm_sgd", env, seed=0, weight_decay=0.1)
    trained = {id(p) for g in agent.optimizer.param_groups for p in g["params"]}
    for layer in gain_layers(agent.network):
        assert id(layer.gains) not in trained and id(layer.bias) not in trained
    x, y = batch(env)
    for _ in range(3):
        agent.learn(x, y)
    g = agent.gains()
    assert float(g.min()) > 1.0  # driven by the entropy only, not decayed towards 0
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in gain_layers(agent.network))


def test_fixed_gain_ablation_is_plain_sgd_on_the_mlp_and_baselines_match_the_scripts():
    env = joint_digits()
    x, y = batch(env)
    a, b = agents.make("ngm_fixed_gain", env, seed=3), agents.make("sgd", env, seed=3)
    for _ in range(4):
        a.learn(x, y), b.learn(x, y)
    for pa, pb in zip(a.network.parameters(), b.network.parameters()):
        assert torch.equal(pa, pb)
    assert torch.equal(a.gains(), torch.ones_like(a.gains()))
    m, adam = agents.make("momentum_sgd", env), agents.make("adam", env)
    assert (m.hparams["optimizer"], m.hparams["momentum"], m.hparams["lr"]) == ("sgd", 0.9, 0.01)
    assert (adam.hparams["optimizer"], adam.hparams["lr"]) == ("adam", 0.01)
    assert [layer.out_features for layer in gain_layers(m.network)] == [400, 400, 10]


def test_entropy_lr_ablation_scales_the_step_not_the_weights():
    env = joint_digits()
    agent = agents.make("ngm_entropy_lr", env, seed=0, eta=0.4)
    x, y = batch(env)
    for _ in range(3):
        agent.learn(x, y)
    assert torch.equal(agent.gains(), torch.ones_like(agent.gains()))
    assert agent.lr_gain > 1.5
    # the last step ran at lr * g^2, g being the lr gain that step's forward set (after_update leaves it)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * agent.lr_gain ** 2, rel=1e-12)
    assert agent.trace()["gain"] == agent.lr_gain


def test_momentum_reset_clears_the_optimiser_at_switches_only():
    env = joint_digits()
    agent = agents.make("momentum_sgd_reset", env, seed=0)
    x, y = batch(env)
    agent.on_task_switch(0)
    agent.learn(x, y)
    assert len(agent.optimizer.state) > 0
    agent.learn(x, y)
    agent.on_task_switch(1)
    assert len(agent.optimizer.state) == 0


def test_paper_rows_give_eta_per_benchmark():
    import gymnasium as gym

    from agents.paper_hparams import lookup

    assert lookup("ngm_sgd", None, "ngm_split_mnist").hparams == {"eta": 0.4}
    assert lookup("ngm_sgd", None, "ngm_rotated_mnist").hparams == {"eta": 0.5}
    assert lookup("ngm_sgd", None, "ngm_split_cifar10").hparams == dict(eta=0.2, momentum=0.9, head_momentum=0.0)
    env = gym.make("JointSplitFashionMNIST-v0")
    assert agents.make("ngm_sgd", env).hparams["eta"] == 0.4


@pytest.mark.parametrize("bad", [dict(gamma=1.0), dict(eta=-0.1), dict(gain_mode="both"), dict(g0=0.0),
                                 dict(gain_on="body"), dict(backbone="cnn"), dict(eta=float("nan"))])
def test_bad_hyperparameters_are_refused_with_a_message(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "backbone" not in bad else "authors' networks"):
        agents.make("ngm_sgd", joint_digits(), **bad)


def test_state_round_trip_continues_identically():
    env = joint_digits()
    x, y = batch(env)
    a = agents.make("ngm_sgd", env, seed=1)
    for _ in range(3):
        a.learn(x, y)
    b = agents.make("ngm_sgd", env, seed=1)
    b.load_state_dict(a.state_dict())
    a.learn(x, y), b.learn(x, y)
    assert torch.equal(a.gains(), b.gains()) and a.last_entropy == b.last_entropy
    assert math.isfinite(a.trace()["entropy"])
