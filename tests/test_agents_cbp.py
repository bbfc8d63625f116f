"""CBP's utilities measured on units whose statistics are known (Dohare et al. 2024; authors' gnt.py)."""

from __future__ import annotations

import pytest
import torch

from agents.backbones import build_backbone
from agents.cbp import GenerateAndTest


def _gnt(net, utility, decay):
    # replacement_rate 0: utilities are tracked, nothing is replaced, so the weights stay fixed.
    return GenerateAndTest(net.unit_layers, replacement_rate=0.0, maturity_threshold=0, decay_rate=decay,
                           utility=utility)


def _stationary_features(net, batch=64, seed=0):
    # A fixed batch, fed at every step: each unit's activation distribution is stationary.
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 4, 4, generator=g)
    with torch.no_grad(), net.capture() as cap:
        net(x)
    return [cap[layer.name].detach() for layer in net.unit_layers]


@pytest.mark.parametrize("activation", ["relu", "crelu"])
@pytest.mark.parametrize("decay", [0.0, 0.9])
def test_adaptable_utility_is_mean_deviation_times_outgoing_over_incoming_weight(activation, decay):
    torch.manual_seed(0)
    net = build_backbone("mlp", (1, 4, 4), 3, hidden=(6, 5), activation=activation)
    gnt = _gnt(net, "adaptable", decay)
    feats = _stationary_features(net)
    steps = 25
    for _ in range(steps):
        gnt.step(feats, None)
    for layer, h, st in zip(gnt.layers, feats, gnt.states):
        k = getattr(layer.activation, "width_factor", 1)
        hb = h.view(h.shape[0], k, -1)  # (B, branches, units)
        spread = (hb - hb.mean(0, keepdim=True)).abs().mean(0).sum(0)  # batch mean of |h - h_bar|
        w_out = layer.outgoing.weight.abs()  # (out, k * units): unit i feeds columns i and units + i
        out_mag = w_out.mean(0).view(k, -1).mean(0)
        in_mag = layer.incoming.weight.abs().mean(1)
        expected = out_mag * spread / in_mag
        # With a constant input the bias-corrected EMAs (of the mean activation and of the utility) equal the
        # constant exactly up to float32 rounding over 25 updates: a relative tolerance of 1e-5 covers it.
        u_hat = st["util"] / (1 - decay ** st["age"].double()).float()
        torch.testing.assert_close(u_hat, expected, rtol=1e-5, atol=1e-7)
        assert (expected > 0).any()  # the units do vary, so the mean-centred utility is not trivially zero


def test_adaptable_utility_of_a_constant_unit_is_zero_but_contribution_is_not():
    # A unit whose activation is the same for every input is useless to adapt: deviation 0. Contribution counts
    # its magnitude instead.
    torch.manual_seed(0)
    net = build_backbone("mlp", (1, 4, 4), 3, hidden=(4,))
    layer = net.unit_layers[0]
    h = torch.rand(32, 4) + 0.5
    h[:, 2] = 1.7  # unit 2: constant
    adapt, contrib = _gnt(net, "adaptable", 0.0), _gnt(net, "contribution", 0.0)
    adapt.step([h], None), contrib.step([h], None)
    # Zero up to float32 rounding of the batch mean of 32 equal values (~1e-7 of 1.7), times |w_out| / |w_in|.
    assert float(adapt.states[0]["util"][2]) == pytest.approx(0.0, abs=1e-5)
    out_mag = float(layer.outgoing.weight.detach()[:, 2].abs().mean())
    assert float(contrib.states[0]["util"][2]) == pytest.approx(1.7 * out_mag, rel=1e-6)
    assert (adapt.states[0]["util"][[0, 1, 3]] > 0).all()


def test_adaptable_utility_on_conv_units_uses_the_channel_mean_at_every_position():
    torch.manual_seed(0)
    net = build_backbone("cnn", (1, 8, 8), 3)
    gnt = _gnt(net, "adaptable", 0.0)
    feats = _stationary_features_conv(net)
    gnt.step(feats, None)
    layer, h, st = gnt.layers[0], feats[0], gnt.states[0]
    mean = h.mean((0, 2, 3), keepdim=True)
    spread = (h - mean).abs().mean((0, 2, 3))
    out_mag = layer.outgoing.weight.abs().transpose(0, 1).reshape(layer.num_units, -1).mean(1)
    in_mag = layer.incoming.weight.abs().reshape(layer.num_units, -1).mean(1)
    torch.testing.assert_close(st["util"], out_mag * spread / in_mag, rtol=1e-5, atol=1e-7)


def _stationary_features_conv(net):
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), net.capture() as cap:
        net(x)
    return [cap[layer.name].detach() for layer in net.unit_layers]
