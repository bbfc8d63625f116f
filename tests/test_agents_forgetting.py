"""Forgetting baselines: ER (reservoir replay), A-GEM (projection only on conflict), HAT (task-aware gating) and
the paper's compositions."""

import gymnasium as gym
import pytest
import torch

import agents
import clenv
from agents.agem import agem_project


@pytest.fixture(scope="module")
def split_env():
    return gym.make("SplitFashionMNIST-v0", num_tasks=2, steps_per_task=20, batch_size=64)


@pytest.fixture(scope="module")
def aware_env():
    return gym.make("SplitFashionMNIST-v0", num_tasks=2, steps_per_task=20, batch_size=64, task_aware=True)


def _xy(n=64, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("name", ["er", "agem", "cbp+er", "crelu+er", "l2init+ewc", "ewc"])
def test_runs_two_tasks_of_split_fashion_mnist(split_env, name):
    agent = agents.make(name, split_env)
    result = clenv.run(split_env, agent, seed=0, progress=False)
    assert len(result.task_accuracy) == 2 and agent.num_updates == 40


def test_hat_runs_two_tasks_task_aware(aware_env):
    agent = agents.make("hat", aware_env)
    result = clenv.run(aware_env, agent, seed=0, progress=False)
    assert len(result.task_accuracy) == 2
    assert all((c > 0).any() for c in agent.cumulative)  # task 0's gates were consolidated


def test_compositions_run_every_mechanism(split_env):
    a = agents.make("cbp+er", split_env, replacement_rate=0.05, maturity_threshold=5)
    clenv.run(split_env, a, seed=0, progress=False)
    assert a.replaced_total > 0 and len(a.memory) == 40 * 64
    b = agents.make("l2init+ewc", split_env)
    clenv.run(split_env, b, seed=0, progress=False)
    assert b.tasks_consolidated == 1
    reg = float(b.regularizer().detach())
    from agents.ewc import EWCAgent

    l2init = 1e-3 * sum(float((p.detach() - b.init_params[n]).pow(2).sum()) for n, p in b.network.named_parameters())
    ewc = float(EWCAgent.regularizer(b).detach())  # EWC's term alone (its super() is the base's 0)
    assert ewc > 0 and l2init > 0
    assert reg == pytest.approx(l2init + ewc, rel=1e-5)
    c = agents.make("crelu+er", split_env)
    assert c.hparams["activation"] == "crelu" and c.hparams["buffer_size"] == 4000


# ---------------------------------------------------------------------------------------------------- ER
def test_er_replays_64_after_inserting_and_never_its_own_batch(split_env):
    agent = agents.make("er", split_env)
    x, y = _xy()
    xb, yb = agent.training_batch(x, y)
    assert xb.shape[0] == 64  # empty memory: nothing to replay, the current batch is not yet stored
    agent.learn(x, y)
    assert len(agent.memory) == 64
    x2, y2 = _xy(seed=1)
    xb, yb = agent.training_batch(x2, y2)
    assert xb.shape[0] == 128 and torch.equal(xb[:64], x2)
    assert agent.hparams["buffer_size"] == 4000 and agent.memory.capacity == 4000


def test_er_stores_raw_uint8_observations(split_env):
    agent = agents.make("er", split_env)
    obs, info = split_env.reset(seed=0)
    action = agent.act(obs, info)
    nxt, r, term, trunc, info2 = split_env.step(action)
    agent.observe(obs, action, r, nxt, term, trunc, info2)
    assert agent.memory.x.dtype == torch.uint8
    assert torch.equal(agent.memory.x[:64], torch.as_tensor(obs))
    mx, _ = agent.memory_batch(8)
    assert mx.dtype == torch.float32 and float(mx.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------- A-GEM
def test_agem_projects_only_when_the_dot_product_is_negative():
    g_ref = torch.tensor([1.0, 0.0, 2.0])
    g = torch.tensor([0.5, 3.0, 0.1])
    out, projected = agem_project(g, g_ref)
    assert not projected and torch.equal(out, g)
    out, projected = agem_project(torch.zeros(3), g_ref)  # zero dot: no projection
    assert not projected
    g = torch.tensor([-2.0, 1.0, -1.0])
    out, projected = agem_project(g, g_ref)
    assert projected
    assert float(torch.dot(out, g_ref)) == pytest.approx(0.0, abs=1e-6)
    # The projection removes only the g_ref component.
    assert torch.allclose(out, g - (torch.dot(g, g_ref) / torch.dot(g_ref, g_ref)) * g_ref)


def test_agem_agent_projects_the_concatenated_gradient(split_env):
    agent = agents.make("agem", split_env)
    agent.learn(*_xy(seed=0, classes=2))  # memory holds one batch of classes 0/1
    params = [p for p in agent.parameters_to_optimize()]
    seen = {}

    def before(self=agent):
        # Record g and g_ref exactly as A-GEM sees them, then let it project.
        g = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        state = agent.memory.rng.bit_generator.state
        mx, my = agent.memory_batch()
        agent.memory.rng.bit_generator.state = state
        for p in params:
            p.grad = None
        torch.nn.functional.cross_entropy(agent.forward(mx), my).backward()
        g_ref = torch.cat([p.grad.reshape(-1) for p in params]).clone()
        for p, gg in zip(params, torch.split(g, [p.numel() for p in params])):
            p.grad = gg.view_as(p).clone()
        type(agent).before_update(agent)
        seen.update(g=g, g_ref=g_ref, out=torch.cat([p.grad.reshape(-1) for p in params]))

    agent.before_update = before
    for seed in range(1, 6):
        x, y = _xy(seed=seed)
        y = (y % 8) + 2  # new classes only: the gradient conflicts with the memory's
        agent.learn(x, y)
        dot = float(torch.dot(seen["g"], seen["g_ref"]))
        if dot < 0:
            assert float(torch.dot(seen["out"], seen["g_ref"])) == pytest.approx(0.0, abs=1e-4 * abs(dot) + 1e-7)
        else:
            assert torch.allclose(seen["out"], seen["g"])
    assert agent.projections >= 1


# ---------------------------------------------------------------------------------------------------- HAT
def test_hat_blocks_gradients_of_units_earlier_tasks_use(aware_env):
    agent = agents.make("hat", aware_env, multi_head=True)
    agent.on_task_switch(0)
    x, y = _xy(classes=2)
    agent.learn(x, y)
    agent.on_task_switch(1)  # consolidates task 0's gates
    with torch.no_grad():
        agent.cumulative[0][:] = 0.0
        agent.cumulative[0][:10] = 1.0  # units 0..9 of fc0 belong to task 0
        agent.cumulative[1][:] = 0.0
        agent.cumulative[1][:5] = 1.0
    before = {n: p.detach().clone() for n, p in agent.network.named_parameters()}
    agent.learn(*_xy(seed=1, classes=2))
    fc0, fc1 = agent.network.unit_layers[0].incoming, agent.network.unit_layers[1].incoming
    assert torch.equal(fc0.weight.detach()[:10], before["body.1.weight"][:10])
    assert torch.equal(fc0.bias.detach()[:10], before["body.1.bias"][:10])
    assert not torch.equal(fc0.weight.detach()[10:], before["body.1.weight"][10:])
    w1 = fc1.weight.detach()
    # fc1 weight [i, j] is frozen where unit i of fc1 and unit j of fc0 are both taken (1 - min of the two gates).
    assert torch.equal(w1[:5, :10], before["body.3.weight"][:5, :10])
    assert not torch.equal(w1[:5, 10:], before["body.3.weight"][:5, 10:])
    assert not torch.equal(w1[5:, :10], before["body.3.weight"][5:, :10])
    assert torch.equal(fc1.bias.detach()[:5], before["body.3.bias"][:5])


def test_hat_needs_a_task_id(split_env):
    agent = agents.make("hat", split_env)
    with pytest.raises(RuntimeError, match="task_aware"):
        agent.learn(*_xy())
