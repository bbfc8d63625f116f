"""ReDo's dormancy scores come from a statistics batch of the paper's size (Sokar et al. 2023: 64 for DQN / DrQ),
not from one 16-sample stream batch."""

from __future__ import annotations

import gymnasium as gym
import torch

import agents
import clenv  # noqa: F401  (registers the envs)


def test_recycling_scores_the_most_recent_probe_batch_size_inputs():
    env = gym.make("RandomLabelDigits-v0", num_tasks=2, samples_per_task=64, epochs_per_task=2)  # batch 16
    agent = agents.make("redo", env, seed=0, reset_period=5)
    assert agent.hparams["probe_batch_size"] == 64
    probed = []
    recycle = agent.recycle
    agent.recycle = lambda x: (probed.append(x.clone()), recycle(x))[1]
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(16, 1, 8, 8, generator=g) for _ in range(10)]
    for x in batches:
        agent.learn(x, torch.randint(0, 10, (16,), generator=g))
    assert len(probed) == 2  # steps 5 and 10
    # The four latest batches (64 samples), the step's own included, in stream order.
    assert torch.equal(probed[0], torch.cat(batches[1:5])) and torch.equal(probed[1], torch.cat(batches[6:10]))
    small = agents.make("redo", env, seed=0, reset_period=1, probe_batch_size=24)
    small.recycle = lambda x: (probed.append(x.clone()), None)[1]
    for x in batches[:3]:
        small.learn(x, torch.zeros(16, dtype=torch.long))
    assert [len(p) for p in probed[2:]] == [16, 24, 24]  # fewer only before 24 samples were seen
    assert torch.equal(probed[-1], torch.cat(batches[1:3])[-24:])
