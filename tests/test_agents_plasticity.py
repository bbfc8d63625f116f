"""Plasticity baselines: mechanisms (CBP, ReDo, L2Init, EWC, Shrink & Perturb, Hare & Tortoise) and two-task runs."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv


@pytest.fixture(scope="module")
def split_env():
    return gym.make("SplitFashionMNIST-v0", num_tasks=2, steps_per_task=20, batch_size=64)


def _x(n=64, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _y(n=64, seed=0):
    return torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))


PLASTICITY = ["base", "l2", "l2init", "ewc", "l2init+ewc", "cbp", "redo", "shrink_perturb",
              "shrink_perturb_continual", "shrink_perturb_to_init", "hare_tortoise", "crelu", "prelu",
              "layernorm", "deepf"]


@pytest.mark.parametrize("name", PLASTICITY)
def test_runs_two_tasks_of_split_fashion_mnist(split_env, name):
    agent = agents.make(name, split_env)
    result = clenv.run(split_env, agent, seed=0, progress=False)
    assert len(result.task_accuracy) == 2 and result.num_task_switches == 1
    assert all(0.0 <= a <= 1.0 for a in result.task_accuracy)
    assert agent.num_updates == 40
    assert all(torch.isfinite(p).all() for p in agent.network.parameters())


def test_defaults_are_the_papers(split_env):
    assert agents.make("cbp", split_env).hparams["replacement_rate"] == 1e-3
    r = agents.make("redo", split_env).hparams
    assert (r["reset_period"], r["dormant_threshold"], r["optimizer"], r["lr"]) == (30_000, 0.1, "adam", 1e-3)
    assert agents.make("l2init", split_env).hparams["l2init_lambda"] == 1e-3
    assert agents.make("crelu", split_env).hparams["optimizer"] == "adam"
    # The class DEFAULTS (Table 7); on SplitFashionMNIST agents.make would apply EWC's Table 26 row.
    c = agents.make("l2init+ewc", split_env, paper_benchmark=False).hparams
    assert c["l2init_lambda"] == 1e-3 and c["ewc_lambda"] == 10.0


# ---------------------------------------------------------------------------------------------------- CBP
def test_cbp_replaces_only_mature_units_of_lowest_utility(split_env):
    agent = agents.make("cbp", split_env, replacement_rate=0.05, maturity_threshold=5, decay_rate=0.0)
    layer = agent.network.unit_layers[0]
    st = agent.cbp_state["fc0"]
    st["age"][:] = 10
    st["age"][:20] = 0  # young units: never eligible, whatever their utility
    feats = torch.ones(8, 100)
    feats[:, :20] = 0.0        # young and useless
    feats[:, [40, 41, 77]] = 0.0  # mature and useless: the lowest utility among the eligible
    feats[:, 60] = 1e-3
    # 80 eligible x 0.05 = 4 due this step: the three zero-utility units and the next lowest (60).
    replaced = agent.generate_and_test({"fc0": feats})
    assert sorted(replaced["fc0"].tolist()) == [40, 41, 60, 77]
    assert torch.all(st["age"][[40, 41, 60, 77]] == 0) and torch.all(st["util"][[40, 41, 60, 77]] == 0)
    assert torch.all(layer.outgoing.weight.detach()[:, [40, 41, 60, 77]] == 0)
    # Fractional counts accumulate: 0.05 x 76 eligible = 3.8 due next step, 0 carried over now.
    assert st["accum"] == pytest.approx(0.0, abs=1e-9)


def test_cbp_accumulates_fractional_replacements(split_env):
    agent = agents.make("cbp", split_env, replacement_rate=0.003, maturity_threshold=0)
    feats = {"fc0": torch.rand(8, 100), "fc1": torch.rand(8, 100)}
    total = 0
    for _ in range(13):  # 100 eligible x 0.003 = 0.3 per step: 3.9 due in 13 steps, 3 replaced per layer
        total += sum(len(v) for v in agent.generate_and_test(feats).values())
    assert total == 2 * 3


def test_cbp_step_zeroes_outgoing_and_adam_moments_and_keeps_output(split_env):
    agent = agents.make("cbp", split_env, replacement_rate=0.02, maturity_threshold=10**6, decay_rate=0.0)
    layer = agent.network.unit_layers[1]
    x, y = _x(), _y()
    for _ in range(4):
        agent.learn(x, y)
    # Kill units 5 and 9 of fc1: zero activity for every input makes them the lowest-utility units.
    with torch.no_grad():
        layer.incoming.bias[[5, 9]] = -1e4
    agent.learn(x, y)  # the training forward (features kept in agent._features) sees them dead
    before = agent.predict(x)
    agent.hparams["maturity_threshold"] = 3
    agent.cbp_state["fc0"]["age"][:] = 0  # only fc1 is eligible: 100 x 0.02 = 2 due
    agent.cbp_state["fc1"]["accum"] = 0.0
    act = layer.unit_activity(agent._features["fc1"]).mean(0)
    silent = set(torch.nonzero(act == 0).squeeze(1).tolist())  # zero utility: 5, 9 and any unit dead already
    assert {5, 9} <= silent
    replaced = agent.generate_and_test(agent._features)
    assert set(replaced) == {"fc1"} and len(replaced["fc1"]) == 2 and set(replaced["fc1"].tolist()) <= silent
    idx = replaced["fc1"].tolist()
    after = agent.predict(x)
    assert torch.allclose(before, after, atol=1e-6)  # dead units removed, fresh units invisible
    w_out = agent.network.head.weight
    assert torch.all(w_out.detach()[:, idx] == 0)
    live = sorted(set(range(100)) - silent)[:2]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(agent.optimizer.state[w_out][key][:, idx] == 0)
        assert torch.all(agent.optimizer.state[layer.incoming.weight][key][idx] == 0)
        assert agent.optimizer.state[w_out][key][:, live].abs().sum() > 0
    assert torch.all(layer.incoming.bias.detach()[idx] == 0)


def test_cbp_uses_the_training_forward_features(split_env):
    agent = agents.make("cbp", split_env, maturity_threshold=10**9)
    agent.learn(_x(), _y())
    assert torch.all(agent.cbp_state["fc0"]["age"] == 1)
    assert agent.cbp_state["fc0"]["util"].abs().sum() > 0


def test_cbp_is_deterministic(split_env):
    runs = []
    for _ in range(2):
        a = agents.make("cbp", split_env, replacement_rate=0.05, maturity_threshold=5)
        runs.append(clenv.run(split_env, a, seed=3, progress=False).task_accuracy)
        assert a.replaced_total > 0
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------------------------------- ReDo
def test_redo_resets_exactly_the_dormant_hidden_units_never_the_output(split_env):
    agent = agents.make("redo", split_env, dormant_threshold=0.1, reset_period=10**9)
    x, y = _x(), _y()
    agent.learn(x, y)
    net = agent.network
    with torch.no_grad():
        net.unit_layers[0].incoming.bias[[3, 4]] = -1e4
        net.unit_layers[1].incoming.bias[[7]] = -1e4
    from agents.redo import dormant_scores

    net.eval()
    with torch.no_grad(), net.capture() as cap:
        net(x)
    expected = {l.name: set(torch.nonzero(dormant_scores(l, cap[l.name]) <= 0.1).squeeze(1).tolist())
                for l in net.unit_layers}
    assert {3, 4} <= expected["fc0"] and 7 in expected["fc1"]
    head_w, head_b = net.head.weight.detach().clone(), net.head.bias.detach().clone()
    recycled = agent.recycle(x)
    assert {k: set(v.tolist()) for k, v in recycled.items()} == {k: v for k, v in expected.items() if v}
    assert torch.equal(net.head.bias.detach(), head_b)  # the output layer's units are never recycled
    keep = [i for i in range(100) if i not in expected["fc1"]]
    assert torch.equal(net.head.weight.detach()[:, keep], head_w[:, keep])
    assert torch.all(net.head.weight.detach()[:, sorted(expected["fc1"])] == 0)
    assert torch.all(net.unit_layers[0].incoming.bias.detach()[[3, 4]] == 0)


def test_redo_threshold_zero_only_dead_units_and_period_counts_gradient_steps(split_env):
    agent = agents.make("redo", split_env, dormant_threshold=0.0, reset_period=3)
    with torch.no_grad():
        agent.network.unit_layers[0].incoming.bias[[11]] = -1e4
    calls = []
    orig = agent.recycle
    agent.recycle = lambda x: calls.append(agent.num_updates) or orig(x)
    for _ in range(7):
        agent.learn(_x(), _y())
    assert calls == [3, 6]
    assert agent.recycled_total >= 1 and agent.network.unit_layers[0].incoming.bias[11] > -1


# ---------------------------------------------------------------------------------------------------- L2 / L2Init
def test_l2init_pulls_toward_initial_weights_not_zero(split_env):
    a = agents.make("l2init", split_env, l2init_lambda=0.5)
    l2 = agents.make("l2", split_env, l2_lambda=0.5)
    assert float(a.regularizer().detach()) == 0.0  # at initialisation
    assert float(l2.regularizer().detach()) > 0.0
    theta0 = {n: p.detach().clone() for n, p in a.network.named_parameters()}
    with torch.no_grad():
        for p in a.network.parameters():
            p.add_(0.1)
    a.network.zero_grad()
    a.regularizer().backward()
    for n, p in a.network.named_parameters():
        assert torch.allclose(p.grad, 2 * 0.5 * (p.detach() - theta0[n]), atol=1e-6)
    l2.network.zero_grad()
    l2.regularizer().backward()
    for p in l2.network.parameters():
        assert torch.allclose(p.grad, 2 * 0.5 * p.detach(), atol=1e-6)


def test_l2init_anchor_survives_task_switches(split_env):
    a = agents.make("l2init", split_env)
    anchor = {n: t.clone() for n, t in a.init_params.items()}
    clenv.run(split_env, a, seed=0, progress=False)
    assert all(torch.equal(anchor[n], a.init_params[n]) for n in anchor)
    assert float(a.regularizer().detach()) > 0


# ---------------------------------------------------------------------------------------------------- EWC
def test_ewc_penalty_is_the_sum_of_per_task_quadratics(split_env):
    agent = agents.make("ewc", split_env, ewc_lambda=2.0, fisher_labels="empirical")
    anchors, fishers = [], []
    from agents.common.fisher import diagonal_fisher

    for k in range(2):
        for s in range(3):
            agent.learn(_x(seed=10 * k + s), _y(seed=10 * k + s))
        x = torch.cat([b[0] for b in agent._recent])
        y = torch.cat([b[1] for b in agent._recent])
        fishers.append(diagonal_fisher(agent.network, x, y, labels="empirical"))
        anchors.append({n: p.detach().clone() for n, p in agent.network.named_parameters()})
        agent.on_task_switch(k + 1)
    agent.learn(_x(seed=99), _y(seed=99))
    agent.network.zero_grad()
    agent.regularizer().backward()
    for n, p in agent.network.named_parameters():
        expected = 2.0 * sum(f[n] * (p.detach() - a[n]) for f, a in zip(fishers, anchors))
        assert torch.allclose(p.grad, expected, atol=1e-5, rtol=1e-4)


def test_ewc_warns_when_sgd_on_its_summed_penalty_turns_unstable_and_names_a_divergence():
    """lr * Gamma * max(A) is the penalty's step-times-curvature; SGD diverges above 2. At Gamma 1e6 the first
    consolidation crosses it (a warning naming the number), task 1 blows the weights up, and the next consolidation
    raises FloatingPointError saying training diverged, instead of torch.multinomial's error inside the Fisher."""
    env = gym.make("SplitFashionMNIST-v0", num_tasks=3, steps_per_task=20, batch_size=64)
    agent = agents.make("ewc", env, optimizer="sgd", lr=1e-2, ewc_lambda=1e6, seed=0)
    with pytest.warns(RuntimeWarning, match=r"lr \* ewc_lambda \* max\(summed Fisher\) = .* >= 2"):
        with pytest.raises(FloatingPointError, match="diverged before the end of task 1.*not finite.*ewc_decay"):
            clenv.run(env, agent, seed=0, progress=False)
    top = max(float(a.max()) for a in agent.fisher_sum.values())
    assert agent.penalty_stability == pytest.approx(1e-2 * 1e6 * top, rel=1e-12)


def test_ewc_at_a_stable_setting_does_not_warn(split_env):
    import warnings

    agent = agents.make("ewc", split_env, optimizer="sgd", lr=1e-2, ewc_lambda=10.0, seed=0)  # far below the bound
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        clenv.run(split_env, agent, seed=0, progress=False)
    assert 0 < agent.penalty_stability < 2
    assert agents.make("ewc", split_env, optimizer="adam", lr=1e-3)._stability_bound() is None
    assert agents.make("ewc", split_env, optimizer="sgd", momentum=0.9)._stability_bound() == pytest.approx(3.8)


# ---------------------------------------------------------------------------------------------------- S&P, H&T
def test_shrink_perturb_variants(split_env):
    sp = agents.make("shrink_perturb", split_env)
    sp.learn(_x(), _y())
    old = {n: p.detach().clone() for n, p in sp.network.named_parameters()}
    opt = sp.optimizer
    sp.on_task_switch(1)
    assert sp.optimizer is not opt
    for n, p in sp.network.named_parameters():
        noise = p.detach() - 0.4 * old[n]
        assert noise.abs().max() <= 0.1 * 1.0 + 1e-6 and noise.abs().sum() > 0  # 0.1 x a fresh default init
    ti = agents.make("shrink_perturb_to_init", split_env)
    init = {n: p.detach().clone() for n, p in ti.network.named_parameters()}
    ti.learn(_x(), _y())
    cur = {n: p.detach().clone() for n, p in ti.network.named_parameters()}
    ti.on_task_switch(1)
    for n, p in ti.network.named_parameters():
        assert torch.allclose(p.detach(), 0.2 * cur[n] + 0.8 * init[n], atol=1e-6)
    c = agents.make("shrink_perturb_continual", split_env, noise_std=1e-2, lr=0.0, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in c.network.named_parameters()}
    c.learn(_x(), _y())
    delta = torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in c.network.named_parameters()])
    assert 0.8e-2 < float(delta.std()) < 1.2e-2  # lr 0: the change is the noise alone


def test_hare_tortoise_ema_and_reset(split_env):
    a = agents.make("hare_tortoise", split_env, reset_period=3, ema_beta=0.9)
    t0 = [p.detach().clone() for p in a.tortoise.parameters()]
    a.learn(_x(), _y())
    for t, t_prev, h in zip(a.tortoise.parameters(), t0, a.network.parameters()):
        assert torch.allclose(t, 0.9 * t_prev + 0.1 * h.detach(), atol=1e-6)
    a.learn(_x(1), _y(1))
    a.learn(_x(2), _y(2))  # third step: the hare is reset to the tortoise
    for t, h in zip(a.tortoise.parameters(), a.network.parameters()):
        assert torch.equal(t, h.detach()) and t.data_ptr() != h.data_ptr()
    a.learn(_x(3), _y(3))
    assert any(not torch.equal(t, h.detach()) for t, h in zip(a.tortoise.parameters(), a.network.parameters()))


def test_activation_baselines_build_their_networks(split_env):
    import torch.nn as nn

    from agents.backbones import CReLU, FourierFeatures

    assert isinstance(agents.make("crelu", split_env).network.unit_layers[0].activation, CReLU)
    assert isinstance(agents.make("deepf", split_env).network.unit_layers[0].activation, FourierFeatures)
    pr = agents.make("prelu", split_env, weight_decay=1e-3)
    act = pr.network.unit_layers[0].activation
    assert isinstance(act, nn.PReLU) and act.weight.numel() == 100
    slope_group = [g for g in pr.optimizer.param_groups if any(p is act.weight for p in g["params"])][0]
    assert slope_group["weight_decay"] == 0.0
    assert isinstance(agents.make("layernorm", split_env).network.unit_layers[0].norm, nn.LayerNorm)
    half = agents.make("crelu", split_env, width_multiplier=0.5)
    assert half.network.unit_layers[0].num_units == 50


@pytest.mark.parametrize("name", ["cbp", "ewc", "l2init+ewc", "hare_tortoise", "er"])
def test_clone_is_independent_and_state_dict_round_trips(split_env, name):
    agent = agents.make(name, split_env)
    clenv.run(split_env, agent, seed=0, progress=False)
    x, y = _x(seed=5), _y(seed=5)
    twin = agent.clone()
    other = agents.make(name, split_env)
    other.load_state_dict(agent.state_dict())
    assert torch.equal(twin.predict(x), agent.predict(x)) and torch.equal(other.predict(x), agent.predict(x))
    twin.learn(x, y)
    assert torch.equal(other.predict(x), agent.predict(x))  # the clone trained alone
    assert not torch.equal(twin.predict(x), agent.predict(x))
    if name == "cbp":  # a clone captures its own activations (its unit ages advance)
        assert torch.all(twin.cbp_state["fc0"]["age"] == agent.cbp_state["fc0"]["age"] + 1)


def test_a_diverged_network_is_caught_at_the_next_task_switch():
    """Plain SGD at lr 1e4 blows the weights up within the first task; the switch to task 1 raises
    FloatingPointError naming the agent, the task and the parameters, instead of letting every later step score
    chance accuracy without a word; in a one-task stream the run's end raises it. A finite network passes."""
    env = gym.make("RandomLabelDigits-v0", num_tasks=3, samples_per_task=64, epochs_per_task=2)
    with pytest.raises(FloatingPointError, match=r"base: training diverged before the end of task 0: parameters "
                                                 r"body\.1\.weight.* are not finite"):
        clenv.run(env, agents.make("base", env, optimizer="sgd", lr=1e4, seed=0), seed=0, progress=False)
    one = gym.make("RandomLabelDigits-v0", num_tasks=1, samples_per_task=64, epochs_per_task=2)
    with pytest.raises(FloatingPointError, match="before the end of task 0"):  # the last task: checked at the end
        clenv.run(one, agents.make("base", one, optimizer="sgd", lr=1e4, seed=0), seed=0, progress=False)
    ok = agents.make("base", env, optimizer="sgd", lr=1e-2, seed=0)
    clenv.run(env, ok, seed=0, progress=False)
    ok.check_finite()  # nothing to say
