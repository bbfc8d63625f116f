"""DQN and PPO (tianshou 2.0.1) on ContinualCartPole, plain and with ReDo / CBP, through the one clenv loop.

    .venv/bin/python examples/rl_cartpole.py                      # all four combinations x {none, redo, cbp}
    .venv/bin/python examples/rl_cartpole.py --agent tianshou_ppo --intervention cbp --steps-per-task 5000

Each run prints the per-task mean episode return (``RunResult.task_return``) and what the intervention did.
A second section trains the same DQN agent's ``algorithm`` with tianshou's own Collector and OffPolicyTrainer on the
same env, to show that clenv streams run inside tianshou unchanged.
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import torch

import agents
import clenv

INTERVENTIONS = {
    "none": {},
    "redo": {"intervention": "redo", "intervention_kwargs": {"tau": 0.1, "every": 250}},
    "cbp": {"intervention": "cbp", "intervention_kwargs": {"replacement_rate": 1e-4, "maturity": 100}},
}


def run_loop(agent_name, intervention, num_tasks, steps_per_task, seed):
    env = gym.make("ContinualCartPole-v0", num_tasks=num_tasks, steps_per_task=steps_per_task)
    agent = agents.make(agent_name, env, seed=seed, **INTERVENTIONS[intervention])
    result = clenv.run(env, agent, seed=seed, progress=True, desc=f"{agent_name}+{intervention}")
    returns = " ".join(f"{x:6.1f}" for x in result.task_return)
    print(f"{agent_name:13s} {intervention:5s} task returns: {returns}  {agent.intervention_stats}")
    return result


def run_tianshou_trainer(num_tasks, steps_per_task, seed):
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.trainer import OffPolicyTrainerParams

    from agents.rl.tianshou_agents import tianshou_venv

    make = lambda: gym.make("ContinualCartPole-v0", num_tasks=num_tasks, steps_per_task=steps_per_task)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), seed=seed, **INTERVENTIONS["redo"])
    agent.algorithm.policy.set_eps_training(0.1)
    venv = tianshou_venv([make])
    venv.seed(seed)
    collector = Collector(agent.algorithm, venv, VectorReplayBuffer(20_000, 1))
    stats = agent.algorithm.run_training(OffPolicyTrainerParams(
        training_collector=collector, max_epochs=num_tasks, epoch_num_steps=steps_per_task,
        collection_step_num_env_steps=10, update_step_num_gradient_steps_per_sample=0.1, batch_size=64,
        test_collector=None, verbose=False, show_progress=False))
    print(f"tianshou OffPolicyTrainer + ReDo: {stats.update_step} gradient steps, {agent.intervention_stats}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", choices=["tianshou_dqn", "tianshou_ppo"], nargs="+",
                    default=["tianshou_dqn", "tianshou_ppo"])
    ap.add_argument("--intervention", choices=list(INTERVENTIONS), nargs="+", default=list(INTERVENTIONS))
    ap.add_argument("--num-tasks", type=int, default=4)
    ap.add_argument("--steps-per-task", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trainer", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.agent:
        for iv in args.intervention:
            run_loop(name, iv, args.num_tasks, args.steps_per_task, args.seed)
    if not args.skip_trainer:
        run_tianshou_trainer(args.num_tasks, args.steps_per_task, args.seed)


if __name__ == "__main__":
    main()
