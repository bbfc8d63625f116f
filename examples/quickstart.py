"""Quickstart: a stream from gym.make, a custom agent in a few lines, and clenv.run.

    python examples/quickstart.py

Runs in a few seconds on the 8x8 digits that ship with scikit-learn.
"""

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv
from agents.base import SupervisedAgent

# 1. A stream is a Gymnasium env: each observation is a batch, each action a batch of predicted labels.
env = gym.make("RandomLabelDigits-v0", num_tasks=4, samples_per_task=64, epochs_per_task=10)
obs, info = env.reset(seed=0)
print("observation", obs.shape, obs.dtype, "| info keys", sorted(info))


# 2. A new method is one class: override a hook of the shared training step. This one adds input noise.
class NoisyInputAgent(SupervisedAgent):
    """Base learner trained on inputs with Gaussian noise (a toy method for the quickstart)."""

    NAME = "noisy_input"
    DEFAULTS = dict(noise=0.05, optimizer="adam", lr=1e-3)

    def training_batch(self, x, y):
        x, y = super().training_batch(x, y)
        return x + self.hparams["noise"] * torch.randn_like(x), y


agents.register("noisy_input", "__main__:NoisyInputAgent")  # now agents.make("noisy_input", env) works too

# 3. One loop for every agent; the same seed gives the same numbers.
for agent in (agents.make("base", env, optimizer="adam", lr=1e-3), NoisyInputAgent(env)):
    result = clenv.run(env, agent, seed=0, progress=False)
    print(f"{result.agent:12s} online accuracy per task: {np.round(result.task_accuracy, 3)} "
          f"({result.num_task_switches} task switches)")
