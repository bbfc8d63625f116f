"""DQN and PPO (tianshou 2.0.1) on ContinualCartPole, plain and with ReDo / CBP, through the one clenv loop.

    .venv/bin/python examples/rl_cartpole.py                      # both agents x {none, redo, cbp}, then the trainer
    .venv/bin/python examples/rl_cartpole.py --agent tianshou_ppo --intervention cbp --steps-per-task 10000

Each run prints the per-task mean episode return (``RunResult.task_return``) next to a uniformly random policy's on
the same stream, and what the intervention did. A second section trains a DQN agent's ``algorithm`` with tianshou's
own Collector and OffPolicyTrainer on the same env (``agent.trainer_params``), to show that clenv streams run inside
tianshou unchanged. The defaults (4 tasks x 5,000 steps) are sized so that both agents visibly learn: see
``tests/test_rl_examples.py`` for the measured margins.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import agents
import clenv

INTERVENTIONS = {
    "none": {},
    "redo": {"intervention": "redo", "intervention_kwargs": {"tau": 0.1, "every": 250}},
    "cbp": {"intervention": "cbp", "intervention_kwargs": {"replacement_rate": 1e-4, "maturity": 100}},
}

#: Settings under which each agent learns CartPole within a few thousand steps (DQN: a gradient step every 2 env
#: steps, exploration decayed over the first 2,000; PPO: 256-step rollouts, a larger step size than tianshou's 3e-4).
AGENT_SETTINGS = {
    "tianshou_dqn": dict(train_every=2, eps_decay_steps=2000, start_steps=500),
    "tianshou_ppo": dict(lr=1e-3, rollout_steps=256, batch_size=64, repeat=4),
}


def make_env(num_tasks: int, steps_per_task: int):
    return gym.make("ContinualCartPole-v0", num_tasks=num_tasks, steps_per_task=steps_per_task)


class RandomPolicy:
    """Uniformly random actions; learns nothing (the baseline a learning agent must clear)."""

    def __init__(self, num_actions: int, seed: int):
        self.num_actions, self.rng = int(num_actions), np.random.default_rng(seed)

    def act(self, obs, info) -> int:
        return int(self.rng.integers(self.num_actions))

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        pass


def random_returns(num_tasks: int, steps_per_task: int, seed: int) -> list[float]:
    """Per-task mean episode return of a uniformly random policy on the same stream."""
    env = make_env(num_tasks, steps_per_task)
    return clenv.run(env, RandomPolicy(env.action_space.n, seed), seed=seed, progress=False).task_return


def run_loop(agent_name: str, intervention: str, num_tasks: int, steps_per_task: int, seed: int,
             progress: bool = True) -> clenv.RunResult:
    env = make_env(num_tasks, steps_per_task)
    agent = agents.make(agent_name, env, seed=seed, **AGENT_SETTINGS[agent_name], **INTERVENTIONS[intervention])
    result = clenv.run(env, agent, seed=seed, progress=progress, desc=f"{agent_name}+{intervention}")
    returns = " ".join(f"{x:6.1f}" for x in result.task_return)
    print(f"{agent_name:13s} {intervention:5s} task returns: {returns}  {agent.intervention_stats}", flush=True)
    return result


def run_tianshou_trainer(num_tasks: int, steps_per_task: int, seed: int) -> list[float]:
    """DQN + ReDo trained by tianshou's OffPolicyTrainer, one epoch per task; returns the per-task mean return."""
    from tianshou.data import Collector, VectorReplayBuffer

    from agents.rl.tianshou_agents import episode_returns, tianshou_venv

    make = lambda: make_env(num_tasks, steps_per_task)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), seed=seed, **AGENT_SETTINGS["tianshou_dqn"], **INTERVENTIONS["redo"])
    venv = tianshou_venv([make])
    venv.seed(seed)
    # The buffer holds the whole run, so the episode returns can be read back from it afterwards.
    buffer = VectorReplayBuffer(max(20_000, num_tasks * steps_per_task), 1)
    collector = Collector(agent.algorithm, venv, buffer, exploration_noise=True)
    stats = agent.algorithm.run_training(agent.trainer_params(collector, max_epochs=num_tasks,
                                                              epoch_num_steps=steps_per_task, verbose=False))
    episodes = episode_returns(buffer)
    per_task = [float(np.mean([r for t, r, _ in episodes if t == k])) if any(t == k for t, _, _ in episodes)
                else float("nan") for k in range(num_tasks)]
    print(f"tianshou OffPolicyTrainer + ReDo task returns: " + " ".join(f"{x:6.1f}" for x in per_task)
          + f"  ({stats.train_step} env steps, {agent.intervention_stats})", flush=True)
    return per_task


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", choices=list(AGENT_SETTINGS), nargs="+", default=list(AGENT_SETTINGS))
    ap.add_argument("--intervention", choices=list(INTERVENTIONS), nargs="+", default=list(INTERVENTIONS))
    ap.add_argument("--num-tasks", type=int, default=4)
    ap.add_argument("--steps-per-task", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = {"random": random_returns(args.num_tasks, args.steps_per_task, args.seed)}
    print(f"{'random policy':19s} task returns: " + " ".join(f"{x:6.1f}" for x in out["random"]))
    for name in args.agent:
        for iv in args.intervention:
            out[f"{name}+{iv}"] = run_loop(name, iv, args.num_tasks, args.steps_per_task, args.seed,
                                           progress=not args.no_progress).task_return
    if not args.skip_trainer:
        out["trainer"] = run_tianshou_trainer(args.num_tasks, args.steps_per_task, args.seed)
    return out


if __name__ == "__main__":
    main()
