"""agents/common: unit reinitialisation, diagonal Fisher, reservoir buffer."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.backbones import build_backbone
from agents.common import ReservoirBuffer, diagonal_fisher, reinit_units


def _trained(net, steps=3, shape=(1, 8, 8)):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.rand(16, *shape, generator=g)
        y = torch.randint(0, 5, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return opt


def test_reinit_units_mlp_rows_columns_and_adam_state():
    torch.manual_seed(0)
    net = build_backbone("mlp", (1, 8, 8), 5, hidden=(12, 10))
    opt = _trained(net)
    layer = net.unit_layers[0]
    before_in = layer.incoming.weight.detach().clone()
    before_out = layer.outgoing.weight.detach().clone()
    step_before = opt.state[layer.incoming.weight]["step"].clone()
    idx = torch.tensor([2, 7])
    assert reinit_units(layer, idx, opt) == 2
    w_in, w_out = layer.incoming.weight.detach(), layer.outgoing.weight.detach()
    others = torch.tensor([i for i in range(12) if i not in (2, 7)])
    assert not torch.equal(w_in[idx], before_in[idx])
    assert torch.equal(w_in[others], before_in[others])
    bound = 1 / np.sqrt(64)  # PyTorch's default Linear init for fan_in 64
    assert w_in[idx].abs().max() <= bound + 1e-6
    assert torch.all(layer.incoming.bias.detach()[idx] == 0)
    assert torch.all(w_out[:, idx] == 0) and torch.equal(w_out[:, others], before_out[:, others])
    for p, sl, rest in ((layer.incoming.weight, (idx,), (others,)), (layer.incoming.bias, (idx,), (others,)),
                        (layer.outgoing.weight, (slice(None), idx), (slice(None), others))):
        for key in ("exp_avg", "exp_avg_sq"):
            buf = opt.state[p][key]
            assert torch.all(buf[sl] == 0), key
            assert buf[rest].abs().sum() > 0, key
    assert torch.equal(opt.state[layer.incoming.weight]["step"], step_before)  # global step untouched


def test_reinit_units_crelu_zeroes_both_branches():
    net = build_backbone("mlp", (1, 8, 8), 5, hidden=(6, 6), activation="crelu")
    layer = net.unit_layers[0]
    assert layer.outgoing.weight.shape[1] == 12
    reinit_units(layer, [1])
    w = layer.outgoing.weight.detach()
    assert torch.all(w[:, [1, 7]] == 0)
    assert (w[:, [0, 2, 3, 4, 5, 6, 8, 9, 10, 11]] != 0).all()


def test_reinit_units_conv_to_linear_zeroes_every_spatial_column_and_resets_norm():
    net = build_backbone("cnn", (1, 16, 16), 5, layernorm=True)
    opt = _trained(net, shape=(1, 16, 16))
    last = net.unit_layers[-1]  # conv3 -> head through a flatten
    spatial = last.out_map.shape[1]
    assert spatial == 1  # 16 -> 8 -> 4 -> 2 -> 1
    net2 = build_backbone("cnn", (1, 32, 32), 5, batchnorm=True)
    last2 = net2.unit_layers[-1]
    assert last2.out_map.shape[1] == 4
    with torch.no_grad():
        last2.norm.weight.fill_(3.0)
        last2.norm.running_mean.fill_(2.0)
    reinit_units(last2, [5])
    cols = torch.arange(5 * 4, 6 * 4)
    assert torch.all(last2.outgoing.weight.detach()[:, cols] == 0)
    assert last2.outgoing.weight.detach()[:, 4 * 4:5 * 4].abs().sum() > 0
    assert last2.norm.weight[5] == 1 and last2.norm.running_mean[5] == 0 and last2.norm.running_var[5] == 1
    assert last2.norm.weight[4] == 3 and last2.norm.running_mean[4] == 2
    # A middle conv layer: its channels are the next conv's input channels.
    mid = net.unit_layers[1]
    reinit_units(mid, [3], opt)
    assert torch.all(mid.outgoing.weight.detach()[:, 3] == 0)
    assert torch.all(opt.state[mid.outgoing.weight]["exp_avg"][:, 3] == 0)


def test_reinit_keeps_function_of_remaining_network():
    """After reinitialising, the output equals the old network with those units' outgoing weights zeroed: the
    re-drawn incoming weights are invisible."""
    torch.manual_seed(1)
    net = build_backbone("mlp", (1, 8, 8), 5, hidden=(12, 10))
    x = torch.rand(32, 1, 8, 8)
    ref = build_backbone("mlp", (1, 8, 8), 5, hidden=(12, 10))
    ref.load_state_dict(net.state_dict())
    with torch.no_grad():
        ref.unit_layers[0].outgoing.weight[:, [0, 3]] = 0
    reinit_units(net.unit_layers[0], [0, 3])
    assert torch.allclose(net(x), ref(x), atol=1e-6)


def test_reinit_rejects_bad_index():
    net = build_backbone("mlp", (1, 8, 8), 5, hidden=(4, 4))
    with pytest.raises(IndexError):
        reinit_units(net.unit_layers[0], [4])


def test_fisher_matches_per_sample_loop_and_sampled_labels_are_seeded():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    fisher = diagonal_fisher(m, x, y, labels="empirical")
    expected = [torch.zeros_like(p) for p in m.parameters()]
    for i in range(20):
        m.zero_grad()
        F.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        for e, p in zip(expected, m.parameters()):
            e += p.grad ** 2 / 20
    for f, e in zip(fisher.values(), expected):
        assert torch.allclose(f, e, atol=1e-6)
    a = diagonal_fisher(m, x, generator=torch.Generator().manual_seed(3))
    b = diagonal_fisher(m, x, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError):
        diagonal_fisher(m, x, labels="empirical")


def test_reservoir_fills_in_order_then_counts_every_sample():
    buf = ReservoirBuffer(10, seed=0)
    buf.add(torch.arange(6, dtype=torch.uint8)[:, None], torch.arange(6))
    assert len(buf) == 6 and buf.seen == 6
    assert torch.equal(buf.x[:6, 0], torch.arange(6, dtype=torch.uint8))
    assert buf.x.dtype == torch.uint8  # stored as given, not converted
    buf.add(torch.arange(6, 30, dtype=torch.uint8)[:, None], torch.arange(6, 30))
    assert len(buf) == 10 and buf.seen == 30
    assert torch.equal(buf.x[:, 0].long(), buf.y)  # inputs and labels stay paired
    x, y, _ = buf.sample(7)
    assert len(set(y.tolist())) == 7  # without replacement


def test_reservoir_is_uniform_over_the_stream():
    """Every stream position ends up stored with probability M / N: inclusion frequencies over 400 seeded
    repetitions, grouped in 10 stream deciles, all within a generous band of M / N = 0.1."""
    m, n, reps = 50, 500, 400
    counts = np.zeros(n)
    for r in range(reps):
        buf = ReservoirBuffer(m, seed=r)
        for s in range(0, n, 25):
            ids = torch.arange(s, s + 25)
            buf.add(ids[:, None].float(), ids)
        counts[buf.y.numpy()] += 1
    freq = counts.reshape(10, -1).mean(1) / reps
    assert np.all(np.abs(freq - m / n) < 0.02), freq
    assert counts.sum() == m * reps
