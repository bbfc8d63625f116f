"""Seeds vectorised (agents.seed_stack.SeedStack through clenv.run(..., seeds=[...])): every seed's run equals its
sequential run, each agent keeps working on its own seed, and what cannot stack is refused clearly.

Tolerance: the stacked step uses batched matmuls with a backward written to match ``F.linear``'s per-seed products, and
elementwise optimisers on stacked tensors; on the x86 / MKL machines we ran it is bit-identical to the sequential
runs. The comparisons allow parameters to differ by 1e-5 and at most 1% of the per-step accuracies to differ, which
absorbs a BLAS that rounds batched and single products differently in the last bit over ~100 steps, and is far
below what any real mistake gives (a seed given another seed's stream, a missed regulariser, an unapplied reset or
replacement change the accuracies at most steps and the parameters by 1e-2 or more).
"""

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from agents.seed_stack import SeedStack, stackable_agents, supports_seed_stacking

SEEDS = [0, 1, 2]
KW = dict(num_tasks=3, samples_per_task=256, epochs_per_task=2, batch_size=16)  # 3 tasks x 32 steps


def stream(env_id="PermutedDigits-v0", **kw):
    return gym.make(env_id, **{**KW, **kw})


def sequential(name, hparams, env_id="PermutedDigits-v0", evaluation=None, **kw):
    out = []
    for s in SEEDS:
        env = stream(env_id, **kw)
        a = agents.make(name, env, **hparams)
        ev = None if evaluation is None else evaluation()
        out.append((clenv.run(env, a, seed=s, progress=False, evaluation=ev), a))
    return out


def params(agent):
    return [p.detach().clone() for p in agent.network.parameters()]


def assert_same_run(seq_result, seq_agent, vec_result, vec_agent):
    assert vec_result.seed == seq_result.seed
    assert vec_result.task_ids == seq_result.task_ids and vec_result.steps == seq_result.steps
    differ = np.mean(seq_result.step_reward != vec_result.step_reward)
    assert differ <= 0.01, f"{differ:.1%} of the per-step accuracies differ"
    for p, q in zip(params(seq_agent), params(vec_agent)):
        assert torch.allclose(p, q, rtol=0, atol=1e-5), (p - q).abs().max()


CASES = [
    ("base", {}),
    ("base", dict(optimizer="sgd", momentum=0.9, max_grad_norm=0.3)),  # momentum buffers, per-seed clipping
    ("l2", {}),
    ("l2init", {}),
    ("shrink_perturb", {}),  # resets the optimiser at every switch
    ("shrink_perturb_continual", {}),  # its own noise generator every step
    ("shrink_perturb_to_init", {}),
    ("crelu", {}),
    ("layernorm", {}),
    ("deepf", {}),
    ("cbp", dict(maturity_threshold=10, replacement_rate=0.02)),  # replacements and Adam-row resets in the window
    ("cbp", dict(maturity_threshold=10, replacement_rate=0.02, utility="adaptable", absorb_mean=True)),
    ("l2init+cbp", dict(maturity_threshold=10, replacement_rate=0.02)),
]


@pytest.mark.parametrize("name,hparams", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_each_seed_equals_its_sequential_run(name, hparams):
    seq = sequential(name, hparams)
    env = stream()
    agent = agents.make(name, env, **hparams)
    results = clenv.run(env, agent, seeds=SEEDS, progress=False)
    assert [r.seed for r in results] == SEEDS
    # the agent passed in is seed 0's; the others are reachable through the stack only, so compare seed 0 here
    assert_same_run(seq[0][0], seq[0][1], results[0], agent)
    for (r, _), v in zip(seq, results):
        differ = np.mean(r.step_reward != v.step_reward)
        assert differ <= 0.01 and v.average_accuracy == pytest.approx(r.average_accuracy, abs=0.01)
    # seeds are different runs (a stack that fed every agent seed 0's stream would pass the checks above for seed 0)
    assert not np.array_equal(results[0].step_reward, results[1].step_reward)
    if name.endswith("cbp"):
        assert seq[0][1].replaced_total > 0 and agent.replaced_total == seq[0][1].replaced_total


def test_stack_agents_equal_sequential_agents_and_stay_views():
    name, hp = "cbp", dict(maturity_threshold=10, replacement_rate=0.02)
    seq = sequential(name, hp)
    env = stream()
    group = [agents.make(name, env, **hp, seed=s) for s in SEEDS]
    stack = SeedStack(group)
    envs = [stream() for _ in SEEDS]
    # drive the stack by hand through the loop's contract, one seed per env
    obs = [e.reset(seed=s)[0] for e, s in zip(envs, SEEDS)]
    for a in group:
        a.on_task_switch(0)
    stack.sync()
    for _ in range(envs[0].unwrapped.total_steps):
        actions = stack.act(obs)
        steps = [e.step(a) for e, a in zip(envs, actions)]
        stack.observe(obs, [st[4] for st in steps])
        if steps[0][2]:
            break
        if steps[0][4].get("task_switch"):
            for a, st in zip(group, steps):
                a.on_task_switch(st[4]["task_id"])
            stack.sync()
        obs = [st[0] for st in steps]
    for (_, sa), a in zip(seq, group):
        for p, q in zip(params(sa), params(a)):
            assert torch.allclose(p, q, rtol=0, atol=1e-5)
        assert a.num_updates == sa.num_updates and a.replaced_total == sa.replaced_total
        # the agent's optimiser state is its slice of the stacked one (CBP zeroes rows through it)
        w = a.network.head.weight
        st = a.optimizer.state[w]
        ref = sa.optimizer.state[sa.network.head.weight]
        assert torch.allclose(st["exp_avg"], ref["exp_avg"], atol=1e-6)
        assert st["exp_avg"].data_ptr() == stack.optimizer.state[stack.params["head.weight"]]["exp_avg"][
            group.index(a)].data_ptr()
    # the agents' parameters are views of the stack: a change through one is the stack's
    with torch.no_grad():
        group[1].network.head.bias.add_(1.0)
    assert torch.equal(stack.params["head.bias"][1], group[1].network.head.bias)


def test_probes_run_per_seed():
    ev = lambda: clenv.Evaluation(forgetting=True, eval_samples=64)  # noqa: E731
    seq = sequential("base", {}, evaluation=ev)
    env = stream()
    results = clenv.run(env, agents.make("base", env), seeds=SEEDS, progress=False, evaluation=ev())
    for (r, _), v in zip(seq, results):
        assert v.metrics["test_acc"] == pytest.approx(r.metrics["test_acc"], abs=0.02)
        R, Rv = np.asarray(r.records["accuracy_matrix"]), np.asarray(v.records["accuracy_matrix"])
        assert Rv.shape == R.shape == (3, 3) and np.abs(R - Rv).max() <= 0.02


def test_unsupported_agents_and_networks_are_refused_clearly():
    env = stream()
    with pytest.raises(ValueError, match="does not support vectorised seeds; supported: .*cbp"):
        clenv.run(env, agents.make("er", env), seeds=SEEDS, progress=False)
    with pytest.raises(ValueError, match="does not support vectorised seeds"):
        clenv.run(env, agents.make("cbp+er", env), seeds=SEEDS, progress=False)
    with pytest.raises(ValueError, match="mlp backbone"):
        clenv.run(env, agents.make("base", env, backbone="cnn"), seeds=SEEDS, progress=False)
    with pytest.raises(ValueError, match="seeds must list"):
        clenv.run(env, agents.make("base", env), seeds=[], progress=False)
    with pytest.raises(ValueError, match="integers"):
        clenv.run(env, agents.make("base", env), seeds=[0, 1.5], progress=False)
    with pytest.raises(ValueError, match="not both"):
        clenv.run(env, agents.make("base", env), seed=0, seeds=SEEDS, progress=False)
    with pytest.raises(ValueError, match="share every hyperparameter"):
        SeedStack([agents.make("base", env, lr=0.1), agents.make("base", env, lr=0.2)])


def test_the_supported_list_is_what_the_classes_declare():
    names = stackable_agents()
    assert {"base", "l2", "l2init", "shrink_perturb", "crelu", "cbp"} <= set(names)
    assert "er" not in names and "neumosync" not in names and "ewc" not in names
    assert supports_seed_stacking(agents.agent_class("l2init+cbp"))
    assert not supports_seed_stacking(agents.agent_class("l2+ewc"))


def test_compare_vectorise_writes_the_sequential_runs(tmp_path, capsys):
    from clenv.app.cli import main
    from clenv.results import load_run

    args = ["compare", "--env", "PermutedDigits-v0", "--env-set", "num_tasks=2", "--env-set", "samples_per_task=128",
            "--agents", "base,l2", "--seeds", "0,1", "--jobs", "1", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "seq")]) == 0
    assert main(args + ["--out", str(tmp_path / "vec"), "--vectorise"]) == 0
    seq = sorted(p.parent.relative_to(tmp_path / "seq") for p in (tmp_path / "seq").rglob("result.json"))
    vec = sorted(p.parent.relative_to(tmp_path / "vec") for p in (tmp_path / "vec").rglob("result.json"))
    assert seq == vec and len(seq) == 4  # the same runs, named by the same keys
    for rel in seq:
        a, b = load_run(tmp_path / "seq" / rel), load_run(tmp_path / "vec" / rel)
        assert np.mean(a.step_reward != b.step_reward) <= 0.01
        assert b.records["vectorised"]["seeds"] == [0, 1] and "vectorised" not in a.records
    # what cannot stack is refused before any run starts
    capsys.readouterr()
    code = main(["compare", "--env", "PermutedDigits-v0", "--agents", "base,er", "--seeds", "0,1", "--jobs", "1",
                 "--vectorise", "--no-progress", "--out", str(tmp_path / "bad")])
    assert code == 2 and "does not support vectorised seeds" in capsys.readouterr().err
    assert not list((tmp_path / "bad").rglob("result.json"))

