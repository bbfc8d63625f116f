"""The RL snippets of docs/rl.md and the examples/rl_*.py scripts run, and (``-m slow``) visibly learn.

"Learns" is measured against a uniformly random policy on the same stream (computed here, not a stored number):
on CartPole a random policy's episodes last about 22 steps whatever the physics draw, while a policy that has
learned to balance lasts hundreds. The slow tests ask the last task's mean return to be at least 3x the random
policy's and at least 75; a run that did not learn stays near 1x (the docs snippet before its fix ended at 7-13, that
is 0.3-0.6x), so the margin separates learning from noise without needing the 500 of a solved task.
"""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("tianshou")

import agents  # noqa: E402
import clenv  # noqa: E402
from agents.rl.tianshou_agents import episode_returns, tianshou_venv  # noqa: E402
from examples import rl_cartpole, rl_redo_returns  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "rl.md"
LEARNED_FACTOR, LEARNED_FLOOR = 3.0, 75.0


def _random_return(num_tasks, steps_per_task, seed=0) -> float:
    return float(np.nanmean(rl_cartpole.random_returns(num_tasks, steps_per_task, seed)))


def _assert_learned(last_task_return: float, random_return: float, what: str) -> None:
    need = max(LEARNED_FACTOR * random_return, LEARNED_FLOOR)
    assert last_task_return >= need, (f"{what}: last task's mean return {last_task_return:.1f}, a random policy's "
                                      f"{random_return:.1f}; learning needs >= {need:.1f}")


def _docs_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    found = [b for b in blocks if "ContinualCartPole-v0" in b]
    assert len(found) == 3, "docs/rl.md should have the clenv.run, tianshou trainer and make_vec CartPole snippets"
    return found


def _sized(block: str, sizes: dict[str, str]) -> str:
    for old, new in sizes.items():
        assert old in block, f"docs/rl.md snippet no longer contains {old!r}; update this test with it"
        block = block.replace(old, new)
    return block


# ------------------------------------------------------------------ fast: the pieces the snippets rely on
def test_dqn_trainer_params_refuse_a_collector_that_never_explores():
    from tianshou.data import Collector, VectorReplayBuffer

    make = lambda: gym.make("ContinualCartPole-v0", num_tasks=2, steps_per_task=50)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), hidden=(8,))
    greedy = Collector(agent.algorithm, tianshou_venv([make]), VectorReplayBuffer(100, 1))
    with pytest.raises(ValueError, match="exploration_noise=True"):
        agent.trainer_params(greedy, max_epochs=1, epoch_num_steps=50)
    other = agents.make("tianshou_dqn", make(), hidden=(8,))
    foreign = Collector(other.algorithm, tianshou_venv([make]), VectorReplayBuffer(100, 1), exploration_noise=True)
    with pytest.raises(ValueError, match="another policy"):
        agent.trainer_params(foreign, max_epochs=1, epoch_num_steps=50)
    ok = Collector(agent.algorithm, tianshou_venv([make]), VectorReplayBuffer(100, 1), exploration_noise=True)
    params = agent.trainer_params(ok, max_epochs=2, epoch_num_steps=50, batch_size=7)
    assert (params.max_epochs, params.epoch_num_steps, params.batch_size) == (2, 50, 7)  # overrides win
    assert params.update_step_num_gradient_steps_per_sample == 1.0 / agent.hparams["train_every"]
    assert params.show_progress is False  # pytest captures stderr: not a terminal
    params.training_fn(0, 0)
    assert agent.policy.eps_training == agent.hparams["eps_start"]
    params.training_fn(0, 10 ** 9)
    assert agent.policy.eps_training == pytest.approx(agent.hparams["eps_end"])


def test_episode_returns_match_the_collectors_own_episode_statistics():
    from tianshou.data import Collector, VectorReplayBuffer

    make = lambda: gym.make("ContinualCartPole-v0", num_tasks=3, steps_per_task=60)  # noqa: E731
    agent = agents.make("tianshou_dqn", make(), hidden=(8,))
    agent.policy.set_eps_training(1.0)  # random actions: many short episodes
    venv = tianshou_venv([make, make])
    venv.seed([0, 1])
    buffer = VectorReplayBuffer(1000, 2)
    collector = Collector(agent.algorithm, venv, buffer, exploration_noise=True)
    collector.reset()
    agent.policy.is_within_training_step = True
    stats = collector.collect(n_step=300)
    got = episode_returns(buffer)
    assert len(got) == stats.n_collected_episodes > 5
    assert sorted((r, n) for _, r, n in got) == sorted(zip(stats.returns.tolist(), stats.lens.tolist()))
    assert {t for t, _, _ in got} <= {0, 1, 2} and len({t for t, _, _ in got}) >= 2
    with pytest.raises(ValueError, match="clenv info"):
        from tianshou.data import Batch, ReplayBuffer

        plain = ReplayBuffer(4)
        plain.add(Batch(obs=np.zeros(2), act=0, rew=1.0, terminated=True, truncated=False, obs_next=np.zeros(2),
                        info={}))
        episode_returns(plain)


def test_docs_snippets_and_examples_run_at_a_tiny_size():
    ns: dict = {}
    first, second, vector = _docs_blocks()
    exec(_sized(first, {"steps_per_task=5000": "steps_per_task=60",
                        "clenv.run(env, agent, seed=0)": "clenv.run(env, agent, seed=0, progress=False)"}), ns)
    exec(_sized(second, {"steps_per_task=5000": "steps_per_task=60", "epoch_num_steps=5000": "epoch_num_steps=60"}),
         ns)
    assert len(ns["result"].task_return) == 4 and len(ns["episodes"]) > 4
    exec(_sized(vector, {"steps_per_task=5000": "steps_per_task=60"}), ns)
    assert ns["venv"].num_envs == 4 and len({str(e.unwrapped.task(2)) for e in ns["venv"].envs}) == 1
    out = rl_cartpole.main(["--num-tasks", "2", "--steps-per-task", "80", "--intervention", "none", "--no-progress"])
    assert set(out) == {"random", "tianshou_dqn+none", "tianshou_ppo+none", "trainer"}
    rows = rl_redo_returns.main(["--seeds", "0", "--num-tasks", "2", "--steps-per-task", "80"])
    assert set(rows) == {"dqn", "dqn+redo"} and len(rows["dqn"][0]) == 2


def test_rl_cli_run_prints_returns_not_online_accuracy(capsys):
    from clenv.app.cli import main

    code = main(["run", "--env", "ContinualCartPole-v0", "--agent", "tianshou_dqn", "--no-save", "--no-progress",
                 "--env-set", "num_tasks=2", "--env-set", "steps_per_task=100", "--agent-set", "start_steps=50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean episode return" in out and "avg_task_return =" in out
    assert "online_acc" not in out and "online acc" not in out


# ------------------------------------------------------------------ slow: they learn
@pytest.mark.slow
def test_docs_clenv_run_snippet_learns():
    ns: dict = {}
    exec(_sized(_docs_blocks()[0], {"num_tasks=4, steps_per_task=5000": "num_tasks=2, steps_per_task=5000",
                                    "clenv.run(env, agent, seed=0)": "clenv.run(env, agent, seed=0, progress=False)"}),
         ns)
    _assert_learned(ns["result"].task_return[-1], _random_return(2, 5000), "docs clenv.run snippet")


@pytest.mark.slow
def test_docs_tianshou_trainer_snippet_learns():
    ns: dict = {"gym": gym, "agents": agents, "clenv": clenv}
    exec(_sized(_docs_blocks()[1], {"num_tasks=4, steps_per_task=5000": "num_tasks=2, steps_per_task=5000",
                                    "max_epochs=4": "max_epochs=2"}), ns)
    last = [r for t, r, _ in ns["episodes"] if t == 1]
    _assert_learned(float(np.mean(last)), _random_return(2, 5000), "docs tianshou trainer snippet")


@pytest.mark.slow
def test_rl_cartpole_example_learns():
    out = rl_cartpole.main(["--num-tasks", "2", "--steps-per-task", "5000", "--intervention", "none",
                            "--no-progress"])
    rand = float(np.nanmean(out["random"]))
    for key in ("tianshou_dqn+none", "trainer"):
        _assert_learned(out[key][-1], rand, f"examples/rl_cartpole.py {key}")
    # PPO learns more slowly than DQN at this size; it must still clear the random policy clearly.
    assert out["tianshou_ppo+none"][-1] >= 2 * rand, out


@pytest.mark.slow
def test_rl_redo_returns_example_learns():
    rows = rl_redo_returns.main(["--seeds", "0", "--num-tasks", "2", "--steps-per-task", "5000"])
    rand = _random_return(2, 5000)
    for name, per_seed in rows.items():
        _assert_learned(per_seed[0][-1], rand, f"examples/rl_redo_returns.py {name}")


@pytest.mark.parametrize("agent", ["tianshou_dqn", "sb3_dqn"])
def test_rl_plasticity_example_runs_resumes_and_draws(tmp_path, agent, capsys):
    if agent == "sb3_dqn":
        pytest.importorskip("stable_baselines3")
    from examples import rl_plasticity

    out, fig = tmp_path / "runs.jsonl", tmp_path / "fig.png"
    argv = ["--agent", agent, "--env-set", "num_tasks=4", "--env-set", "steps_per_task=80", "--seeds", "0", "1",
            "--methods", "dqn", "dqn+redo", "--out", str(out), "--figure", str(fig)]
    runs = rl_plasticity.main(argv)
    assert len(runs) == 4 and fig.stat().st_size > 1000
    for r in runs:
        assert [x["distinct"] for x in r["revisits"]] == [0, 1, 0, 1] and len(r["diagnostics"]) == 4
        assert r["metrics"]["revisit_return_change"] == pytest.approx(
            np.mean([r["task_return"][2] - r["task_return"][0], r["task_return"][3] - r["task_return"][1]]))
    capsys.readouterr()
    again = rl_plasticity.main(argv)  # every run is in the file: nothing reruns
    assert "seed" not in capsys.readouterr().out.split("mean (std)")[0]
    assert [r["task_return"] for r in again] == [r["task_return"] for r in runs]
    # another agent setting is another configuration: it runs, is recorded, and the table holds only it
    other = rl_plasticity.main([*argv[:-4], "--seeds", "0", "--methods", "dqn", "--agent-set", "lr=0.0005",
                                "--out", str(out)])
    assert len(other) == 1 and other[0]["agent_kwargs"] == {"lr": 0.0005} and "seed 0" in capsys.readouterr().out
