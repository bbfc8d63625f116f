"""Checkpoint / resume: a resumed run equals the uninterrupted one bit for bit; bad checkpoints change nothing."""

from __future__ import annotations

import os
import random

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from agents.base import SupervisedAgent
from clenv.checkpoint import CheckpointError, checkpoint_path, read_checkpoint

# 4 tasks x 8 steps (64 samples / batch 16, 2 epochs)
ENV_KW = dict(num_tasks=4, samples_per_task=64, batch_size=16, epochs_per_task=2, test_samples_per_task=32)
STEPS_PER_TASK = 8


def make(name="base", env_kw=None, **hp):
    env = gym.make("RandomLabelDigits-v0", **{**ENV_KW, **(env_kw or {})})
    return env, agents.make(name, env, **{"optimizer": "adam", "lr": 1e-3, **hp})


def assert_same(a, b):
    assert a.step_reward.dtype == b.step_reward.dtype
    assert np.array_equal(a.step_reward, b.step_reward)
    assert np.array_equal(a.step_task, b.step_task)
    assert a.task_accuracy == b.task_accuracy  # exact float equality, not approx
    assert a.task_ids == b.task_ids and a.task_steps == b.task_steps
    assert (a.steps, a.num_task_switches, a.episodes) == (b.steps, b.num_task_switches, b.episodes)


def params(agent):
    return [p.detach().clone() for p in agent.network.parameters()]


@pytest.mark.parametrize("name", ["base", "scratch"])
@pytest.mark.parametrize("every,stop", [(5, 18), (STEPS_PER_TASK, 2 * STEPS_PER_TASK)])  # mid-task / task boundary
def test_resume_equals_uninterrupted_run(tmp_path, name, every, stop):
    env, agent = make(name)
    full = clenv.run(env, agent, seed=7, progress=False)
    assert full.steps == 4 * STEPS_PER_TASK

    env, agent = make(name)
    ck = clenv.Checkpoint(tmp_path, every=every)
    part = clenv.run(env, agent, seed=7, progress=False, callbacks=[ck], total_steps=stop)  # "crash" at step stop
    assert part.steps == stop and ck.saved_steps == list(range(every, stop, every))  # none at the final break
    saved_at = read_checkpoint(tmp_path)["step"]
    assert saved_at == ck.saved_steps[-1] < stop

    env, agent = make(name)  # a new env and agent, as in a new process
    ck2 = clenv.Checkpoint(tmp_path, every=every)
    resumed = clenv.resume(tmp_path, env, agent, seed=7, progress=False, callbacks=[ck2])
    assert_same(resumed, full)
    assert ck2.saved_steps and ck2.saved_steps[0] == saved_at + every  # it went on checkpointing


class NoisyAgent(SupervisedAgent):
    """Explores with the *global* torch and numpy RNGs: resume is exact only if those states are restored."""

    NAME = "noisy"

    def act(self, obs, info):
        action = super().act(obs, info)
        if torch.rand(()) < 0.5:
            action = np.random.randint(0, self.num_outputs, size=action.shape)
        return action


class Counter(clenv.Callback):
    """A stateful callback: its state must survive the resume."""

    def __init__(self):
        self.steps, self.reward_sum = 0, 0.0

    def on_step(self, env, agent, step):
        self.steps += 1
        self.reward_sum += float(step["reward"])

    def state_dict(self):
        return {"steps": self.steps, "reward_sum": self.reward_sum}

    def load_state_dict(self, state):
        self.steps, self.reward_sum = state["steps"], state["reward_sum"]


def test_resume_restores_global_rng_and_callback_state(tmp_path):
    def noisy():
        env = gym.make("RandomLabelDigits-v0", **ENV_KW)
        return env, NoisyAgent(env, optimizer="sgd", lr=0.1)

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    env, agent = noisy()
    counter = Counter()
    full = clenv.run(env, agent, seed=1, progress=False, callbacks=[counter])

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    env, agent = noisy()
    clenv.run(env, agent, seed=1, progress=False, callbacks=[Counter(), clenv.Checkpoint(tmp_path, every=6)],
              total_steps=20)

    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # other global streams in the "new process"
    env, agent = noisy()
    counter2 = Counter()
    resumed = clenv.resume(tmp_path, env, agent, seed=1, progress=False,
                           callbacks=[counter2, clenv.Checkpoint(tmp_path, every=6)])
    assert_same(resumed, full)
    assert counter.steps == counter2.steps == 32 and counter2.reward_sum == counter.reward_sum


def test_checkpoint_resume_method(tmp_path):
    env, agent = make()
    full = clenv.run(env, agent, seed=2, progress=False)
    env, agent = make()
    clenv.run(env, agent, seed=2, progress=False, callbacks=[clenv.Checkpoint(tmp_path, every=10)], total_steps=25)
    env, agent = make()
    assert_same(clenv.Checkpoint(tmp_path, every=10).resume(env, agent, progress=False), full)


def test_env_state_dict_continues_mid_stream():
    env_a = clenv.SupervisedStreamEnv("digits", **ENV_KW)
    env_a.reset(seed=4)
    for _ in range(11):
        env_a.step(env_a.action_space.sample())
    state = env_a.state_dict()
    env_b = clenv.SupervisedStreamEnv("digits", **ENV_KW)
    env_b.reset(seed=99)
    env_b.load_state_dict(state)
    assert env_b.stream_seed == env_a.stream_seed
    for _ in range(STEPS_PER_TASK * 4 - 11):
        action = env_a.action_space.sample()
        oa, ra, ta, _, ia = env_a.step(action)
        ob, rb, tb, _, ib = env_b.step(action)
        assert np.array_equal(oa, ob) and ra == rb and ta == tb
        assert {k: v for k, v in ia.items() if k != "labels"} == {k: v for k, v in ib.items() if k != "labels"}
        assert np.array_equal(ia["labels"], ib["labels"])
    assert ta and tb
    # the np_random state travels too: the next seedless reset draws the same stream seed
    env_a.reset(), env_b.reset()
    assert env_a.stream_seed == env_b.stream_seed


def test_env_load_state_dict_rejects_other_config_and_changes_nothing():
    env_a = clenv.SupervisedStreamEnv("digits", **ENV_KW)
    env_a.reset(seed=4)
    env_a.step(env_a.action_space.sample())
    env_b = clenv.SupervisedStreamEnv("digits", **{**ENV_KW, "num_tasks": 5})
    env_b.reset(seed=5)
    before = env_b.state_dict()
    with pytest.raises(ValueError, match="num_tasks=4"):
        env_b.load_state_dict(env_a.state_dict())
    after = env_b.state_dict()
    assert after["cursor"] == before["cursor"] and after["stream_seed"] == before["stream_seed"]
    bad = env_a.state_dict()
    bad["labels"] = (bad["labels"] + 1) % env_a.num_classes  # the data at that position are not these
    with pytest.raises(ValueError, match="does not match this dataset"):
        env_a.load_state_dict(bad)


def _saved_run(tmp_path, name="base"):
    env, agent = make(name)
    clenv.run(env, agent, seed=3, progress=False, callbacks=[clenv.Checkpoint(tmp_path, every=4)], total_steps=10)
    return checkpoint_path(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_checkpoint_is_refused_and_changes_nothing(tmp_path, damage):
    f = _saved_run(tmp_path)
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0x01
    else:
        data = bytearray(b"not a checkpoint at all")
    f.write_bytes(bytes(data))
    env, agent = make()
    env.reset(seed=11)
    seed_before, w_before = env.unwrapped.stream_seed, params(agent)
    with pytest.raises(CheckpointError, match="corrupt|not a clenv checkpoint"):
        clenv.resume(tmp_path, env, agent, seed=3, progress=False)
    assert env.unwrapped.stream_seed == seed_before
    assert all(torch.equal(a, b) for a, b in zip(w_before, params(agent)))


@pytest.mark.parametrize("change,pattern", [
    (dict(env_kw={"num_tasks": 5}), r"env kwarg num_tasks=4 \(this run: 5\)"),
    (dict(lr=0.5), r"agent hyperparameter lr=0.001 \(this run: 0.5\)"),
    (dict(name="scratch"), r"agent 'base' \(this run: 'scratch'\)"),
    (dict(seed=4), r"seed 3 \(this run: 4\)"),
])
def test_mismatched_checkpoint_names_the_difference_and_changes_nothing(tmp_path, change, pattern):
    _saved_run(tmp_path)
    change = dict(change)
    seed = change.pop("seed", 3)
    env, agent = make(change.pop("name", "base"), change.pop("env_kw", None), **change)
    env.reset(seed=11)
    seed_before, w_before = env.unwrapped.stream_seed, params(agent)
    opt_before = {k: v for k, v in agent.optimizer.state_dict().items() if k != "state"}
    with pytest.raises(CheckpointError, match=pattern):
        clenv.resume(tmp_path, env, agent, seed=seed, progress=False)
    assert env.unwrapped.stream_seed == seed_before
    assert all(torch.equal(a, b) for a, b in zip(w_before, params(agent)))
    assert {k: v for k, v in agent.optimizer.state_dict().items() if k != "state"} == opt_before
    assert not agent.optimizer.state_dict()["state"]  # no Adam moments were loaded


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    f = _saved_run(tmp_path)
    good = f.read_bytes()
    env, agent = make()
    ck = clenv.Checkpoint(tmp_path, every=4, overwrite=True)

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # clenv.results.atomic_write_bytes fails after writing the temp file
    with pytest.raises(OSError, match="disk full"):
        clenv.run(env, agent, seed=3, progress=False, callbacks=[ck], total_steps=10)
    monkeypatch.undo()
    assert f.read_bytes() == good  # the old checkpoint is whole
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # and no temporary file is left behind
    assert read_checkpoint(tmp_path)["step"] == 8


def test_existing_checkpoint_is_not_overwritten_by_a_new_run(tmp_path):
    f = _saved_run(tmp_path)
    good = f.read_bytes()
    env, agent = make()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        clenv.run(env, agent, seed=3, progress=False, callbacks=[clenv.Checkpoint(tmp_path, every=4)])
    assert f.read_bytes() == good


def _same_records(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k], equal_nan=True), k
        elif isinstance(a[k], dict) and all(isinstance(v, np.ndarray) for v in a[k].values()):
            assert a[k].keys() == b[k].keys() and all(np.array_equal(a[k][j], b[k][j], equal_nan=True) for j in a[k])
        else:
            assert repr(a[k]) == repr(b[k]), k


@pytest.mark.parametrize("stop", [13, 2 * STEPS_PER_TASK])  # mid-task / at a task boundary
def test_every_probe_family_resumes_bit_identically(tmp_path, stop):
    """Held-out / forgetting, adaptation, continual evaluation, plasticity and traces, killed and resumed."""
    every = 5 if stop == 13 else STEPS_PER_TASK
    evaluation = lambda: clenv.Evaluation.all(stability_every=3, stability_samples=32, eval_samples=32,  # noqa: E731
                                              probe_samples=32, plasticity_samples=32)
    env, agent = make()
    full = clenv.run(env, agent, seed=3, progress=False, evaluation=evaluation())
    env, agent = make()
    part = clenv.run(env, agent, seed=3, progress=False, total_steps=stop, evaluation=evaluation(),
                     callbacks=[clenv.Checkpoint(tmp_path, every=every)])
    assert part.steps == stop and read_checkpoint(tmp_path)["step"] == (stop - 1) // every * every  # the last save
    env, agent = make()  # a new process would do the same: fresh env, agent and probes
    resumed = clenv.resume(tmp_path, env, agent, seed=3, progress=False, evaluation=evaluation())
    assert_same(resumed, full)
    drop = lambda m: {k: v for k, v in m.items() if k != "probe_time_s"}  # noqa: E731 - wall time
    np.testing.assert_equal(drop(resumed.metrics), drop(full.metrics))  # exact equality (NaN equal to NaN)
    assert {"lca_f", "acc", "avg_sg", "dormant_ratio", "test_acc"} <= set(full.metrics)
    _same_records(resumed.records, full.records)


def test_resume_with_other_probes_is_refused_before_anything_changes(tmp_path):
    env, agent = make()
    clenv.run(env, agent, seed=3, progress=False, total_steps=9, evaluation=clenv.Evaluation(forgetting=True),
              callbacks=[clenv.Checkpoint(tmp_path, every=4)])
    env, agent = make()
    before = params(agent)
    with pytest.raises(CheckpointError, match="stateful callbacks"):
        clenv.resume(tmp_path, env, agent, seed=3, progress=False, evaluation=clenv.Evaluation(heldout=True))
    assert all(torch.equal(p, q) for p, q in zip(before, params(agent)))


def test_total_steps_counts_from_the_run_start(tmp_path):
    _saved_run(tmp_path)  # checkpoint at step 8
    env, agent = make()
    with pytest.raises(ValueError, match="already reached"):
        clenv.resume(tmp_path, env, agent, seed=3, progress=False, total_steps=8)
    env, agent = make()
    res = clenv.resume(tmp_path, env, agent, seed=3, progress=False, total_steps=12)
    assert res.steps == 12


def test_checkpoint_args_and_missing_state():
    with pytest.raises(ValueError, match="every"):
        clenv.Checkpoint("x", every=0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint("/nonexistent/dir")


SLOW_AGENTS = ("maml",)  # meta-trains at construction; minutes on this stream
# Adapter agents need a token stream (StyleShiftText-v0); their resume tests are in tests/test_adapters_agents.py and
# tests/test_flylora.py.
LANGUAGE_AGENTS = ("lora", "lora_naive", "lora_fixed_mask", "lora_ftn", "lora_bank", "flylora", "neurolora",
                   "neurolora_no_orth", "neurolora_no_gate", "neurolora_static_gate", "neurolora_trainable_a",
                   "ewc_lora", "adapter_memory")  # adapter_memory: its own ViT; tests/test_adapter_memory_agent.py


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in agents.available() if not n.startswith(("tianshou", "sb3"))
                                  and n not in SLOW_AGENTS + LANGUAGE_AGENTS] + ["cbp+er"])
def test_every_supervised_agent_resumes_exactly(tmp_path, name):
    """The agent contract: state_dict() holds all state that affects later steps (replay, Fisher, EMAs, ...)."""
    def fresh():
        env = gym.make("RandomLabelDigits-v0", **ENV_KW)
        return env, agents.make(name, env)

    env, agent = fresh()
    full = clenv.run(env, agent, seed=3, progress=False)
    env, agent = fresh()
    clenv.run(env, agent, seed=3, progress=False, callbacks=[clenv.Checkpoint(tmp_path, every=5)], total_steps=19)
    env, agent = fresh()
    assert_same(clenv.resume(tmp_path, env, agent, seed=3, progress=False), full)
