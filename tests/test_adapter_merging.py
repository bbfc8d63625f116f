"""Merging independently trained adapters (agents.adapters.merging): task vectors in weight space for plain LoRA and
in parameter space for MERGE_SPACE = "parameters" layers, Task Arithmetic, TIES (Yadav et al., 2023), installing a
merge into a fresh agent. Tiny random bases (``base_model="random"``, 1 layer, 32 wide) and 3-step single-task
streams throughout."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
import torch.nn as nn

import agents
import clenv
from agents.adapters.merging import (averaged_keys, install_merged, merge_layers, task_arithmetic, task_vector,
                                     ties_merge)

TINY = dict(base_model="random", base_n_layer=1, base_n_embd=32, base_n_head=2, lr=0.05)


def _env(task="pirate", steps=3):
    return gym.make("StyleShiftText-v0", tasks=(task,), num_tasks=1, steps_per_task=steps)


def _trained(name="lora", task="pirate", **hp):
    env = _env(task)
    agent = agents.make(name, env, seed=0, **{**TINY, **hp})
    clenv.run(env, agent, seed=0, progress=False)
    return env, agent


def _logits(agent, env):
    env.reset(seed=0)
    ((x, _),) = env.unwrapped.test_batches(0, batch_size=8, max_samples=8)
    return agent.predict(agent.preprocess(x))


# ---------------------------------------------------------------------------------------------- weight space
def test_task_arithmetic_of_one_vector_reproduces_the_adapters_logits():
    env, agent = _trained()
    vector = task_vector(agent, agent.fresh())
    assert set(vector) == {"transformer.h.0.attn.c_attn.delta_weight"}
    assert vector["transformer.h.0.attn.c_attn.delta_weight"].shape == (96, 32)  # (out, in): c_attn is 32 -> 3 x 32
    assert float(vector["transformer.h.0.attn.c_attn.delta_weight"].abs().max()) > 0  # the adapter trained
    merged = agent.fresh()
    install_merged(merged, task_arithmetic([vector], scale=1.0))
    torch.testing.assert_close(_logits(merged, env), _logits(agent, env), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_logits(agent.fresh(), env), _logits(agent, env), atol=1e-3)  # not trivially
    # The merge lives in the network's state: a checkpoint round trip keeps it.
    copy = agent.fresh()
    copy.load_state_dict(merged.state_dict())
    torch.testing.assert_close(_logits(copy, env), _logits(merged, env), rtol=0, atol=0)


def test_merging_two_lora_adapters_adds_their_delta_w_not_the_product_of_mean_factors():
    _, a = _trained(task="upper")
    env, b = _trained(task="pirate")
    reference = a.fresh()
    key = "transformer.h.0.attn.c_attn.delta_weight"
    (la,), (lb,) = [[m for m, _ in merge_layers(x).values()] for x in (a, b)]
    va, vb = task_vector(a, reference), task_vector(b, reference)
    torch.testing.assert_close(va[key], la.delta_weight().detach(), rtol=0, atol=0)  # reference B = 0
    merged = task_arithmetic([va, vb], scale=1.0)
    torch.testing.assert_close(merged[key], la.delta_weight().detach() + lb.delta_weight().detach())
    # The factors' mean (what a parameter-space merge of plain LoRA would do) is another update: each task trained
    # its own A, and mean(B) mean(A) != mean(B A).
    factors = la.scaling * ((la.lora_B + lb.lora_B) / 2) @ ((la.lora_A + lb.lora_A) / 2)
    assert not torch.allclose(2 * factors.detach(), merged[key], atol=1e-4)
    target = a.fresh()
    before = merge_layers(target)[key.rsplit(".", 1)[0]][0].base.weight.detach().clone()
    install_merged(target, merged)
    layer = merge_layers(target)[key.rsplit(".", 1)[0]][0]
    # GPT-2's Conv1D stores (in, out): the update goes in transposed; the adapter itself is the fresh one (B = 0).
    torch.testing.assert_close(layer.base.weight.detach() - before, merged[key].T, rtol=1e-5, atol=1e-6)
    assert float(layer.lora_B.detach().abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------- the merges
def test_ties_by_hand_trim_elect_disjoint_mean():
    v1 = {"a": torch.tensor([4.0, -1.0, 0.5]), "b": torch.tensor([-3.0, 2.0])}
    v2 = {"a": torch.tensor([-2.0, 3.0, 1.0]), "b": torch.tensor([-1.0, -0.2])}
    v3 = {"a": torch.tensor([3.0, -5.0, 0.1]), "b": torch.tensor([2.0, 0.3])}
    # density 0.4 of 5 entries keeps 2 per vector: v1 -> (4, b0 -3), v2 -> (a1 3, a0 -2), v3 -> (a1 -5, a0 3).
    # Signs of the trimmed sums: a0 4 - 2 + 3 > 0, a1 3 - 5 < 0, b0 -3 < 0, a2 and b1 nothing kept (0).
    # Disjoint means of the agreeing entries: a0 (4 + 3) / 2 = 3.5 (v2's -2 disagrees), a1 -5, b0 -3.
    out = ties_merge([v1, v2, v3], density=0.4, scale=0.5)
    torch.testing.assert_close(out["a"], 0.5 * torch.tensor([3.5, -5.0, 0.0]))
    torch.testing.assert_close(out["b"], 0.5 * torch.tensor([-3.0, 0.0]))
    # density 1: nothing trimmed; a0's sign is still elected (v2's -2 left out), a2 all positive: (0.5 + 1 + .1) / 3.
    full = ties_merge([v1, v2, v3], density=1.0)
    torch.testing.assert_close(full["a"], torch.tensor([3.5, -3.0, 1.6 / 3]))
    # Averaged entries (NeuroLoRA's gate) take the plain mean and stay out of the trimming; Task Arithmetic sums.
    avg = ties_merge([v1, v2, v3], density=0.4, average=("b",))  # a alone: keep round(1.2) = 1 entry per vector
    torch.testing.assert_close(avg["a"], torch.tensor([4.0, -5.0, 0.0]))
    torch.testing.assert_close(avg["b"], torch.tensor([-2.0 / 3, 0.7]))
    ta = task_arithmetic([v1, v2, v3], scale=0.5, average=("b",))
    torch.testing.assert_close(ta["a"], 0.5 * torch.tensor([5.0, -3.0, 1.6]))
    torch.testing.assert_close(ta["b"], torch.tensor([-2.0 / 3, 0.7]))


def test_bad_merge_inputs_are_refused():
    v = {"a": torch.ones(3)}
    for call, match in [(lambda: task_arithmetic([]), "no task vector"),
                        (lambda: task_arithmetic([v, {"b": torch.ones(3)}]), "another layout"),
                        (lambda: ties_merge([v, {"a": torch.ones(4)}]), "other shapes"),
                        (lambda: ties_merge([v], density=0.0), "density"),
                        (lambda: ties_merge([v], density=1.5), "density"),
                        (lambda: task_arithmetic([v], scale=float("nan")), "scale"),
                        (lambda: task_arithmetic([v], average=("z",)), "average names")]:
        with pytest.raises(ValueError, match=match):
            call()


def test_mismatched_layouts_raise_before_anything_changes():
    env, agent = _trained()
    vector = task_vector(agent, agent.fresh())
    key = next(iter(vector))
    target = agent.fresh()
    state = {k: v.clone() for k, v in target.network.state_dict().items()}
    bad = [({}, "missing"), ({**vector, "extra.delta_weight": torch.zeros(1)}, "unexpected"),
           ({key: vector[key][:, :5]}, "shape"), ({key: torch.full_like(vector[key], float("nan"))}, "finite"),
           ({key: vector[key].to(torch.int64)}, "floating")]
    for merged, match in bad:
        with pytest.raises(ValueError, match=match):
            install_merged(target, merged)
        assert all(torch.equal(state[k], v) for k, v in target.network.state_dict().items())
    # A reference that is not a fresh twin (another rank, another seed) is refused too.
    for change in (dict(rank=4), dict(seed=1)):
        other = agents.make("lora", env, **{"seed": 0, **TINY, **change})
        with pytest.raises(ValueError, match=f"hyperparameters \\['{next(iter(change))}'\\]"):
            task_vector(agent, other)
    with pytest.raises(ValueError, match="different adapter layouts"):  # bare modules: the layout decides
        task_vector(agent.network, other.network.transformer)


# ---------------------------------------------------------------------------------------------- parameter space
class _FrozenA(nn.Module):
    """A stand-in for FlyLoRA's layer: frozen random A, trainable B and a gate averaged on merges."""

    MERGE_SPACE = "parameters"
    MERGE_AVERAGE = ("gate",)

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = nn.Parameter(torch.randn(4, 3, generator=g), requires_grad=False)
        self.B = nn.Parameter(torch.zeros(2, 4))
        self.gate = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return (x @ self.A.T * self.gate) @ self.B.T


class _Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        self.layer = _FrozenA(seed)
        self.head = nn.Linear(2, 2)


def test_parameter_space_vectors_check_the_frozen_projection_and_average_the_gate():
    ref, a, b = _Net(0), _Net(0), _Net(0)
    b.head.load_state_dict(ref.head.state_dict())
    a.head.load_state_dict(ref.head.state_dict())
    with torch.no_grad():
        a.layer.B += 1.0
        a.layer.gate += 0.5
        b.layer.B -= 3.0
        b.layer.gate -= 0.1
        a.head.bias += 2.0
    va, vb = task_vector(a, ref), task_vector(b, ref)
    assert set(va) == {"layer.B", "layer.gate", "head.weight", "head.bias"}  # not the frozen A
    torch.testing.assert_close(va["layer.B"], torch.ones(2, 4))
    assert averaged_keys(ref) == ["layer.gate"]
    merged = task_arithmetic([va, vb], scale=1.0, average=averaged_keys(ref))
    torch.testing.assert_close(merged["layer.B"], -2.0 * torch.ones(2, 4))
    torch.testing.assert_close(merged["layer.gate"], 0.2 * torch.ones(4))
    target = _Net(0)
    target.head.load_state_dict(ref.head.state_dict())
    install_merged(target, merged)
    torch.testing.assert_close(target.layer.gate.detach(), 1.2 * torch.ones(4))
    torch.testing.assert_close(target.head.bias.detach(), ref.head.bias.detach() + 2.0)
    # Another seed's frozen A: a clear error, not a silent merge of unrelated projections.
    with pytest.raises(ValueError, match="frozen layer.A .* not the reference's"):
        task_vector(a, _Net(1))


@pytest.mark.parametrize("name, path", [("flylora", "agents.adapters.flylora:FlyLoRAAgent"),
                                        ("neurolora", "agents.adapters.flylora:NeuroLoRAAgent")])
def test_flylora_family_merges_in_parameter_space_and_one_vector_reproduces_the_adapter(name, path):
    if name not in agents.available():  # before the registry has it: the class itself, where it exists
        pytest.importorskip("agents.adapters.flylora")
        name = path
    env, agent = _trained(name, rank=8, k=2, gate_hidden=8)
    assert {space for _, space in merge_layers(agent).values()} == {"parameters"}
    vector = task_vector(agent, agent.fresh())
    assert vector and not any(k.endswith("delta_weight") for k in vector)
    assert "transformer.h.0.attn.c_attn.lora_B" in vector and "transformer.h.0.attn.c_attn.lora_A" not in vector
    average = averaged_keys(agent)
    assert "transformer.h.0.attn.c_attn.expert_bias" in average and all(".gate." in k for k in average
                                                                         if not k.endswith("expert_bias"))
    merged = agent.fresh()
    install_merged(merged, task_arithmetic([vector], 1.0, average=average))
    torch.testing.assert_close(_logits(merged, env), _logits(agent, env), rtol=1e-5, atol=1e-5)
    # Two tasks: B is summed, the gate and the expert bias averaged.
    _, other = _trained(name, task="upper", rank=8, k=2, gate_hidden=8)
    second = task_vector(other, agent.fresh())
    both = task_arithmetic([vector, second], 1.0, average=average)
    key = "transformer.h.0.attn.c_attn.lora_B"
    torch.testing.assert_close(both[key], vector[key] + second[key])
    bias = "transformer.h.0.attn.c_attn.expert_bias"
    torch.testing.assert_close(both[bias], (vector[bias] + second[bias]) / 2)
