"""Checkpoint and resume of RL runs: a tianshou DQN run killed part way and resumed in a fresh process-like setting
(new env, new agent) ends identical to the run that was never interrupted: every step's reward, every episode, the
network, the optimiser, the replay buffer and the diagnostics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import clenv
from clenv.checkpoint import CheckpointError

pytest.importorskip("tianshou")

import agents  # noqa: E402
from agents.rl.diagnostics import RLDiagnostics  # noqa: E402

SMALL_DQN = dict(hidden=(16, 16), start_steps=40, batch_size=16, buffer_size=500, eps_decay_steps=200,
                 target_update_freq=25)


class Killed(clenv.Callback):
    """Raise at a given step, as a crash or a kill would end the process there."""

    def __init__(self, at: int):
        self.at = at

    def on_step(self, env, agent, step) -> None:
        if step["step"] >= self.at:
            raise KeyboardInterrupt


def _fresh(env_id, name, kw, **env_kw):
    env = gym.make(env_id, **env_kw)
    return env, agents.make(name, env, seed=5, **kw)


@pytest.mark.parametrize("env_id, name, kw", [
    ("ContinualCartPole-v0", "tianshou_dqn", SMALL_DQN),
    ("PermutedCartPole-v0", "tianshou_dqn", {**SMALL_DQN, "intervention": "redo",
                                             "intervention_kwargs": {"every": 20}}),
    ("ContinualAcrobot-v0", "tianshou_dqn", {**SMALL_DQN, "intervention": "cbp"}),
    ("ContinualCartPole-v0", "tianshou_ppo", dict(hidden=(16,), rollout_steps=64, batch_size=32, repeat=2)),
])
def test_killed_and_resumed_rl_run_ends_identical(tmp_path, env_id, name, kw):
    env_kw = dict(num_tasks=3, steps_per_task=110)
    env, agent = _fresh(env_id, name, kw, **env_kw)
    full = clenv.run(env, agent, seed=7, progress=False, callbacks=[RLDiagnostics(samples=50)])

    env, killed_agent = _fresh(env_id, name, kw, **env_kw)
    ckpt = clenv.Checkpoint(tmp_path, every=37)  # 37: checkpoints mid-episode and mid-task
    with pytest.raises(KeyboardInterrupt):
        clenv.run(env, killed_agent, seed=7, progress=False, callbacks=[ckpt, RLDiagnostics(samples=50), Killed(200)])
    assert ckpt.saved_steps[-1] == 185

    env, resumed_agent = _fresh(env_id, name, kw, **env_kw)
    again = clenv.resume(tmp_path, env, resumed_agent, seed=7, progress=False,
                         callbacks=[RLDiagnostics(samples=50)])
    np.testing.assert_array_equal(again.step_reward, full.step_reward)
    np.testing.assert_array_equal(again.step_task, full.step_task)
    assert again.records["episodes"] == full.records["episodes"]
    assert again.records["diagnostics"] == full.records["diagnostics"]
    assert again.task_return == full.task_return and again.num_task_switches == full.num_task_switches
    for p, q in zip(agent.algorithm.state_dict().values(), resumed_agent.algorithm.state_dict().values()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q)
    assert resumed_agent.num_updates == agent.num_updates
    assert len(resumed_agent.buffer) == len(agent.buffer)
    np.testing.assert_array_equal(resumed_agent.buffer.obs[:len(agent.buffer)], agent.buffer.obs[:len(agent.buffer)])
    assert resumed_agent.intervention_stats == agent.intervention_stats


def test_rl_env_state_refuses_another_configuration():
    env = gym.make("ContinualCartPole-v0", num_tasks=3, steps_per_task=50)
    env.reset(seed=0)
    state = env.unwrapped.state_dict()
    other = gym.make("ContinualCartPole-v0", num_tasks=4, steps_per_task=50)
    other.reset(seed=0)
    before = other.unwrapped.state_dict()
    with pytest.raises(ValueError, match="num_tasks=3"):
        other.unwrapped.load_state_dict(state)
    assert other.unwrapped.state_dict()["config"] == before["config"]
    with pytest.raises(ValueError, match="missing"):
        other.unwrapped.load_state_dict({"config": {}})


def test_an_rl_env_state_continues_the_same_trajectory():
    env = gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=60)
    env.reset(seed=3)
    for _ in range(10):
        env.step(1)
    saved = env.unwrapped.state_dict()
    rest = [env.step(0)[:4] for _ in range(5)]
    twin = gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=60)
    twin.reset(seed=99)
    twin.unwrapped.load_state_dict(saved)
    again = [twin.step(0)[:4] for _ in range(5)]
    for a, b in zip(rest, again):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]
