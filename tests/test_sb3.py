"""Stable-Baselines3 as a second RL library: sb3_dqn / sb3_ppo through clenv.run, the interventions as SB3
callbacks (the same objects tianshou attaches), SB3's check_env on every RL id, resume."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import clenv

sb3 = pytest.importorskip("stable_baselines3")

import agents  # noqa: E402
from agents.rl.interventions import CBPHook, ReDoHook, ShrinkPerturbHook  # noqa: E402
from agents.rl.sb3_agents import InterventionCallback  # noqa: E402

SMALL_DQN = dict(hidden=(16, 16), learning_starts=40, batch_size=16, buffer_size=500, eps_decay_steps=200,
                 target_update_interval=25, train_freq=2)
SMALL_PPO = dict(hidden=(16,), n_steps=64, batch_size=32, n_epochs=2)


def _env(num_tasks=3, steps_per_task=100, env_id="ContinualCartPole-v0"):
    return gym.make(env_id, num_tasks=num_tasks, steps_per_task=steps_per_task)


def test_clenv_and_agents_import_without_stable_baselines3():
    code = "import sys, clenv, agents; assert 'stable_baselines3' not in sys.modules, 'imported sb3'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("env_id", clenv.env_ids("rl"))
def test_sb3_check_env_passes_on_every_rl_id(env_id):
    from stable_baselines3.common.env_checker import check_env

    env = gym.make(env_id, steps_per_task=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, warn=True)
    # CartPole declares infinite velocity bounds (SB3 says so for any Box it cannot normalise); nothing else.
    bad = [str(w.message) for w in caught if "inf" not in str(w.message).lower()
           and "normaliz" not in str(w.message).lower() and "symmetric" not in str(w.message).lower()]
    assert bad == []


def test_sb3_dqn_trains_through_clenv_run_with_the_shared_redo():
    env = _env()
    agent = agents.make("sb3_dqn", env, seed=3, intervention="redo", intervention_kwargs={"every": 10}, **SMALL_DQN)
    assert type(agent.interventions[0]) is ReDoHook  # the one implementation, not a copy
    w0 = agent.network.head.weight.detach().clone()
    result = clenv.run(env, agent, seed=1, progress=False)
    n = result.steps
    assert n == 300 and agent.num_env_steps == 300
    # A minibatch every train_freq steps once learning_starts transitions are stored (the step that stores the
    # 40th transition trains when it is even).
    expected = sum(1 for k in range(1, n + 1) if k >= SMALL_DQN["learning_starts"] and k % 2 == 0)
    assert agent.num_updates == expected == agent.model._n_updates
    assert not torch.equal(w0, agent.network.head.weight)
    assert agent.intervention_stats["redo_calls"] == expected // 10
    # The Q values are the backbone's own output (SB3's extra head was removed).
    obs = torch.zeros(1, 4)
    assert torch.equal(agent.model.policy.q_net(obs), agent.network(obs))
    # Target network: synced from the online one, not itself intervened on.
    assert agent.model.q_net_target is not agent.model.q_net


def test_sb3_dqn_same_seed_same_run_whatever_the_global_rngs():
    runs = []
    for noise in (0, 1):
        np.random.seed(noise)
        torch.manual_seed(noise)
        env = _env(num_tasks=2)
        agent = agents.make("sb3_dqn", env, seed=4, **SMALL_DQN)
        runs.append((clenv.run(env, agent, seed=2, progress=False), agent))
    (r1, a1), (r2, a2) = runs
    assert r1.records["episodes"] == r2.records["episodes"]
    for p, q in zip(a1.model.policy.parameters(), a2.model.policy.parameters()):
        assert torch.equal(p, q)


def test_sb3_ppo_updates_once_per_rollout_with_cbp():
    env = _env(num_tasks=4, steps_per_task=50)
    agent = agents.make("sb3_ppo", env, seed=0, intervention="cbp", intervention_kwargs={"replacement_rate": 0.05,
                                                                                         "maturity": 5}, **SMALL_PPO)
    assert type(agent.interventions[0]) is CBPHook
    w0 = agent.critic_network.head.weight.detach().clone()
    result = clenv.run(env, agent, seed=0, progress=False)
    assert result.num_task_switches == 3 and agent.num_updates == 200 // 64
    assert not torch.equal(w0, agent.critic_network.head.weight)
    assert agent.intervention_stats["units_reset"] > 0
    obs = torch.zeros(1, 4)
    value = agent.model.policy.predict_values(obs)
    assert torch.equal(value, agent.critic_network(obs))


def test_intervention_callback_runs_inside_sb3s_own_learn():
    from stable_baselines3 import DQN

    env = _env(num_tasks=2, steps_per_task=150)
    shrink = ShrinkPerturbHook(shrink=0.9, noise=0.0, every=1)
    agent = agents.make("sb3_dqn", env, seed=0, **SMALL_DQN)  # only to build the backbone Q network
    model = agent.model
    model.set_env(env)
    before = agent.network.head.weight.detach().clone()
    cb = InterventionCallback([shrink])
    model.learn(total_timesteps=120, callback=cb)
    assert shrink.stats["shrink_perturb_calls"] == model._n_updates > 0
    assert cb.attached_to is model and not torch.equal(before, agent.network.head.weight)
    with pytest.raises(RuntimeError, match="another model"):
        cb.attach(DQN("MlpPolicy", env, policy_kwargs=agent._policy_kwargs(2)))


class Killed(clenv.Callback):
    def __init__(self, at):
        self.at = at

    def on_step(self, env, agent, step):
        if step["step"] >= self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name, kw", [("sb3_dqn", {**SMALL_DQN, "intervention": "cbp"}), ("sb3_ppo", SMALL_PPO)])
def test_killed_and_resumed_sb3_run_ends_identical(tmp_path, name, kw):
    def fresh():
        env = _env(num_tasks=3, steps_per_task=90)
        return env, agents.make(name, env, seed=5, **kw)

    env, agent = fresh()
    full = clenv.run(env, agent, seed=7, progress=False)
    env, killed = fresh()
    with pytest.raises(KeyboardInterrupt):
        clenv.run(env, killed, seed=7, progress=False, callbacks=[clenv.Checkpoint(tmp_path, every=41), Killed(170)])
    env, resumed = fresh()
    again = clenv.resume(tmp_path, env, resumed, seed=7, progress=False)
    np.testing.assert_array_equal(again.step_reward, full.step_reward)
    assert again.records["episodes"] == full.records["episodes"]
    for p, q in zip(agent.model.policy.parameters(), resumed.model.policy.parameters()):
        assert torch.equal(p, q)


def test_sb3_agents_work_without_tianshou():
    # tianshou is another optional extra: the SB3 agents, their interventions and diagnostics must not need it.
    code = """
import builtins, sys
real = builtins.__import__
def block(name, *a, **k):
    if name.split(".")[0] == "tianshou":
        raise ImportError("tianshou blocked")
    return real(name, *a, **k)
builtins.__import__ = block
import gymnasium as gym, clenv, agents
from agents.rl.diagnostics import RLDiagnostics
env = gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=60)
agent = agents.make("sb3_dqn", env, intervention="redo", intervention_kwargs={"every": 5}, learning_starts=20)
result = clenv.run(env, agent, seed=0, progress=False, callbacks=[RLDiagnostics(samples=20)])
assert agent.intervention_stats["redo_calls"] > 0 and len(result.records["diagnostics"]) == 2
assert "tianshou" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)
