"""FlyLoRA (shared/specs/methods.md 5.1), NeuroLoRA and its Table 4 ablations (003_2885b6bbae2a6b4c.txt), and
EWC + LoRA: the mechanisms of agents.adapters.flylora / ewc_lora, and every agent on StyleShiftText-v0.

Small sizes throughout: layers of 16-64 inputs, r = 8 experts with k = 2 in the agents, d_h = 8, the default
2-layer 64-wide random GPT-2 (``base_model="random"``), 2 tasks of 3 steps.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import agents
import clenv
from agents.adapters.ewc_lora import sequence_fisher
from agents.adapters.flylora import ContextGate, FlyLoRALayer, orthogonality_loss, sparse_projection
from agents.adapters.layer import adapted_layers

FLY = ("flylora", "neurolora", "neurolora_no_orth", "neurolora_no_gate", "neurolora_static_gate",
       "neurolora_trainable_a")
NAMES = FLY + ("ewc_lora",)
SMALL = {**{n: dict(rank=8, k=2, gate_hidden=8, lr=0.02, gate_lr=0.05) for n in FLY},
         "ewc_lora": dict(rank=4, lr=0.02, fisher_samples=8)}


def _env(steps_per_task=3):
    return gym.make("StyleShiftText-v0", num_tasks=2, steps_per_task=steps_per_task)


def _agent(name, env, **kw):
    return agents.make(name, env, seed=0, base_model="random", **{**SMALL[name], **kw})


def _layer(gate="none", seed=0, base=None, **kw):
    torch.manual_seed(123)
    base = nn.Linear(16, 6) if base is None else base
    return FlyLoRALayer(base, kw.pop("rank", 8), kw.pop("k", 3), 16.0, gate=gate,
                        generator=torch.Generator().manual_seed(seed), **kw)


# ------------------------------------------------------------------------------------------- the projection A
def test_a_is_a_frozen_sparse_buffer_with_p_gaussian_entries_per_row():
    from transformers.pytorch_utils import Conv1D

    for base in (nn.Linear(64, 24), Conv1D(24, 64)):  # Conv1D(nf=out, nx=in)
        layer = FlyLoRALayer(base, 32, 8, 64.0, density=0.25, generator=torch.Generator().manual_seed(0))
        assert (layer.in_features, layer.out_features) == (64, 24)
        A = layer.lora_A
        assert not isinstance(A, nn.Parameter) and "lora_A" in dict(layer.named_buffers())
        assert "lora_A" in layer.state_dict() and all(n == "lora_B" for n, _ in layer.named_parameters()
                                                       if not n.startswith("base."))
        assert ((A != 0).sum(1) == 16).all()  # p = 0.25 * 64 = 64 // (32 // 8) non-zeros in every row
        assert 0.5 / 32 < float(A[A != 0].std()) < 1.5 / 32  # N(0, (1/r)^2)
        assert layer(torch.randn(5, 64)).shape == (5, 24)
    other = sparse_projection(32, 64, 0.25, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other != 0, A != 0)  # positions are random, per seed


def test_the_ternary_option_has_the_papers_probabilities():
    A = sparse_projection(64, 1024, 0.25, "ternary", generator=torch.Generator().manual_seed(0))
    assert set(A.unique().tolist()) == {-1.0, 0.0, 1.0}
    n = A.numel()
    assert abs(float((A != 0).sum()) / n - 0.25) < 0.01
    assert abs(float((A == 1).sum()) / n - 0.125) < 0.01 and abs(float((A == -1).sum()) / n - 0.125) < 0.01


# ------------------------------------------------------------------------------------------- routing
def test_only_the_top_k_experts_columns_of_b_get_a_gradient():
    layer = _layer(init_b_std=0.1)
    layer.expert_bias.copy_(torch.linspace(-0.05, 0.05, 8))  # the bias takes part in the selection
    x = torch.randn(4, 16)
    w = torch.randn(4, 6)
    score = (F.linear(x, layer.lora_A).abs() + layer.expert_bias)
    for rows in ([0], [1], [0, 1, 2, 3]):  # one token: its top-k; a batch: the union of theirs
        layer.lora_B.grad = None
        (layer(x[rows]) * w[rows]).sum().backward()
        expected = set(score[rows].topk(3, dim=-1).indices.flatten().tolist())
        got = set(torch.nonzero(layer.lora_B.grad.abs().sum(0)).flatten().tolist())
        assert got == expected
        assert len(expected) == 3 or len(rows) > 1


def test_a_large_bias_routes_every_token_to_its_expert():
    layer = _layer()
    layer.expert_bias[5] = 100.0
    layer.eval()
    x = torch.randn(10, 16)
    assert bool(layer.route(layer.project(x))[:, 5].all())


def test_the_output_is_the_scaled_update_of_the_active_experts():
    layer = _layer(init_b_std=0.1).eval()
    x = torch.randn(3, 16)
    h = F.linear(x, layer.lora_A)
    mask = torch.zeros_like(h).scatter_(1, h.abs().topk(3, dim=1).indices, 1.0)
    expected = layer.base(x) + (16.0 / 8) * (h * mask) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    assert torch.equal(_layer().eval()(x), layer.base(x))  # B = 0: exactly the base


# ------------------------------------------------------------------------------------------- the balancing bias
def test_the_bias_moves_by_the_sign_rule_in_training_forwards_only():
    layer = _layer(bias_u=0.01)
    x = torch.randn(32, 16)
    layer.eval()
    layer(x)
    with torch.no_grad():
        layer.train()(x)
    layer.statistics_frozen = True  # what an agent's auxiliary_forward sets
    layer(x)
    layer.statistics_frozen = False
    assert torch.equal(layer.expert_bias, torch.zeros(8))
    for _ in range(3):
        before = layer.expert_bias.clone()
        counts = layer.route(layer.project(x)).sum(0).float()
        layer(x)
        expected = before + 0.01 * torch.sign(counts.mean() - counts)
        assert torch.equal(layer.expert_bias, expected)
        assert not torch.equal(layer.expert_bias, before)


def test_an_agents_auxiliary_forwards_leave_the_bias_and_the_active_sets_alone():
    env = _env()
    agent = _agent("neurolora", env)
    obs, info = env.reset(seed=0)
    x = agent.preprocess(obs)
    agent.predict(x)
    with agent.auxiliary_forward():
        agent.forward(x)
    assert all(torch.equal(layer.expert_bias, torch.zeros(8)) and layer.last_active is None
               for layer in agent.adapters)
    agent.act(obs, info)  # the training forward
    assert all(layer.expert_bias.abs().sum() > 0 and layer.last_active.shape == (8 * 96, 8)
               for layer in agent.adapters)


# ------------------------------------------------------------------------------------------- the gate
def test_the_context_gate_starts_as_the_identity_exactly():
    fly, neuro = _layer("none", init_b_std=0.1), _layer("context", gate_hidden=4, init_b_std=0.1)
    static = _layer("static", init_b_std=0.1)
    # A and B are drawn before the gate (on one generator here)
    assert torch.equal(fly.lora_A, neuro.lora_A) and torch.equal(fly.lora_B, neuro.lora_B)
    assert torch.equal(fly.lora_B, static.lora_B) and bool(fly.lora_B.detach().any())
    x = torch.randn(2, 7, 16) * 3
    assert torch.equal(neuro.gate(x), torch.ones(2, 7, 8))
    assert torch.equal(static.gate(x), torch.ones(8))
    for layer in (fly, neuro, static):
        layer.eval()
    out = fly(x)
    assert torch.equal(neuro(x), out) and torch.equal(static(x), out)
    # and whole agents: NeuroLoRA's first forward is FlyLoRA's (same seed, alpha and Gaussian B)
    env = _env()
    kw = dict(alpha=16.0, init_b_std=0.1)
    a, b = _agent("flylora", env, **kw), _agent("neurolora", env, **kw)
    tokens = a.preprocess(env.reset(seed=0)[0])
    assert torch.equal(a.predict(tokens), b.predict(tokens))
    assert not torch.equal(a.predict(tokens), _agent("flylora", env).predict(tokens))  # B != 0: not the base
    # the paper's initialisation (gamma = 1, beta = 0, a drawn W2) starts near 0.5, not 1
    paper = ContextGate(16, 8, 4)
    with torch.no_grad():
        paper.gamma.fill_(1.0)
        nn.init.kaiming_uniform_(paper.w2)
    assert 0.3 < float(paper(x).mean().detach()) < 0.7


def test_the_gate_rescales_the_projection_and_trains():
    layer = _layer("context", gate_hidden=4, init_b_std=0.1)
    x = torch.randn(5, 16)
    layer(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in (layer.gate.w2, layer.gate.gamma, layer.gate.beta))
    assert float(layer.gate.w2.grad.abs().sum()) > 0 and float(layer.gate.w1.grad.abs().sum()) == 0  # W2 = 0 first
    with torch.no_grad():
        layer.gate.beta.fill_(0.5)
    torch.testing.assert_close(layer.project(x), F.linear(x, layer.lora_A) * 1.5)


# ------------------------------------------------------------------------------------------- orthogonality loss
def _orth_loop(B, active):
    cos = F.normalize(B, dim=0)
    total = 0.0
    for a in active:
        on, off = torch.nonzero(a).flatten(), torch.nonzero(~a).flatten()
        total += sum(float(cos[:, i] @ cos[:, j]) ** 2 for i in on for j in off) / (len(on) * len(off))
    return total / len(active)


def test_the_orthogonality_loss_is_eq_7_averaged_over_tokens():
    B = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # cos^2: (0, 1) = 0.5, (0, 2) = 0, (1, 2) = 0.5
    one = torch.tensor([[True, False, False], [False, True, False]])
    # token 0: (0.5 + 0) / 2; token 1: (0.5 + 0.5) / 2
    torch.testing.assert_close(orthogonality_loss(B, one), torch.tensor(0.375))
    torch.testing.assert_close(orthogonality_loss(B, torch.tensor([[True, True, False]])), torch.tensor(0.25))
    assert float(orthogonality_loss(torch.eye(4)[:, :3] * 7, one)) == 0.0  # orthogonal columns
    g = torch.Generator().manual_seed(0)
    B = torch.randn(10, 8, generator=g)
    active = torch.zeros(6, 8, dtype=torch.bool).scatter_(1, torch.rand(6, 8, generator=g).topk(3, 1).indices, True)
    value = orthogonality_loss(B, active)
    assert float(value) > 0
    assert abs(float(value) - _orth_loop(B, active)) < 1e-6


def test_the_orthogonality_loss_is_zero_without_nan_at_b_zero():
    active = torch.tensor([[True, False, True, False]])
    for B in (torch.zeros(5, 4), torch.cat([torch.zeros(5, 1), torch.randn(5, 3)], 1)):
        B.requires_grad_(True)
        loss = orthogonality_loss(B, active)
        loss.backward()
        assert torch.isfinite(B.grad).all()
        if not B.detach().any():
            assert float(loss.detach()) == 0.0 and not B.grad.any()


def test_the_agents_regularizer_adds_lambda_times_the_layers_mean_orth_loss():
    env = _env()
    agent = _agent("neurolora", env, init_b_std=0.1)
    obs, info = env.reset(seed=0)
    logits = agent.forward(agent.preprocess(obs))
    y = agent.targets(env.step(agent.to_action(logits))[4]["labels"])
    orth = torch.stack([orthogonality_loss(layer.lora_B, layer.last_active) for layer in agent.adapters]).mean()
    assert float(orth.detach()) > 0
    torch.testing.assert_close(agent.loss(logits, y), agent.task_loss(logits, y) + 0.1 * orth)
    no_orth = _agent("neurolora_no_orth", _env(), init_b_std=0.1)
    assert float(no_orth.regularizer()) == 0.0


# ------------------------------------------------------------------------------------------- the agents
def _base_parameters(agent):
    return {n: p.detach().clone() for n, p in agent.network.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("name", NAMES)
def test_every_new_agent_runs_on_the_style_stream_and_trains_only_its_adapters(name):
    env = _env()
    agent = _agent(name, env)
    frozen = _base_parameters(agent)
    buffers = {n: b.clone() for n, b in agent.network.named_buffers() if n.endswith("lora_A")}
    trainable = {n for n, p in agent.network.named_parameters() if p.requires_grad}
    allowed = (".lora_B",) + (() if name in ("neurolora_no_gate", "flylora") else (".gate.",)) + (
        (".lora_A",) if name in ("ewc_lora", "neurolora_trainable_a") else ())
    assert trainable and all(any(a in n for a in allowed) for n in trainable), trainable
    assert {id(p) for g in agent.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in agent.network.parameters() if p.requires_grad}
    result = clenv.run(env, agent, seed=0, progress=False)
    assert result.steps == agent.num_updates == 6 and np.isfinite(result.step_reward).all()
    after = dict(agent.network.named_parameters())
    for n, p in frozen.items():
        assert torch.equal(p, after[n]), n  # the frozen LM is bit-identical after training
    for n, b in buffers.items():
        assert torch.equal(b, agent.network.get_buffer(n)), n  # and so is a frozen A
    fresh = agent.fresh().network
    assert [n for n in trainable if not torch.equal(after[n].detach(), fresh.get_parameter(n))]  # adapters trained
    if name == "neurolora_trainable_a":
        layer = next(iter(adapted_layers(agent.network, FlyLoRALayer).values()))
        assert isinstance(layer.lora_A, nn.Parameter)
        assert not torch.equal(layer.lora_A, next(iter(adapted_layers(fresh, FlyLoRALayer).values())).lora_A)


@pytest.mark.parametrize("name", NAMES)
def test_every_new_agent_resumes_bit_identically(name, tmp_path):
    def fresh():
        env = _env(steps_per_task=4)  # 8 steps; checkpoint at 3, stop at 5: the resume crosses the switch at 4
        return env, _agent(name, env)

    env_a, agent_a = fresh()
    full = clenv.run(env_a, agent_a, seed=7, progress=False)
    env_b, agent_b = fresh()
    ckpt = clenv.Checkpoint(tmp_path / "ckpt", every=3)
    clenv.run(env_b, agent_b, seed=7, callbacks=[ckpt], total_steps=5, progress=False)
    env_c, agent_c = fresh()
    resumed = ckpt.resume(env_c, agent_c, seed=7, callbacks=[ckpt], progress=False)
    np.testing.assert_array_equal(resumed.step_reward, full.step_reward)
    net_a = agent_a.state_dict()["network"]
    for k, v in agent_c.state_dict()["network"].items():
        assert torch.equal(v, net_a[k]), k  # B, the gate, A and the balancing bias d
    if name == "ewc_lora":
        assert agent_c.tasks_consolidated == 1
        for k, v in agent_a.fisher_sum.items():
            assert torch.equal(agent_c.fisher_sum[k], v), k


def test_defaults_are_the_papers():
    env = _env()
    fly, neuro = agents.make("flylora", env, base_model="random"), agents.make("neurolora", env, base_model="random")
    h = neuro.hparams
    assert (h["rank"], h["k"], h["density"], h["gate"], h["gate_hidden"], h["orth_lambda"], h["alpha"]) == (
        32, 8, 0.25, "context", 64, 0.1, 16.0)
    assert (h["optimizer"], h["lr"], h["gate_lr"], h["betas"], h["weight_decay"]) == (
        "adamw", 2e-4, 5e-4, (0.9, 0.95), 0.01)
    assert [g["lr"] for g in neuro.optimizer.param_groups] == [2e-4, 5e-4]
    assert all(g["weight_decay"] == 0.01 and g["betas"] == (0.9, 0.95) for g in neuro.optimizer.param_groups)
    assert h["target_modules"] == ("c_attn",) and h["reset_optimizer_on_switch"] is True
    layer = neuro.adapters[0]
    assert (layer.rank, layer.k, layer.scaling, layer.gate_kind, layer.a_init) == (32, 8, 0.5, "context", "gaussian")
    assert layer.MERGE_SPACE == "parameters" and len(neuro.adapters) == 2
    f = fly.hparams
    assert (f["rank"], f["k"], f["gate"], f["orth_lambda"], f["optimizer"], f["lr"], f["bias_u"]) == (
        32, 8, "none", 0.0, "adamw", 3e-4, 1e-3)
    assert fly.adapters[0].scaling == 2.0 and len(fly.optimizer.param_groups) == 1  # alpha = 2 r
    assert agents.make("neurolora_no_orth", env, base_model="random").hparams["orth_lambda"] == 0.0
    assert agents.make("neurolora_no_gate", env, base_model="random").adapters[0].gate is None
    assert agents.make("neurolora_static_gate", env, base_model="random").adapters[0].gate_kind == "static"
    assert agents.make("neurolora_trainable_a", env, base_model="random").adapters[0].trainable_a
    e = agents.make("ewc_lora", env, base_model="random").hparams
    assert (e["rank"], e["optimizer"], e["lr"], e["ewc_lambda"], e["fisher_samples"]) == (8, "adam", 5e-4, 10.0, 64)


def test_bad_settings_are_refused_with_the_fix():
    env = _env()
    with pytest.raises(ValueError, match="components must be 1"):
        _agent("flylora", env, components=4)
    with pytest.raises(ValueError, match="at most rank=8"):
        _agent("flylora", env, k=9)
    with pytest.raises(ValueError, match="gate must be one of"):
        _agent("flylora", env, gate="dynamic")
    with pytest.raises(ValueError, match="a_init must be one of"):
        _agent("flylora", env, a_init="uniform")
    agent = _agent("flylora", env)
    with pytest.raises(ValueError, match="takes no component mask"):
        agent.forward_with_mask(torch.zeros(1, 96, dtype=torch.int64), torch.ones(1))
    with pytest.raises(ValueError, match="needs a language stream"):
        agents.make("neurolora", gym.make("RandomLabelDigits-v0"))


# ------------------------------------------------------------------------------------------- EWC + LoRA
def test_the_language_fisher_is_per_scored_token_and_ignores_minus_100():
    torch.manual_seed(0)
    emb, head = nn.Embedding(5, 4), nn.Linear(4, 5)
    params = {"head.weight": head.weight}

    def forward(tokens):
        return head(emb(tokens))

    x = torch.tensor([[1, 2, 3], [4, 0, 2]])
    y = torch.tensor([[-100, 3, -100], [-100, -100, -100]])  # one scored token in all
    fisher = sequence_fisher(forward, params, x, y, labels="empirical")
    logp = F.log_softmax(forward(x[:1])[0, 1], -1)[3]
    (g,) = torch.autograd.grad(logp, [head.weight])
    torch.testing.assert_close(fisher["head.weight"], g.pow(2))
    # two scored tokens in two sequences: the mean of their squared gradients (T = 2)
    y2 = torch.tensor([[-100, 3, -100], [-100, 1, -100]])
    grads = [torch.autograd.grad(F.log_softmax(forward(x[s:s + 1])[0, 1], -1)[c], [head.weight])[0]
             for s, c in ((0, 3), (1, 1))]
    torch.testing.assert_close(sequence_fisher(forward, params, x, y2, labels="empirical")["head.weight"],
                               (grads[0].pow(2) + grads[1].pow(2)) / 2)
    # two scored tokens of one sequence: the square of their summed gradient, over T = 2
    y3 = torch.tensor([[-100, 3, 1], [-100, -100, -100]])
    logits = forward(x[:1])[0]
    (g,) = torch.autograd.grad(F.log_softmax(logits[1], -1)[3] + F.log_softmax(logits[2], -1)[1], [head.weight])
    torch.testing.assert_close(sequence_fisher(forward, params, x, y3, labels="empirical")["head.weight"],
                               g.pow(2) / 2)
    sampled = sequence_fisher(forward, params, x, y2, generator=torch.Generator().manual_seed(0))
    assert sampled["head.weight"].shape == (5, 4) and float(sampled["head.weight"].sum()) > 0


def test_ewc_lora_consolidates_on_the_lora_parameters_and_penalises_moving_them():
    env = _env()
    agent = _agent("ewc_lora", env)
    clenv.run(env, agent, seed=0, progress=False)
    names = {n for n, p in agent.network.named_parameters() if p.requires_grad}
    assert agent.tasks_consolidated == 1 and set(agent.fisher_sum) == names
    assert all(n.endswith((".lora_A", ".lora_B")) for n in names)
    assert all(bool((f >= 0).all()) for f in agent.fisher_sum.values())
    assert float(agent.regularizer().detach()) > 0  # task 1 moved the adapters away from task 0's anchor
