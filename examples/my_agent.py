"""A complete agent in one file: the base learner plus an L1 penalty on the weights (docs/agents.md, "Writing an agent").

``loss = cross-entropy + l1_lambda * sum_i |theta_i|`` over the weight matrices and filters (biases and norm
parameters are left out, the usual choice for a sparsity penalty; Tibshirani 1996, Ng 2004 for its use on
networks). The agent overrides one hook, ``regularizer``, and calls ``super()``, so it composes with every other
method (``L1Agent`` + CBP below); its hyperparameters are ``DEFAULTS`` merged with the base's.

Run it::

    python examples/my_agent.py                      # a short Random-Label Digits stream, L1 vs base
    clenv run --env RandomLabelDigits-v0 --agent examples.my_agent:L1Agent   # from the repository root
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent

__all__ = ["L1Agent"]


class L1Agent(SupervisedAgent):
    """The shared training step with ``l1_lambda * sum |W|`` added to the loss (weights of dimension >= 2)."""

    NAME = "l1"
    DEFAULTS = dict(optimizer="sgd", lr=1e-2, l1_lambda=1e-4)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        if float(self.hparams["l1_lambda"]) < 0:
            raise ValueError(f"l1_lambda must be >= 0, got {self.hparams['l1_lambda']}")

    def penalised(self) -> list[torch.Tensor]:
        """The parameters the penalty applies to: weight matrices and conv filters."""
        return [p for p in self.parameters_to_optimize() if p.dim() >= 2]

    def regularizer(self):
        l1 = sum(p.abs().sum() for p in self.penalised())
        return super().regularizer() + float(self.hparams["l1_lambda"]) * l1


def main() -> None:
    import gymnasium as gym

    import agents
    import clenv

    for label, make in (("base", lambda env: agents.make("base", env, seed=0)),
                        ("l1", lambda env: L1Agent(env, seed=0, l1_lambda=1e-3))):
        env = gym.make("RandomLabelDigits-v0", num_tasks=4, samples_per_task=128, epochs_per_task=5)
        agent = make(env)
        result = clenv.run(env, agent, seed=0, progress=False)
        weight_l1 = float(sum(p.abs().sum() for p in agent.network.parameters() if p.dim() >= 2))
        print(f"{label:5s} average online accuracy {result.average_accuracy():.3f}   sum |W| {weight_l1:.1f}")


if __name__ == "__main__":
    main()
