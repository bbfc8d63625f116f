"""Associative memories of task adapters (agents.adapters.memory; issue 16, 004_49f6201e6e679480.txt Sections 3-4):
the exact store, the Modern Hopfield memory, the BayesPCN memory, the adapter <-> vector layout, and bad input.

Small sizes throughout: vectors of at most a few hundred entries, BayesPCN's load test on a 16-wide network with 200
read steps (the paper's 256 wide / 500 steps are used where only a few pairs are written), the adapter agents on
``base_model="random"`` (a 2-layer, 64-wide random GPT-2).
"""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

import agents
from agents.adapters.memory import (AssociativeMemory, BayesPCNMemory, ExactMemory, HopfieldMemory, adapter_key,
                                    adapter_layout, adapter_vector, install_adapter_vector, key_length,
                                    read_adapter, write_adapter)


def _pairs(n, key_dim=8, value_dim=24, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, key_dim, generator=g, dtype=dtype) * scale
    values = torch.randn(n, value_dim, generator=g, dtype=dtype) * scale
    return keys, values


def _tiny_bayespcn(**kw):
    return BayesPCNMemory(**{"hidden": 16, "read_steps": 200, **kw})


# ------------------------------------------------------------------------------------------------ exact store
def test_exact_store_recall_is_bit_identical_and_so_d_is_zero():
    keys, values = _pairs(6, dtype=torch.float32)
    memory = ExactMemory()
    for k, v in zip(keys, values):
        memory.write(k, v)
    for k, v in zip(keys, values):
        assert torch.equal(memory.read(k), v)
    assert torch.equal(memory.read_many(keys), values)
    # a perturbed query is answered with the nearest key's value, bit for bit
    assert torch.equal(memory.read(keys[2] + 1e-3), values[2])
    # the returned value is a copy: changing it does not change the memory
    out = memory.read(keys[0])
    out += 1
    assert torch.equal(memory.read(keys[0]), values[0])
    # a key written twice: the latest write wins (a dict's overwrite)
    memory.write(keys[1], values[4])
    assert torch.equal(memory.read(keys[1]), values[4])
    assert memory.memory_size_bytes() == memory.written_bytes == 7 * (8 + 24) * 4


def test_sequential_writes_keep_every_earlier_value_retrievable():
    keys, values = _pairs(12, key_dim=64)
    exact, hopfield = ExactMemory(), HopfieldMemory()
    for n, (k, v) in enumerate(zip(keys, values), start=1):
        exact.write(k, v)
        hopfield.write(k, v)
        assert torch.equal(exact.read_many(keys[:n]), values[:n])
        # random 64-dimensional keys (cosines below about 0.5): every recall within 1e-3 of its own value
        torch.testing.assert_close(hopfield.read_many(keys[:n]), values[:n], rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------------ Hopfield
def test_hopfield_read_is_the_softmax_retrieval_rule_exactly():
    keys, values = _pairs(5, seed=1)
    query = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for normalize in ("l2", "none"):
        memory = HopfieldMemory(beta=25.0, normalize=normalize)
        for k, v in zip(keys, values):
            memory.write(k, v)
        K, q = keys.T, query  # K: key_dim x N, one stored key per column, as the paper writes it
        if normalize == "l2":
            K, q = K / K.norm(dim=0, keepdim=True), q / q.norm()
        expected = values.T @ torch.softmax(25.0 * (K.T @ q), dim=0)  # V softmax(beta K^T q)
        torch.testing.assert_close(memory.read(query), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("spread, dtype", [(0.8, torch.float64), (1.0, torch.float64), (1.0, torch.float32)])
def test_hopfield_recall_of_a_stored_key_is_within_the_bound_that_beta_and_the_key_gap_give(spread, dtype):
    """The bound. Keys k_i scaled to unit norm; s_ij = <k_i, k_j>, so s_ii = 1, and the gap
    delta_i = 1 - max_{j != i} s_ij. The read is sum_j p_j v_j with p = softmax(beta s_i.), so

        read(k_i) - v_i = sum_{j != i} p_j (v_j - v_i),   ||read(k_i) - v_i|| <= (1 - p_i) max_j ||v_j - v_i||,

    and 1 - p_i = sum_{j != i} e^{beta (s_ij - 1)} / sum_j e^{beta (s_ij - 1)} <= sum_{j != i} e^{-beta (1 - s_ij)}
    <= (N - 1) exp(-beta delta_i). The tolerance is therefore (N - 1) exp(-beta delta_i) max_j ||v_j - v_i||, plus
    the rounding of the values' dtype (64 eps ||v||_max; the arithmetic is float64, the result is cast).

    The keys share a common direction (k_i = c + spread * e_i), so the gaps are small (0.1-0.3) and the bound is
    far from trivial: the test checks that recall is not exact (the other patterns do get weight) and that the bound
    still separates every value from its neighbours."""
    g = torch.Generator().manual_seed(3)
    n, key_dim, beta = 10, 16, 25.0
    common = torch.randn(key_dim, generator=g, dtype=torch.float64)
    common /= common.norm()
    raw = common + spread * torch.randn(n, key_dim, generator=g, dtype=torch.float64) / math.sqrt(key_dim)
    keys = raw.to(dtype)
    values = torch.randn(n, 32, generator=g, dtype=torch.float64).to(dtype)
    memory = HopfieldMemory(beta=beta)
    for k, v in zip(keys, values):
        memory.write(k, v)
    unit = keys.double() / keys.double().norm(dim=1, keepdim=True)
    similarity = unit @ unit.T
    v64 = values.double()
    rounding = 64 * torch.finfo(dtype).eps * v64.norm(dim=1).max().item()
    errors, bounds = [], []
    for i in range(n):
        delta = 1.0 - torch.cat([similarity[i, :i], similarity[i, i + 1:]]).max().item()
        spread_v = (v64 - v64[i]).norm(dim=1).max().item()
        bound = (n - 1) * math.exp(-beta * delta) * spread_v + rounding
        error = (memory.read(keys[i]).double() - v64[i]).norm().item()
        assert error <= bound, (i, error, bound)
        errors.append(error)
        bounds.append(bound)
    assert max(errors) > 1e-6  # blending happens: the bound is tested, not a trivially exact recall
    nearest_other = min((v64[i] - v64[j]).norm().item() for i in range(n) for j in range(n) if i != j)
    assert max(bounds) < nearest_other / 2  # and the bound is useful: every recall stays nearest its own value


def test_hopfield_memory_holds_keys_and_values_as_matrices():
    keys, values = _pairs(9, dtype=torch.float32)
    memory = HopfieldMemory()
    for k, v in zip(keys, values):
        memory.write(k, v)
    assert memory.memory_size_bytes() == memory.written_bytes == 9 * (8 + 24) * 4
    assert memory.read(keys[0]).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ BayesPCN
def test_bayespcn_hand_written_gradient_equals_autograd():
    for rule in ("bayes", "ml"):
        memory = _tiny_bayespcn(write_rule=rule, read_steps=20)
        keys, values = _pairs(3)
        for k, v in zip(keys, values):
            memory.write(k, v)
        g = torch.Generator().manual_seed(5)
        acts = [torch.randn(2, 32, generator=g, dtype=torch.float64)] + [
            0.3 * torch.randn(2, 16, generator=g, dtype=torch.float64) for _ in range(3)]
        leaves = [a.clone().requires_grad_(True) for a in acts]
        energy = memory.energy(leaves, with_uncertainty=rule == "bayes")
        expected = torch.autograd.grad(energy.sum(), leaves)
        value, grads = memory.energy_and_gradients(acts)
        torch.testing.assert_close(value, energy.detach(), rtol=1e-12, atol=1e-9)
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bayespcn_with_the_papers_settings_recalls_a_few_stored_values_closely():
    # adapter-like scale (entries about 3e-2): the first write fixes the data scale
    keys, values = _pairs(3, key_dim=16, value_dim=144, dtype=torch.float32, scale=0.03)
    memory = BayesPCNMemory()  # 4 layers, 256 wide, GELU, Adam lr 0.01, 500 steps
    for k, v in zip(keys, values):
        memory.write(k, v)
    recalled = memory.read_many(keys)
    error = (recalled - values).norm(dim=1) / values.norm(dim=1)
    assert error.max() < 0.05, error  # measured about 0.002
    assert torch.equal(torch.cdist(recalled, values).argmin(dim=1), torch.arange(3))
    # the state does not grow with the pairs: R_0 (256 x 160), three U (256 x 256, float64), two R (256 x 256), m, u
    assert memory.memory_size_bytes() == 256 * 160 * 4 + 2 * 256 * 256 * 4 + 3 * 256 * 256 * 8 + 256 * 4 + 8


def test_bayespcn_error_grows_with_load_and_reads_are_pure():
    keys, values = _pairs(14, key_dim=8, value_dim=56, dtype=torch.float32)
    memory = _tiny_bayespcn()
    for k, v in zip(keys[:2], values[:2]):
        memory.write(k, v)

    def error():
        return ((memory.read_many(keys[:2]) - values[:2]).norm(dim=1) / values[:2].norm(dim=1)).mean().item()

    light = error()
    assert light < 0.1  # measured about 0.03
    first = memory.read(keys[0])
    assert torch.equal(memory.read(keys[0]), first)  # a read changes nothing and draws from its own seed
    # a batch gives each query the read it gets alone, up to float rounding that 200 Adam steps amplify (measured
    # 0.4% of the largest entry)
    torch.testing.assert_close(memory.read_many(keys[:2])[0], first, rtol=0, atol=0.01 * first.abs().max().item())
    size = memory.memory_size_bytes()
    for k, v in zip(keys[2:], values[2:]):
        memory.write(k, v)
    heavy = error()
    assert heavy > 3 * light, (light, heavy)  # the same two pairs, recalled under 14 stored: a 16-wide net is full
    assert memory.memory_size_bytes() == size


# ------------------------------------------------------------------------------------------------ bad input
MEMORIES = {"exact": ExactMemory, "hopfield": HopfieldMemory, "bayespcn": lambda: _tiny_bayespcn(read_steps=5)}


@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(name):
    memory: AssociativeMemory = MEMORIES[name]()
    keys, values = _pairs(2, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="empty: write"):
        memory.read(keys[0])
    memory.write(keys[0], values[0])
    before = memory.read(keys[0]).clone()
    size = memory.memory_size_bytes()
    nan_value = values[1].clone()
    nan_value[3] = float("nan")
    inf_key = keys[1].clone()
    inf_key[0] = float("inf")
    bad_writes = [
        ((torch.zeros(7), values[1]), ValueError, "key has 7 entries.*keys of 8"),
        ((keys[1], torch.zeros(25)), ValueError, "value has 25 entries.*values of 24"),
        ((keys[1], nan_value), ValueError, "non-finite.*index 3"),
        ((inf_key, values[1]), ValueError, "non-finite.*index 0"),
        ((keys[1].double(), values[1].double()), TypeError, "dtype torch.float64.*convert"),
        ((torch.arange(8), values[1]), TypeError, "floating-point"),
        ((keys[1].reshape(2, 4), values[1]), ValueError, "1-D"),
    ]
    for (k, v), error, message in bad_writes:
        with pytest.raises(error, match=message):
            memory.write(k, v)
    for query, error, message in [(torch.zeros(9), ValueError, "query has 9 entries"),
                                  (inf_key, ValueError, "non-finite"),
                                  ("abc", TypeError, "1-D floating-point tensor")]:
        with pytest.raises(error, match=message):
            memory.read(query)
    assert len(memory) == 1 and memory.memory_size_bytes() == size
    assert torch.equal(memory.read(keys[0]), before)


def test_memory_specific_bad_input():
    memory = HopfieldMemory()
    with pytest.raises(ValueError, match="norm 0"):
        memory.write(torch.zeros(4), torch.ones(6))
    assert len(memory) == 0
    memory.write(torch.ones(4), torch.ones(6))
    with pytest.raises(ValueError, match="norm 0"):
        memory.write(torch.zeros(4), torch.ones(6))
    with pytest.raises(ValueError, match="norm 0"):
        memory.read(torch.zeros(4))
    assert len(memory) == 1
    with pytest.raises(ValueError, match="all zeros.*data_scale"):
        _tiny_bayespcn().write(torch.zeros(4), torch.zeros(6))
    for bad in (dict(beta=0), dict(normalize="cosine")):
        with pytest.raises(ValueError):
            HopfieldMemory(**bad)
    for bad in (dict(layers=1), dict(hidden=0), dict(activation="tanh"), dict(read_steps=2.5),
                dict(write_rule="sgd"), dict(data_scale=-1.0), dict(sigma_obs=float("nan"))):
        with pytest.raises(ValueError):
            BayesPCNMemory(**bad)


# ------------------------------------------------------------------------------------------------ the layout
def _env():
    return gym.make("StyleShiftText-v0", num_tasks=2, steps_per_task=2)


def _logits(agent, env):
    env.reset(seed=0)
    ((x, _),) = env.unwrapped.test_batches(0, batch_size=4, max_samples=4)
    return agent.predict(agent.preprocess(x))


def _lora(env, seed=0, rank=2, **kw):
    return agents.make("lora", env, base_model="random", rank=rank, seed=seed, **kw)


def _randomise_adapters(agent, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.network.parameters():
            if p.requires_grad:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_the_adapter_vector_round_trips_through_install_and_the_exact_store_exactly():
    env = _env()
    agent = _lora(env, seed=0)
    _randomise_adapters(agent, 1)
    layout = adapter_layout(agent)
    # module order, then each layer's parameters in registration order (lora_A, lora_B); nothing frozen
    assert [name for name, _ in layout] == ["transformer.h.0.attn.c_attn.lora_A", "transformer.h.0.attn.c_attn.lora_B",
                                            "transformer.h.1.attn.c_attn.lora_A", "transformer.h.1.attn.c_attn.lora_B"]
    vector = adapter_vector(agent)
    assert vector.numel() == sum(math.prod(shape) for _, shape in layout)
    layer = agent.network.get_submodule("transformer.h.0.attn.c_attn")
    assert torch.equal(vector[:layer.lora_A.numel()], layer.lora_A.detach().reshape(-1))
    other = _lora(env, seed=0)  # the same frozen base (the random base is drawn from the agent seed)
    _randomise_adapters(other, 5)
    assert not torch.equal(_logits(other, env), _logits(agent, env))
    install_adapter_vector(other, vector, layout=layout)
    assert torch.equal(_logits(other, env), _logits(agent, env))
    # through the memory: the key is the first 10%, and the exact store gives the vector back bit for bit (D = 0)
    memory = ExactMemory()
    key = write_adapter(memory, vector)
    assert key.numel() == math.floor(0.1 * vector.numel()) and torch.equal(key, adapter_key(vector))
    third = _lora(env, seed=0)
    install_adapter_vector(third, read_adapter(memory, key))
    assert torch.equal(_logits(third, env), _logits(agent, env))


def test_install_refuses_a_vector_of_another_layout_and_installs_nothing():
    env = _env()
    agent = _lora(env, seed=0)
    before = adapter_vector(agent)
    wider = _lora(env, seed=0, rank=4)
    _randomise_adapters(wider, 2)
    with pytest.raises(ValueError, match="has .* entries, but the installed adapter's layout holds"):
        install_adapter_vector(agent, adapter_vector(wider))
    same_length = torch.ones_like(before)
    fake_layout = tuple((name.replace("h.0", "h.9"), shape) for name, shape in adapter_layout(agent))
    with pytest.raises(ValueError, match="layout does not match"):
        install_adapter_vector(agent, same_length, layout=fake_layout)
    nan = before.clone()
    nan[-1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        install_adapter_vector(agent, nan)
    with pytest.raises(TypeError, match="floating-point"):
        install_adapter_vector(agent, torch.zeros(before.numel(), dtype=torch.long))
    with pytest.raises(ValueError, match="fit its dtype"):
        install_adapter_vector(agent, before.double() + 1e-12)
    assert torch.equal(adapter_vector(agent), before)


def test_the_flylora_layout_leaves_the_frozen_projection_out_and_round_trips():
    env = _env()
    make = dict(base_model="random", rank=4, k=2, gate_hidden=4)
    agent = agents.make("neurolora", env, seed=0, **make)
    _randomise_adapters(agent, 3)
    with torch.no_grad():
        for layer in agent.network.modules():
            if hasattr(layer, "expert_bias"):
                layer.expert_bias.add_(0.01)
    names = [name for name, _ in adapter_layout(agent)]
    assert names[0] == "transformer.h.0.attn.c_attn.lora_B" and not any(n.endswith("lora_A") for n in names)
    assert any(n.endswith("gate.w1") for n in names) and names[-1] == "transformer.h.1.attn.c_attn.expert_bias"
    other = agents.make("neurolora", env, seed=0, **make)  # one seed: the same frozen A
    install_adapter_vector(other, adapter_vector(agent), layout=adapter_layout(agent))
    assert torch.equal(_logits(other, env), _logits(agent, env))


def test_keys_are_the_first_tenth():
    assert key_length(10) == 1 and key_length(99) == 9 and key_length(100) == 10
    with pytest.raises(ValueError, match="has no key"):
        adapter_key(torch.ones(9))
    v = torch.arange(40, dtype=torch.float32)
    assert torch.equal(adapter_key(v), v[:4])
