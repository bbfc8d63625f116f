"""The loop, the agent registry and the supervised agent base."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from clenv.envs import SupervisedStreamEnv


def digits(**kw):
    return gym.make("RandomLabelDigits-v0", **{**dict(num_tasks=3, samples_per_task=64, epochs_per_task=2), **kw})


class Recorder:
    """A minimal agent that predicts class 0 and records what the loop tells it."""

    NAME = "recorder"

    def __init__(self):
        self.switches, self.observed = [], 0

    def act(self, obs, info):
        return np.zeros(len(obs), np.int64)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info):
        self.observed += 1
        assert info["labels"].shape == (len(obs),)

    def on_task_switch(self, task_id):
        self.switches.append(task_id)


def test_run_reports_per_task_online_accuracy_and_switches():
    env = digits()
    rec = Recorder()
    result = clenv.run(env, rec, seed=0, progress=False)
    u = env.unwrapped
    assert rec.switches == [0, 1, 2] and result.num_task_switches == 2
    assert rec.observed == result.steps == u.total_steps
    assert len(result.task_accuracy) == 3 and result.task_ids == [0, 1, 2]
    # predicting class 0 scores the frequency of label 0 in what was served
    for k in range(3):
        mask = result.step_task == k
        assert result.task_accuracy[k] == pytest.approx(result.step_reward[mask].mean(), abs=1e-6)
    # online metrics come with every run, no Evaluation needed
    assert result.metrics["avg_online_acc"] == pytest.approx(np.mean(result.task_accuracy))
    assert result.metrics["online_acc_last25"] == pytest.approx(result.task_accuracy[-1])  # 25% of 3 tasks: 1


def test_total_steps_and_callbacks():
    seen = []

    class CB(clenv.Callback):
        def on_step(self, env, agent, step):
            seen.append(step["task_id"])

        def on_task_end(self, env, agent, task_id, result):
            seen.append(("end", task_id))

    result = clenv.run(digits(), Recorder(), seed=0, progress=False, callbacks=[CB()], total_steps=10)
    assert result.steps == 10 and seen.count(("end", 0)) == 1 and len([s for s in seen if s == 0]) == 8
    with pytest.raises(ValueError, match="total_steps"):
        clenv.run(digits(), Recorder(), total_steps=0, progress=False)


def test_same_seed_same_numbers_for_a_learning_agent():
    def once(seed, agent_seed=0):
        env = digits()
        return clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3, seed=agent_seed), seed=seed,
                         progress=False).task_accuracy

    a, b = once(0), once(0)
    assert a == b
    assert once(1) != a and once(0, agent_seed=1) != a


def test_base_learns_within_a_task():
    env = digits(num_tasks=1, samples_per_task=64, epochs_per_task=40)
    result = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=0, progress=False)
    r = result.step_reward
    assert r[-40:].mean() > 0.5 > 0.2 > r[:40].mean()  # memorising 64 random labels, from chance (0.1)


def test_scratch_reinitialises_at_each_task_switch():
    env = digits(num_tasks=2)
    agent = agents.make("scratch", env)
    before = [p.detach().clone() for p in agent.network.parameters()]
    agent.on_task_switch(0)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, agent.network.parameters()))  # nothing to forget
    clenv.run(env, agent, seed=0, progress=False, total_steps=3)
    trained = [p.detach().clone() for p in agent.network.parameters()]
    agent.on_task_switch(1)
    after = list(agent.network.parameters())
    assert all(not torch.equal(a, b.detach()) for a, b in zip(trained, after))
    assert all(len(s) == 0 for s in agent.optimizer.state.values())


def test_unknown_agent_and_hyperparameter_errors():
    env = digits()
    with pytest.raises(ValueError, match="unknown agent 'nope'.*base"):
        agents.make("nope", env)
    with pytest.raises(TypeError, match="unknown hyperparameter.*learning_rate.*lr"):
        agents.make("base", env, learning_rate=0.1)


def test_agent_reads_backbone_and_outputs_from_the_env():
    env = gym.make("SplitFashionMNIST-v0")
    a = agents.make("base", env)
    assert a.network.kind == "mlp" and a.num_outputs == 10
    env = SupervisedStreamEnv("digits", "class_split", num_tasks=2, classes_per_task=3, labels="local")
    a = agents.make("base", env, backbone="cnn")
    assert a.network.head.out_features == 3 and a.network.kind == "cnn"
    logits = a.predict(a.preprocess(env.reset(seed=0)[0]))
    assert logits.shape == (16, 3)


def test_fresh_and_clone_are_independent():
    env = digits()
    a = agents.make("base", env, optimizer="adam", lr=1e-2)
    clenv.run(env, a, seed=0, progress=False, total_steps=20)
    c, f = a.clone(), a.fresh()
    w = a.network.head.weight.detach().clone()
    x = a.preprocess(env.unwrapped.reset(seed=0)[0])
    c.learn(x, torch.zeros(16, dtype=torch.int64))
    assert np.array_equal(a.network.head.weight.detach().numpy(), w.numpy())
    new = agents.make("base", env, optimizer="adam", lr=1e-2)
    assert np.array_equal(f.network.head.weight.detach().numpy(), new.network.head.weight.detach().numpy())


def test_plasticity_loss_is_visible_on_random_label_fashion_mnist():
    """A base MLP memorises each task's random labels, but later tasks are learned worse than early ones.
    If the labels did not change per task, later tasks would be *easier* (already memorised) and this would fail."""
    env = gym.make("RandomLabelFashionMNIST-v0", num_tasks=16, samples_per_task=128, epochs_per_task=30,
                   augment=False)
    result = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=0, progress=False)
    acc = result.task_accuracy
    first = result.step_reward[result.step_task == 0]
    assert first[-24:].mean() > first[:24].mean() + 0.3  # learns within a task
    assert np.mean(acc[-3:]) < np.mean(acc[:3]) - 0.1  # and loses plasticity across tasks


def test_quickstart_example_runs():
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "noisy_input" in out.stdout and "3 task switches" in out.stdout


def test_rl_stream_reports_per_task_episode_returns():
    class RandomPolicy:
        NAME = "random"

        def __init__(self):
            self.rng = np.random.default_rng(0)

        def act(self, obs, info):
            return int(self.rng.integers(2))

        def observe(self, *args):
            pass

    env = gym.make("ContinualCartPole-v0", num_tasks=3, steps_per_task=300)
    result = clenv.run(env, RandomPolicy(), seed=0, progress=False)
    episodes = result.records["episodes"]
    assert result.num_task_switches == 2 and result.episodes == len(episodes) > 3
    for k in range(3):
        returns = [ret for task, ret, _ in episodes if task == k]
        assert result.task_return[k] == pytest.approx(np.mean(returns))
    assert result.metrics["avg_task_return"] == pytest.approx(np.mean(result.task_return))
    assert sum(length for _, _, length in episodes) == result.steps == 900


def test_the_run_seed_seeds_an_agent_made_without_an_explicit_seed():
    """One rule for every driver and for clenv.run: seed s seeds the stream and, unless the agent was given a
    seed, the agent (old code: every agent started from seed 0 whatever the run seed)."""
    import agents

    kw = dict(num_tasks=2, samples_per_task=32, epochs_per_task=2)
    env = gym.make("RandomLabelDigits-v0", **kw)
    implicit = clenv.run(env, agents.make("base", env), seed=3, progress=False)
    env = gym.make("RandomLabelDigits-v0", **kw)
    explicit3 = clenv.run(env, agents.make("base", env, seed=3), seed=3, progress=False)
    env = gym.make("RandomLabelDigits-v0", **kw)
    explicit0 = clenv.run(env, agents.make("base", env, seed=0), seed=3, progress=False)
    assert np.array_equal(implicit.step_reward, explicit3.step_reward)
    assert implicit.config["agent"]["seed"] == 3  # recorded in the result
    assert explicit0.config["agent"]["seed"] == 0  # an explicit seed wins
    assert not np.array_equal(explicit0.step_reward, explicit3.step_reward)
