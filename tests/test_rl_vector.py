"""Vector envs over the continual RL streams: ``gymnasium.make_vec`` for every RL id in each autoreset mode, the
per-env task schedule, shared task sequences, and tianshou's vectorised collectors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import clenv

RL_IDS = clenv.env_ids("rl")
SMALL = dict(num_tasks=3, steps_per_task=30)


def _run_vec(venv, mode: AutoresetMode, steps: int, seed: int = 0, options=None):
    """Random actions for ``steps`` vector steps; per sub-env, the (task_id, step_in_task, stream_done) of every
    real transition (NEXT_STEP's reset steps, which ignore the action, are left out)."""
    rng = np.random.default_rng(seed)
    n = venv.num_envs
    obs, info = venv.reset(seed=seed, options=options)
    seen = [[] for _ in range(n)]
    starts = [[int(t)] for t in info["task_id"]]
    pending = np.zeros(n, bool)  # NEXT_STEP: the sub-env resets on this step
    for _ in range(steps):
        actions = rng.integers(venv.single_action_space.n, size=n)
        obs, rew, term, trunc, info = venv.step(actions)
        done = term | trunc
        for i in range(n):
            if mode is AutoresetMode.NEXT_STEP and pending[i]:
                starts[i].append(int(info["task_id"][i]))
                continue
            if mode is AutoresetMode.SAME_STEP and done[i]:
                fi = info["final_info"]
                seen[i].append((int(fi["labels_task_id"][i]), int(fi["step_in_task"][i]), bool(fi["stream_done"][i])))
                starts[i].append(int(info["task_id"][i]))
                continue
            seen[i].append((int(info["labels_task_id"][i]), int(info["step_in_task"][i]),
                            bool(info["stream_done"][i])))
        pending = done
        if mode is AutoresetMode.DISABLED and done.any():
            obs, info = venv.reset(options={"reset_mask": done})
            for i in np.flatnonzero(done):
                starts[i].append(int(info["task_id"][i]))
    return seen, starts


def _check_schedule(records, steps_per_task, num_tasks):
    """Within one sub-env: tasks advance 0, 1, ... each after exactly ``steps_per_task`` of its own steps."""
    tasks = [t for t, _, _ in records]
    cycle = steps_per_task * num_tasks
    for j, (t, s, done) in enumerate(records):
        assert t == (j % cycle) // steps_per_task and s == j % steps_per_task + 1
        assert done == (j % cycle == cycle - 1)
    return tasks


@pytest.mark.parametrize("env_id", RL_IDS)
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_make_vec_runs_every_rl_id_with_a_per_env_task_schedule(env_id, mode):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode},
                        **SMALL)
    assert venv.metadata["autoreset_mode"] is mode
    seen, starts = _run_vec(venv, mode, steps=130)
    for i in range(2):
        assert len(seen[i]) >= 90, "each sub-env must get through at least one whole stream"
        _check_schedule(seen[i], SMALL["steps_per_task"], SMALL["num_tasks"])
        # Resets continue the stream: every reset starts the task the last step left off in (or the next one).
        assert starts[i][0] == 0 and all(b - a in (0, 1) or b == 0 for a, b in zip(starts[i], starts[i][1:]))
    venv.close()


def test_sub_envs_draw_their_own_tasks_unless_given_one_stream_seed():
    venv = gym.make_vec("ContinualCartPole-v0", num_envs=3, vectorization_mode="sync", **SMALL)
    venv.reset(seed=5)
    tasks = [venv.envs[i].unwrapped.task(1) for i in range(3)]
    assert tasks[0] != tasks[1] != tasks[2]  # seeds 5, 6, 7: three different streams
    venv.reset(seed=5, options={"stream_seed": 123})
    shared = [venv.envs[i].unwrapped.task(1) for i in range(3)]
    assert shared[0] == shared[1] == shared[2]
    states = [venv.envs[i].unwrapped._inner.unwrapped.state for i in range(3)]
    assert not np.array_equal(states[0], states[1])  # one task sequence, different episodes


def test_async_make_vec_uses_the_import_free_id():
    venv = gym.make_vec("clenv:ContinualCartPole-v0", num_envs=2, vectorization_mode="async", **SMALL)
    try:
        seen, _ = _run_vec(venv, AutoresetMode.NEXT_STEP, steps=100)
        _check_schedule(seen[0], SMALL["steps_per_task"], SMALL["num_tasks"])
    finally:
        venv.close()


@pytest.mark.parametrize("subprocess", [False, True])
def test_tianshou_vector_collectors_train_on_several_streams(subprocess):
    pytest.importorskip("tianshou")
    from tianshou.data import Collector, VectorReplayBuffer

    import agents
    from agents.rl.tianshou_agents import episode_returns, tianshou_venv

    make = lambda: gym.make("clenv:ContinualCartPole-v0", **SMALL)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), hidden=(16,), batch_size=16)
    venv = tianshou_venv([make] * 3, subprocess=subprocess)
    venv.seed([0, 1, 2])
    buffer = VectorReplayBuffer(3 * 200, 3)
    collector = Collector(agent.algorithm, venv, buffer, exploration_noise=True)
    w0 = agent.network.head.weight.detach().clone()
    stats = agent.algorithm.run_training(agent.trainer_params(collector, max_epochs=2, epoch_num_steps=90,
                                                              verbose=False))
    assert stats.train_step >= 180 and not np.array_equal(w0, agent.network.head.weight.detach())
    eps = episode_returns(buffer)
    # Each of the 3 streams took about 60 steps: all reached task 1, and returns are per-stream episode sums.
    assert {t for t, _, _ in eps} >= {0, 1} and sum(n for _, _, n in eps) <= len(buffer)
    venv.close()
