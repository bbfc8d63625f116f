"""tianshou integration: agents through clenv.run, clenv envs inside tianshou's Collector / trainer, plasticity hooks.

tianshou objects cost seconds of numba start-up per process, so the expensive ones are built once per session.
"""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("tianshou")

import agents  # noqa: E402
import clenv  # noqa: E402
from agents.backbones import build_backbone  # noqa: E402
from agents.rl.hooks import CBPHook, PlasticityOptimizerFactory, ReDoHook, ShrinkPerturbHook  # noqa: E402

SMALL_DQN = dict(hidden=(32, 32), start_steps=64, train_every=4, batch_size=32, buffer_size=2000,
                 eps_decay_steps=400, target_update_freq=20)


def _cartpole(num_tasks=5, steps_per_task=120):
    return gym.make("ContinualCartPole-v0", num_tasks=num_tasks, steps_per_task=steps_per_task)


@pytest.fixture(scope="session")
def dqn_run():
    """One tianshou DQN trained by clenv.run across 4 task switches (shared by several tests)."""
    env = _cartpole()
    agent = agents.make("tianshou_dqn", env, seed=3, **SMALL_DQN)
    before = [p.detach().clone() for p in agent.network.parameters()]
    result = clenv.run(env, agent, seed=11, progress=False)
    return env, agent, before, result


def _expected_updates(steps, start, every):
    return sum(1 for n in range(1, steps + 1) if n >= start and n % every == 0)


def test_one_loop_trains_supervised_and_tianshou_agents(dqn_run):
    sup_env = gym.make("RandomLabelDigits-v0", num_tasks=2, samples_per_task=64, epochs_per_task=1, batch_size=16)
    sup = agents.make("base", sup_env, optimizer="adam", lr=1e-3)
    w0 = sup.network.head.weight.detach().clone()
    sup_result = clenv.run(sup_env, sup, seed=0, progress=False)
    assert sup_result.num_task_switches == 1 and sup.num_updates == sup_result.steps == 8
    assert not torch.equal(w0, sup.network.head.weight)

    env, agent, before, result = dqn_run
    assert result.num_task_switches == 4 and result.task_ids == [0, 1, 2, 3, 4]
    assert result.steps == 600 and agent.num_env_steps == 600
    assert agent.num_updates == _expected_updates(600, SMALL_DQN["start_steps"], SMALL_DQN["train_every"])
    assert all(not torch.equal(b, p) for b, p in zip(before, agent.network.parameters()))
    assert len(result.task_return) == 5 and all(np.isfinite(result.task_return))
    assert agent.task_id == 4


def test_dqn_same_seed_same_run(dqn_run):
    _, agent, _, result = dqn_run
    env = _cartpole()
    again = agents.make("tianshou_dqn", env, seed=3, **SMALL_DQN)
    r2 = clenv.run(env, again, seed=11, progress=False)
    np.testing.assert_array_equal(result.records["episodes"], r2.records["episodes"])
    for p, q in zip(agent.network.parameters(), again.network.parameters()):
        assert torch.equal(p, q)


def test_ppo_updates_once_per_rollout():
    env = _cartpole(num_tasks=4, steps_per_task=100)
    agent = agents.make("tianshou_ppo", env, hidden=(16,), rollout_steps=128, repeat=2, batch_size=32)
    w0 = agent.critic_network.head.weight.detach().clone()
    result = clenv.run(env, agent, seed=0, progress=False)
    assert result.num_task_switches == 3
    assert agent.num_updates == 400 // 128 and len(agent.buffer) == 400 % 128
    assert not torch.equal(w0, agent.critic_network.head.weight)


@pytest.mark.parametrize("activation, cls", [("prelu", nn.PReLU), ("crelu", None)])
def test_prelu_and_crelu_q_networks(activation, cls):
    env = _cartpole(num_tasks=1, steps_per_task=100)
    agent = agents.make("tianshou_dqn", env, activation=activation, **{**SMALL_DQN, "start_steps": 32})
    clenv.run(env, agent, seed=0, progress=False)
    layer = agent.network.unit_layers[0]
    if cls is nn.PReLU:
        assert isinstance(layer.activation, nn.PReLU)
        assert not torch.allclose(layer.activation.weight, torch.full_like(layer.activation.weight, 0.25))
    else:
        # CReLU doubles the width the next layer reads.
        assert layer.outgoing.in_features == 2 * layer.num_units


def test_collector_and_trainer_run_on_clenv_env():
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.trainer import OffPolicyTrainerParams

    from agents.rl.tianshou_agents import tianshou_venv

    make = lambda: _cartpole(num_tasks=3, steps_per_task=150)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), **SMALL_DQN, intervention="redo", intervention_kwargs={"every": 5})
    agent.algorithm.policy.set_eps_training(0.2)
    seen = []
    venv = tianshou_venv([make])
    venv.seed(0)
    collector = Collector(agent.algorithm, venv, VectorReplayBuffer(2000, 1),
                          on_step_hook=lambda act, roll: seen.extend(
                              (int(t), bool(s)) for t, s in zip(roll.info["task_id"], roll.info["task_switch"])))
    agent.algorithm.run_training(OffPolicyTrainerParams(
        training_collector=collector, max_epochs=3, epoch_num_steps=150, collection_step_num_env_steps=10,
        update_step_num_gradient_steps_per_sample=0.1, batch_size=32, test_collector=None, verbose=False,
        show_progress=False))
    tasks = [t for t, _ in seen]
    assert tasks[:150] == [0] * 150 and set(tasks) == {0, 1, 2}
    # The ReDo hook ran inside tianshou's own trainer (once per 5 gradient steps).
    assert agent.intervention_stats["redo_calls"] >= 5


# ------------------------------------------------------------------ hooks, without tianshou's trainer
def _hooked(intervention, lr=1e-3, opt="adam", hidden=(8, 8), activation="relu"):
    from tianshou.algorithm.optim import TorchOptimizerFactory

    torch.manual_seed(0)
    net = build_backbone("mlp", (4,), 2, hidden=hidden, activation=activation)
    base = TorchOptimizerFactory(torch.optim.Adam if opt == "adam" else torch.optim.SGD, lr=lr)
    optim, _ = PlasticityOptimizerFactory([intervention], base=base).create_instances(nn.Sequential(net))
    return net, optim


def _train_step(net, optim, x):
    loss = net(x).pow(2).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()


def test_redo_resets_exactly_the_dormant_units_and_their_adam_moments():
    hook = ReDoHook(tau=0.05, every=1)
    net, optim = _hooked(hook, hidden=(8,))  # one unit layer: its consumer is the head, which nothing resets
    x = torch.randn(64, 4)
    _train_step(net, optim, x)  # Adam state exists
    layer = net.unit_layers[0]
    with torch.no_grad():  # units 2 and 5 can never fire
        layer.incoming.weight[[2, 5]] = 0.0
        layer.incoming.bias[[2, 5]] = -10.0
    w_before = layer.incoming.weight.detach().clone()
    _train_step(net, optim, x)
    dormant = {2, 5}
    changed = {i for i in range(8) if not torch.equal(layer.incoming.weight[i], w_before[i])}
    assert dormant <= changed
    assert torch.all(layer.incoming.bias[[2, 5]] == 0)
    assert torch.all(layer.outgoing.weight[:, [2, 5]] == 0)
    state = optim.state[layer.incoming.weight]
    assert torch.all(state["exp_avg"][[2, 5]] == 0) and torch.all(state["exp_avg_sq"][[2, 5]] == 0)
    live = [i for i in range(8) if i not in dormant]
    assert torch.all(state["exp_avg_sq"][live].abs().sum(1) > 0)
    assert hook.stats["units_reset"] >= 2


def test_cbp_replaces_lowest_utility_mature_units_at_the_rate():
    hook = CBPHook(replacement_rate=1 / 8, decay=0.0, maturity=0)  # one unit per layer per step
    net, optim = _hooked(hook, lr=0.0, opt="sgd", activation="tanh")  # tanh: no dead unit ties at utility 0
    x = torch.randn(32, 4)
    layer = net.unit_layers[1]
    with torch.no_grad():
        layer.outgoing.weight[:, 6] = 1e-6  # unit 6 of the second layer contributes least
    _train_step(net, optim, x)
    assert hook.stats["units_reset"] == 2  # one per unit layer
    assert hook.age[1][6] == 0 and int((hook.age[1] == 0).sum()) == 1
    assert torch.all(layer.outgoing.weight[:, 6] == 0)


def test_cbp_moves_mean_contribution_into_bias():
    hook = CBPHook(replacement_rate=1 / 8, decay=0.0, maturity=0)
    net, optim = _hooked(hook, lr=0.0, opt="sgd", hidden=(8,), activation="tanh")
    x = torch.rand(32, 4)
    with torch.no_grad():
        y0 = net(x).mean(0)
        h = torch.tanh(net.unit_layers[0].incoming(x)).mean(0)
    head_w = net.head.weight.detach().clone()
    _train_step(net, optim, x)
    (unit,) = torch.nonzero(hook.age[0] == 0).flatten().tolist()
    assert (head_w[:, unit] * h[unit]).abs().max() > 1e-4  # the removed contribution was not negligible
    # With decay 0 the stored mean is this batch's, so the head's batch-mean output is exactly preserved.
    with torch.no_grad():
        assert torch.allclose(net(x).mean(0), y0, atol=1e-6)


def test_shrink_perturb_is_exactly_a_scaling_without_noise():
    hook = ShrinkPerturbHook(shrink=0.5, noise=0.0, every=2)
    net, optim = _hooked(hook, lr=0.0, opt="sgd")
    w0 = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(8, 4)
    _train_step(net, optim, x)  # step 1: not a multiple of `every`
    assert all(torch.equal(a, b) for a, b in zip(w0, net.parameters()))
    _train_step(net, optim, x)
    assert all(torch.allclose(0.5 * a, b) for a, b in zip(w0, net.parameters()))


def test_a_factory_attaches_once_and_errors_are_clear():
    hook = ReDoHook()
    fac = PlasticityOptimizerFactory([hook])
    fac.create_instances(build_backbone("mlp", (4,), 2))
    with pytest.raises(RuntimeError, match="already attached"):
        fac.create_instances(build_backbone("mlp", (4,), 2))
    env = _cartpole(num_tasks=1)
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        agents.make("tianshou_dqn", env, learning_rate=1)
    with pytest.raises(ValueError, match="unknown intervention"):
        agents.make("tianshou_dqn", env, intervention="dropout")
    with pytest.raises(TypeError, match="Discrete action"):
        agents.make("tianshou_dqn", gym.make("MountainCarContinuous-v0"))


def test_clenv_and_agents_import_without_tianshou():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'tianshou' or name.startswith('tianshou.'):\n"
            "            raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import gymnasium as gym, clenv, agents\n"
            "env = gym.make('ContinualCartPole-v0', num_tasks=2, steps_per_task=5)\n"
            "assert 'tianshou_dqn' in agents.available()\n"
            "try:\n"
            "    agents.make('tianshou_dqn', env)\n"
            "except ImportError:\n"
            "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name, kw", [
    ("tianshou_dqn", dict(SMALL_DQN, intervention="cbp", intervention_kwargs=dict(replacement_rate=0.05,
                                                                                  maturity=5))),
    ("tianshou_ppo", dict(hidden=(16,), rollout_steps=64, repeat=1, batch_size=32, intervention="redo",
                          intervention_kwargs=dict(tau=0.5, every=1)))])
def test_tianshou_agent_state_round_trips(name, kw):
    # clenv.Checkpoint cannot take a continual RL env yet (it has no state_dict), so the agent's half of a resume
    # is checked directly: an agent loaded from another's state_dict acts and learns exactly like it from then on
    # (exploration generators, replay buffer, tianshou's numpy state and the intervention included).
    env = _cartpole(num_tasks=2, steps_per_task=150)
    a = agents.make(name, env, seed=5, **kw)
    obs, info = env.reset(seed=1)

    def step(agent, obs, action):
        nxt, r, term, trunc, info = env.step(action)
        agent.observe(obs, action, r, nxt, term, trunc, info)
        return (env.reset()[0] if term or trunc else nxt), info

    for _ in range(100):
        obs, _ = step(a, obs, a.act(obs, info))
    b = agents.make(name, _cartpole(num_tasks=2, steps_per_task=150), seed=5, **kw)
    b.load_state_dict(a.state_dict())
    for _ in range(120):
        act_a, act_b = a.act(obs, info), b.act(obs, info)
        assert act_a == act_b
        nxt, r, term, trunc, info = env.step(act_a)
        a.observe(obs, act_a, r, nxt, term, trunc, info)
        b.observe(obs, act_b, r, nxt, term, trunc, info)
        obs = env.reset()[0] if term or trunc else nxt
    assert a.num_updates == b.num_updates > 0
    assert a.intervention_stats == b.intervention_stats and a.intervention_stats["units_reset"] > 0
    for p, q in zip(a.network.parameters(), b.network.parameters()):
        assert torch.equal(p, q)
