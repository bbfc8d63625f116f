"""The adapter agents on a frozen causal LM (002_b6d509c9f1140765.txt, Section 2, Experiment 2, Appendices D and E):
plain LoRA, LoRA-Naive, LoRA-FixedMask, LoRA-FTN and LoRA-Bank on the StyleShiftText-v0 stream.

Small sizes throughout (the base is ``base_model="random"``, a 2-layer, 64-wide random GPT-2, so no test pretrains
the default base of tests/test_base_lm.py; pools of H = 16 on 4 x 4, k = 4, r = 2;
2 tasks of 3 or 4 steps); Appendix E's sizes are checked as defaults only.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from agents.adapters import LoRALayer, adapted_layers

POOL = dict(components=16, rank=2, k=4, mask_steps=2, lr=0.05)  # 4 x 4 grid, 4 disjoint blocks of 4
SMALL = {"lora": dict(lr=0.05), "lora_naive": POOL, "lora_fixed_mask": POOL, "lora_ftn": POOL,
         "lora_bank": dict(components=4, rank=2, lr=0.05)}
EVAL = dict(masks=True, eval_samples=8, support_samples=8)


def _env(steps_per_task=3, **kw):
    return gym.make("StyleShiftText-v0", num_tasks=2, steps_per_task=steps_per_task, **kw)


def _agent(name, env, **kw):
    return agents.make(name, env, seed=0, **{"base_model": "random", **SMALL[name], **kw})


def _run(name, **kw):
    env = _env()
    agent = _agent(name, env, **kw)
    return agent, clenv.run(env, agent, seed=0, evaluation=clenv.Evaluation(**EVAL), progress=False)


def _base_parameters(agent) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in agent.network.named_parameters() if ".lora_" not in n}


def _batch(env, task, n=8, split="train"):
    u = env.unwrapped
    if u.stream_seed is None:
        env.reset(seed=0)
    ((x, y),) = u.test_batches(task, batch_size=n, split=split, max_samples=n)
    return x, y


# ------------------------------------------------------------------------------------------- every agent
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_adapter_agent_runs_on_the_style_stream_and_trains_only_its_adapters(name):
    env = _env()
    agent = _agent(name, env)
    base = _base_parameters(agent)
    trainable = {n for n, p in agent.network.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert len(adapted_layers(agent.network)) == 2  # each block's c_attn
    assert {id(p) for p in agent.optimizer.param_groups[0]["params"]} == {
        id(p) for p in agent.network.parameters() if p.requires_grad}
    result = clenv.run(env, agent, seed=0, evaluation=clenv.Evaluation(**EVAL), progress=False)
    assert result.steps == agent.num_updates == 6
    m = result.metrics
    for key in ("ce", "fm", "ce_stored", "fm_stored"):
        assert np.isfinite(m[key]), key
    assert 0 < m["ce"] < 10  # nats per token over a 260-token vocabulary (ln 260 = 5.56)
    after = dict(agent.network.named_parameters())
    for n, p in base.items():
        assert torch.equal(p, after[n]), n  # the frozen LM is bit-identical after training
    moved = [n for n in trainable if not torch.equal(after[n].detach(), agent.fresh().network.get_parameter(n))]
    assert moved  # and the adapters did train
    assert all(layer.mask is None for layer in adapted_layers(agent.network).values())


def test_actions_are_next_token_ids_or_logits():
    for action_type in ("labels", "logits"):
        env = _env(action_type=action_type)
        agent = _agent("lora", env)
        obs, info = env.reset(seed=0)
        action = agent.act(obs, info)
        if action_type == "labels":
            assert action.shape == (8, 96) and action.dtype == np.int64
        else:
            assert action.shape == (8, 96, 260) and action.dtype == np.float32
        _, reward, *_ = env.step(action)
        assert 0.0 <= reward <= 1.0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_adapter_agents_refuse_a_stream_that_is_not_a_language_one(name):
    with pytest.raises(ValueError, match=rf"{name} needs a language stream \(env.task_type == 'language'\), got "
                                         r"task_type='classification' from RandomLabelDigits-v0"):
        agents.make(name, gym.make("RandomLabelDigits-v0"))


def test_the_task_loss_is_per_token_cross_entropy_over_the_scored_positions():
    env = _env()
    agent = _agent("lora", env)
    x, y = _batch(env, 0)
    logits = agent.predict(agent.preprocess(x))
    assert logits.shape == (8, 96, 260)
    scored = y != -100
    manual = -torch.log_softmax(logits, -1).gather(-1, y.clamp_min(0)[..., None])[..., 0][scored].mean()
    torch.testing.assert_close(agent.task_loss(logits, y), manual)


def test_trimming_the_unscored_tail_changes_no_scored_logit_and_no_update():
    env = _env()
    x, y = _batch(env, 0)
    trim, full = _agent("lora", env), _agent("lora", env, trim_unscored=False)
    x, y = trim.preprocess(x), trim.targets(y)
    xt, yt, _ = trim.trimmed(x, y)
    keep = int(torch.nonzero((y != -100).any(0))[-1]) + 1
    assert xt.shape == (8, keep) and keep < 96 and torch.equal(yt, y[:, :keep])
    with torch.no_grad():  # causal: the scored positions' logits do not see the cut tail (float32 rounding only)
        torch.testing.assert_close(trim.predict(xt), trim.predict(x)[:, :keep], rtol=0, atol=1e-5)
    for _ in range(3):
        lt, lf = trim.learn(x, y), full.learn(x, y)
        torch.testing.assert_close(lt, lf, rtol=0, atol=1e-5)
    # Adam divides by sqrt(v): a gradient entry near zero turns a float32 rounding difference into a visible step
    # difference (1.3e-6 measured on an AVX-512 machine). A real difference in the update (a cut position that was
    # scored, another token count) moves entries by about a step, lr = 5e-4, 50x this tolerance.
    for (n, a), b in zip(trim.network.named_parameters(), full.network.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=n)


def test_a_users_own_base_model_is_frozen_and_adapted():
    class Tiny(torch.nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.emb = torch.nn.Embedding(spec["num_outputs"], 16)
            self.c_attn = torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, spec["num_outputs"])

        def forward(self, x):
            return self.head(torch.relu(self.c_attn(self.emb(x))))

    env = _env()
    agent = _agent("lora", env, base_model=Tiny)
    assert isinstance(agent.network.c_attn, LoRALayer) and agent.network.c_attn.rank == 8
    assert {n for n, p in agent.network.named_parameters() if p.requires_grad} == {"c_attn.lora_A", "c_attn.lora_B"}
    base = _base_parameters(agent)
    clenv.run(env, agent, seed=0, progress=False)
    assert all(torch.equal(p, dict(agent.network.named_parameters())[n]) for n, p in base.items())


def test_lora_naive_is_one_shared_lora_of_rank_h_times_r():
    # the all-ones pool of H rank-r components computes what a plain LoRA of rank H r does, step for step
    env_a, env_b = _env(), _env()
    naive = _agent("lora_naive", env_a)
    plain = _agent("lora", env_b, rank=POOL["components"] * POOL["rank"])
    ra = clenv.run(env_a, naive, seed=0, progress=False)
    rb = clenv.run(env_b, plain, seed=0, progress=False)
    np.testing.assert_array_equal(ra.step_reward, rb.step_reward)
    for (na, la), (nb, lb) in zip(adapted_layers(naive.network).items(), adapted_layers(plain.network).items()):
        assert la.components == 16 and lb.components == 1
        torch.testing.assert_close(la.lora_B, lb.lora_B, rtol=1e-5, atol=1e-7)
    assert bool((naive.mask == 1).all()) and bool((naive.stored_mask(1) == 1).all())


# ------------------------------------------------------------------------------------------- LoRA-FixedMask
def test_lora_fixed_mask_forgets_exactly_nothing():
    _, r = _run("lora_fixed_mask")
    m, stored = r.metrics, r.records["perf_stored"]
    assert m["fm_stored"] == 0.0 and m["fm"] == 0.0
    assert stored[1, 0] == stored[0, 0]  # task 0's stored-protocol CE: the same float after task 1
    assert m["mask_overlap"] == 0.0
    assert (r.records["masks_stored"].sum(1) == 4).all()


def test_lora_fixed_mask_forgets_when_adam_moments_cross_the_boundary():
    # Remark 2.2 / Appendix D: carried moments move task 0's components while task 1 trains
    _, r = _run("lora_fixed_mask", reset_optimizer_on_switch=False)
    assert r.metrics["fm_stored"] != 0.0
    assert r.records["perf_stored"][1, 0] != r.records["perf_stored"][0, 0]


def test_a_training_step_on_task_1_leaves_task_0s_components_bit_identical():
    # Theorem D.1 at the agent level: task 0's block (rows of A, columns of B in every adapted layer) does not move
    env = _env()
    agent = _agent("lora_fixed_mask", env)
    agent.on_task_switch(0)
    x0, y0 = _batch(env, 0)
    for _ in range(3):
        agent.learn(agent.preprocess(x0), agent.targets(y0))
    agent.on_task_switch(1)
    kr = POOL["k"] * POOL["rank"]
    layers = list(adapted_layers(agent.network).values())
    before = [(la.lora_A.detach().clone(), la.lora_B.detach().clone()) for la in layers]
    x1, y1 = _batch(env, 1)
    agent.learn(agent.preprocess(x1), agent.targets(y1))
    for la, (a, b) in zip(layers, before):
        assert torch.equal(la.lora_A[:kr], a[:kr]) and torch.equal(la.lora_B[:, :kr], b[:, :kr])
        assert not torch.equal(la.lora_B[:, kr:2 * kr], b[:, kr:2 * kr])  # task 1's block trained
        assert torch.equal(la.lora_A[2 * kr:], a[2 * kr:])  # and no other block
    assert torch.equal(agent.stored_mask(1), agent.mask) and int(agent.mask[4:8].sum()) == 4


# ------------------------------------------------------------------------------------------- LoRA-FTN
def test_lora_ftn_trains_each_batch_through_the_configurers_k_hot_mask_on_every_layer():
    env = _env()
    agent = _agent("lora_ftn", env)
    agent.on_task_switch(0)
    x, y = _batch(env, 0)
    x, y = agent.preprocess(x), agent.targets(y)
    # the configurer cold-started on this batch, on the LM loss with the relaxed mask on every layer
    expected = agent.configurer(lambda m: agent.task_loss(agent.forward_with_mask(x, m), y), agent.device)
    layers = list(adapted_layers(agent.network).values())
    seen: list[list[torch.Tensor]] = []
    hooks = [la.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, mod.mask.detach().clone())))
             for i, la in enumerate(layers)]
    try:
        agent.learn(x, y)
    finally:
        for h in hooks:
            h.remove()
    training = seen[-len(layers):]  # the training forward, after the configurer's
    assert [i for i, _ in training] == list(range(len(layers)))
    for _, m in training:
        assert torch.equal(m, agent.mask) and set(m.unique().tolist()) == {0.0, 1.0} and int(m.sum()) == 4
    assert torch.equal(agent.mask, expected) and torch.equal(agent.stored_mask(0), expected)
    relaxed = [m for _, m in seen[:-len(layers)]]
    assert len(relaxed) == POOL["mask_steps"] * len(layers)  # S proposal passes, every layer routed
    assert all(((m > 0) & (m < 1)).all() for m in relaxed)
    # no relaxed mask is left on the layers: the agent deep-copies
    assert all(la.mask is None for la in layers)
    agent.clone()


def test_lora_ftn_recovery_is_the_cold_configurer_on_the_support_batch_without_the_task_id():
    env = _env()
    agent = _agent("lora_ftn", env)
    clenv.run(env, agent, seed=0, progress=False)
    x, y = _batch(env, 0, split="support")
    x, y = agent.preprocess(x), agent.targets(y)
    adapters = {n: p.detach().clone() for n, p in agent.network.named_parameters() if p.requires_grad}
    recovered = agent.recover_mask(x, y)
    assert int(recovered.sum()) == 4 and set(recovered.unique().tolist()) == {0.0, 1.0}
    # it depends on the batch only: the same mask whatever task the agent believes it is in, ids hidden or not
    for task_id in (0, None):
        agent.on_task_switch(task_id)
        assert torch.equal(agent.recover_mask(x, y), recovered)
    agent.task_id, agent.task_key = 12345, 12345
    assert torch.equal(agent.recover_mask(x, y), recovered)
    agent.network.eval()
    xt, yt, _ = agent.trimmed(x, y)  # recovery runs on the batch cut after its last scored position
    with torch.no_grad():
        cold = agent.configurer(lambda m: agent.task_loss(agent.forward_with_mask(xt, m), yt), agent.device)
    assert torch.equal(cold, recovered)
    assert all(torch.equal(p, dict(agent.network.named_parameters())[n]) for n, p in adapters.items())


def test_lora_ftn_reports_both_protocols_and_the_mask_diagnostics():
    _, r = _run("lora_ftn")
    m, rec = r.metrics, r.records
    for key in ("ce", "fm", "ce_stored", "fm_stored", "ce_prior", "ce_stored_prior", "recall_error",
                "mask_overlap", "mask_recall"):
        assert np.isfinite(m[key]), key
    assert rec["masks_stored"].shape == (2, 16) and (rec["masks_stored"].sum(1) == 4).all()
    assert int(rec["mask_grid"]) == 4


def test_lora_ftn_resumes_bit_identically(tmp_path):
    def fresh():
        env = _env(steps_per_task=4)  # 8 steps; checkpoint at 3, stop at 5: the resume crosses the switch at 4
        return env, _agent("lora_ftn", env)

    env_a, agent_a = fresh()
    full = clenv.run(env_a, agent_a, seed=7, progress=False)
    assert full.steps == 8 and len(set(full.step_reward.tolist())) > 2
    env_b, agent_b = fresh()
    ckpt = clenv.Checkpoint(tmp_path / "ckpt", every=3)
    part = clenv.run(env_b, agent_b, seed=7, callbacks=[ckpt], total_steps=5, progress=False)
    assert part.steps == 5
    env_c, agent_c = fresh()
    resumed = ckpt.resume(env_c, agent_c, seed=7, callbacks=[ckpt], progress=False)
    np.testing.assert_array_equal(resumed.step_reward, full.step_reward)
    net_a = agent_a.state_dict()["network"]
    for k, v in agent_c.state_dict()["network"].items():
        assert torch.equal(v, net_a[k]), k
    for t in (0, 1):
        assert torch.equal(agent_c.stored_mask(t), agent_a.stored_mask(t))


# ------------------------------------------------------------------------------------------- LoRA-Bank
def test_lora_bank_routes_by_the_argmin_of_the_loss_over_one_hot_masks():
    env = _env()
    agent = _agent("lora_bank", env)
    layer = next(iter(adapted_layers(agent.network).values()))
    assert layer.components == 4 and float(layer.lora_B.std()) > 0  # B starts Gaussian, not zero
    agent.on_task_switch(0)
    x, y = _batch(env, 0)
    x, y = agent.preprocess(x), agent.targets(y)
    losses = []
    for j in range(4):
        with torch.no_grad():
            losses.append(float(agent.task_loss(agent.forward_with_mask(x, torch.eye(4)[j]), y)))
    agent.learn(x, y)
    assert torch.equal(agent.mask, torch.eye(4)[int(np.argmin(losses))])
    xs, ys = _batch(env, 0, split="support")
    xs, ys = agent.preprocess(xs), agent.targets(ys)
    support = [agent.support_loss(xs, ys, torch.eye(4)[j]) for j in range(4)]
    assert torch.equal(agent.recover_mask(xs, ys), torch.eye(4)[int(np.argmin(support))])


# ------------------------------------------------------------------------------------------- defaults
def test_defaults_are_appendix_es():
    env = _env()
    assert agents.resolve("lora_ftn", env)[1]["base_model"] == "pretrained"  # the in-repo base (test_base_lm.py)
    make = lambda name: agents.make(name, env, base_model="random")  # noqa: E731 - the sizes, not the base
    ftn = make("lora_ftn")
    h = ftn.hparams
    assert (h["components"], h["rank"], h["k"], h["optimizer"], h["lr"], h["weight_decay"]) == (
        576, 4, 72, "adam", 5e-4, 0.0)
    assert h["target_modules"] == ("c_attn",) and h["reset_optimizer_on_switch"] is True
    c = ftn.configurer
    assert (c.steps, c.lr, c.kernel, c.smoothing_steps, c.side) == (15, 0.5, 3, 15, 24)
    layer = next(iter(adapted_layers(ftn.network).values()))
    assert (layer.components, layer.rank, layer.in_features, layer.out_features) == (576, 4, 64, 192)
    gpt2 = ftn.network.config
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.n_head, gpt2.vocab_size, gpt2.n_positions) == (2, 64, 4, 260, 96)
    assert make("lora_fixed_mask").hparams["k"] == 72
    assert make("lora_naive").hparams["components"] == 576
    bank = make("lora_bank").hparams
    assert (bank["components"], bank["rank"]) == (8, 288) and bank["init_b_std"] > 0
    assert bank["components"] * bank["rank"] == h["components"] * h["rank"]  # matched total capacity
    assert make("lora").hparams["rank"] == 8


# ------------------------------------------------------------------------------------------- benchmark
def test_adapter_step_benchmark_ends_with_its_ratios_and_orders_the_flops():
    """benchmarks/adapter_step.py runs one step of each contender and ends with ``flylora_ratio=`` and ``ratio=``;
    the pool of 576 rank-4 components costs several times plain rank-8 LoRA's matmul FLOPs, the routed rank-32
    FlyLoRA about the same."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "adapter_step.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "1", "--agents", "flylora,neurolora,lora_naive"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"flylora_ratio=\d+\.\d{3}", lines[-2]) and re.fullmatch(r"ratio=\d+\.\d{3}", lines[-1])
    flops = {m[1]: float(m[2]) for m in re.finditer(r"^(\w+) .* \(x([\d.]+)\)$", out.stdout, re.M)}
    assert list(flops) == ["lora", "flylora", "neurolora", "lora_naive"] and flops["lora"] == 1.0
    assert flops["lora_naive"] > 4 and 0.8 < flops["flylora"] < 1.5 and flops["neurolora"] > flops["flylora"]
    bad = subprocess.run([sys.executable, str(script), "--agents", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown agent" in bad.stderr


def test_the_style_shift_example_runs_and_merges(capsys):
    """examples/adapters_style_shift.py end to end at a tiny size (random base, 2 tasks of 3 steps): both sequential
    runs report ACC and BWT, and every task gets an alone and a merged accuracy."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "adapters_style_shift.py"
    spec = importlib.util.spec_from_file_location("adapters_style_shift", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--tasks", "2", "--steps", "3", "--base-model", "random"])
    out = capsys.readouterr().out
    assert out.count(" BWT ") == 2 and "lora " in out and "neurolora " in out
    assert [line.split()[0] for line in out.splitlines() if " alone " in line] == ["upper", "lower"]
