"""NeuMoSync: the factorised InferenceNetwork, the controller's exact shortcuts, EMAs, ablation switches, signals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import agents
from agents.neumosync import NeuMoSyncAgent
from agents.neumosync.controller import CrossAttention, EncoderLayer, LowRankController, TransformerController
from agents.neumosync.layers import (ModulatedActivation, ModulatedConv2d, ModulatedLinear, _DualLinear,
                                     modulated_layers, unit_stats)


def spec(shape=(1, 8, 8), backbone="mlp", classes=10):
    return {"input_shape": shape, "num_outputs": classes, "action_type": "labels", "backbone": backbone,
            "task_aware": False, "num_tasks": 4, "device": "cpu"}


def batch(shape=(1, 8, 8), b=6, seed=0, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, *shape, generator=g), torch.randint(0, classes, (b,), generator=g)


def perturb_phi(agent, seed=1):
    """Make phi differ from theta so that a_WC matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modulated_layers(agent.network.backbone):
            m.phi_weight.add_(torch.randn(m.phi_weight.shape, generator=g) * 0.1)
            if m.phi_bias is not None:
                m.phi_bias.add_(torch.randn(m.phi_bias.shape, generator=g) * 0.1)


def naive_forward(net, x, alphas):
    """The InferenceNetwork with explicitly built per-sample weights w_b = a_SM,b theta + a_WC,b phi, one sample at
    a time (mlp / cnn bodies: a Sequential, then the head)."""
    outs = []
    for b in range(x.shape[0]):
        h, start = x[b:b + 1], 0
        a = alphas[b] if alphas.shape[0] > 1 else alphas[0]
        slot_alpha = {}
        for slot, n in enumerate(net.layer_sizes):
            slot_alpha[slot] = a[start:start + n]
            start += n
        for m in list(net.backbone.body) + [net.backbone.head]:
            if isinstance(m, (ModulatedLinear, ModulatedConv2d)):
                c = slot_alpha[m.slot]
                shape = (-1,) + (1,) * (m.weight.dim() - 1)
                w = c[:, 0].view(shape) * m.weight + c[:, 1].view(shape) * m.phi_weight
                bias = c[:, 0] * m.bias + c[:, 1] * m.phi_bias
                h = F.linear(h, w, bias) if isinstance(m, ModulatedLinear) else F.conv2d(h, w, bias, m.stride,
                                                                                         m.padding)
                last = c
            elif isinstance(m, ModulatedActivation):
                view = (1, -1) + (1,) * (h.dim() - 2)
                al, arm = last[:, 2].view(view), last[:, 3].view(view)
                h = torch.where(h >= 0, h, al * h) + arm
            else:
                h = m(h)
        outs.append(h)
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------- forward identities
@pytest.mark.parametrize("backbone,shape", [("mlp", (1, 8, 8)), ("cnn", (3, 16, 16)), ("mlp", (3, 10, 10))])
def test_factorised_forward_equals_per_sample_weights(backbone, shape):
    # neutral_init=False: a random output layer gives non-trivial, per-sample coefficients to check the identity on.
    agent = agents.make("neumosync", spec(shape, backbone), neutral_init=False)
    perturb_phi(agent)
    x, _ = batch(shape)
    net = agent.network.eval()
    with torch.no_grad():
        alphas = net.alphas(x)
        assert alphas.shape == (6, net.num_neurons, 4)
        # Per-sample coefficients really differ across samples (else the test would not test per-sample weights).
        assert (alphas[0] - alphas[1]).abs().max() > 1e-4
        fast = net(x)
        slow = naive_forward(net, x, alphas)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_neutral_coefficients_give_the_plain_relu_network():
    """With the learnable table at zero, a_SM = 1 + 0, a_WC = a_AL = a_ARM = 0: the MainNetwork with ReLU."""
    agent = agents.make("neumosync", spec(), controller="none")
    perturb_phi(agent)  # phi must not leak in when a_WC = 0
    x, _ = batch()
    net = agent.network
    with torch.no_grad():
        expected = net.backbone(x)  # no coefficients in the context: the unmodulated MainNetwork
        plain = x.flatten(1)
        for m in modulated_layers(net.backbone):
            plain = F.linear(plain, m.weight, m.bias)
            if m is not net.backbone.head:
                plain = torch.relu(plain)
        torch.testing.assert_close(net(x), plain)
        torch.testing.assert_close(expected, plain)
        net.controller.table[:, 0] = 1.0  # delta a_SM = 1: a_SM = 2 doubles the first layer's pre-activations
        first = modulated_layers(net.backbone)[0]
        with net.capture() as cap:
            net(x)
        torch.testing.assert_close(cap["fc0"], torch.relu(2 * F.linear(x.flatten(1), first.weight, first.bias)))


@pytest.mark.parametrize("context", [True, False])
def test_encoder_neuron_shortcut_equals_pytorch_transformer_layer(context):
    """EncoderLayer.neurons (shared neuron block, per-sample patch block) == nn.TransformerEncoderLayer on the full
    token sequence, restricted to the neuron positions."""
    torch.manual_seed(0)
    d, heads, d_ff, n, p, b = 14, 2, 32, 11, 5, 3
    mine = EncoderLayer(d, heads, d_ff)
    ref = nn.TransformerEncoderLayer(d, heads, d_ff, dropout=0.0, batch_first=True, norm_first=True)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(mine.qkv.weight), ref.self_attn.in_proj_bias.copy_(mine.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(mine.proj.weight), ref.self_attn.out_proj.bias.copy_(mine.proj.bias)
        ref.linear1.load_state_dict(mine.ff[0].state_dict()), ref.linear2.load_state_dict(mine.ff[2].state_dict())
        ref.norm1.load_state_dict(mine.norm1.state_dict()), ref.norm2.load_state_dict(mine.norm2.state_dict())
    assert sum(q.numel() for q in mine.parameters()) == sum(q.numel() for q in ref.parameters())
    neurons = torch.randn(n, d) * 3  # large scores exercise the streaming-softmax rescaling
    ctx = torch.randn(b, p, d) * 3 if context else None
    full = torch.cat([neurons.expand(b, -1, -1), ctx], 1) if context else neurons[None]
    with torch.no_grad():
        torch.testing.assert_close(mine.neurons(neurons, ctx), ref(full)[:, :n], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mine(full), ref(full), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("controller", ["transformer", "lowrank"])
def test_gradients_equal_those_of_per_sample_weights(controller):
    """The fused theta/phi layer's hand-written backward gives the same theta, controller and feature gradients as
    autograd through explicitly built per-sample weights."""
    agent = agents.make("neumosync", spec((1, 10, 10)), controller=controller, neutral_init=False)
    perturb_phi(agent)
    x, y = batch((1, 10, 10))
    net = agent.network
    params = [p for p in net.parameters() if p.requires_grad]
    fast = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    slow = torch.autograd.grad(F.cross_entropy(naive_forward(net, x, net.alphas(x)), y), params)
    for p, a, b in zip(params, fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_dual_linear_backward_is_the_derivative(shared, bias):
    """gradcheck of the hand-written backward, with per-sample and batch-shared ((1, units)) coefficients."""
    g = torch.Generator().manual_seed(0)
    d = dict(dtype=torch.float64)
    x = torch.randn(5, 7, generator=g, **d).requires_grad_()
    w = torch.randn(4, 7, generator=g, **d).requires_grad_()
    b = torch.randn(4, generator=g, **d).requires_grad_() if bias else None
    pw, pb = torch.randn(4, 7, generator=g, **d), (torch.randn(4, generator=g, **d) if bias else None)
    rows = 1 if shared else 5
    sm = torch.randn(rows, 4, generator=g, **d).requires_grad_()
    wc = torch.randn(rows, 4, generator=g, **d).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: _DualLinear.apply(*a), (x, w, b, pw, pb, sm, wc))
    ref = sm * F.linear(x, w, b) + wc * F.linear(x, pw, pb)
    torch.testing.assert_close(_DualLinear.apply(x, w, b, pw, pb, sm, wc), ref)


@pytest.mark.parametrize("context", [True, False])
def test_transformer_controller_folds_the_decoder_exactly(context):
    """TransformerController (decoder folded into the feed-forward output layer) == the linear decoder applied to
    nn.TransformerEncoderLayer over [neuron tokens; patch tokens], at the neuron positions."""
    torch.manual_seed(0)
    n, b = 30, 4
    ctrl = TransformerController(n, 9, (3, 10, 10), d=14, d_ff=32, heads=2, patch=5, input_conditioned=context)
    ref = nn.TransformerEncoderLayer(14, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    enc = ctrl.encoder
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(enc.qkv.weight), ref.self_attn.in_proj_bias.copy_(enc.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(enc.proj.weight), ref.self_attn.out_proj.bias.copy_(enc.proj.bias)
        ref.linear1.load_state_dict(enc.ff[0].state_dict()), ref.linear2.load_state_dict(enc.ff[2].state_dict())
        ref.norm1.load_state_dict(enc.norm1.state_dict()), ref.norm2.load_state_dict(enc.norm2.state_dict())
    feats, x = torch.randn(n, 9), torch.rand(b, 3, 10, 10)
    with torch.no_grad():
        tokens = ctrl.token(feats)
        seq = torch.cat([tokens.expand(b, -1, -1), ctrl.patches(x)], 1) if context else tokens[None]
        expected = ctrl.decoder(ref(seq)[:, :n])
        torch.testing.assert_close(ctrl(feats, x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(enc(seq), ref(seq), rtol=1e-4, atol=1e-5)  # the full layer (sparse encoder)


# ---------------------------------------------------------------------------------------------- restructured kernels
def _controller_pair(context, d_ff=32, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    n = 30
    ctrl = TransformerController(n, 9, (3, 10, 10), d=14, d_ff=d_ff, heads=2, patch=5, input_conditioned=context)
    with torch.no_grad():  # a non-zero decoder and larger scores exercise every term and the softmax rescaling
        ctrl.decoder.weight.normal_(0, 0.5), ctrl.encoder.qkv.weight.mul_(3)
    ctrl = ctrl.to(dtype)
    ref = copy.deepcopy(ctrl)
    ref.fused = False
    return ctrl, ref, n


@pytest.mark.parametrize("context", [True, False])
def test_fused_transformer_block_matches_autograd_in_float64(context):
    """The one-node encoder-decoder kernel (feature-major, hand-written backward, exp2, tiled feed-forward, reused
    buffers) gives the outputs and every gradient (parameters, neuron features, image) of the same model written as
    plain autograd ops, to float64 rounding."""
    ctrl, ref, n = _controller_pair(context)
    feats = torch.randn(n, 9, dtype=torch.float64, requires_grad=True)
    x = torch.rand(4, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4 if context else 1, n, 4, dtype=torch.float64)
    grads = []
    for model in (ctrl, ref):
        out = model(feats, x)
        inputs = [feats, x] if context else [feats]
        grads.append((out, torch.autograd.grad(out, list(model.parameters()) + inputs, g)))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)


def test_kernel_pieces_pass_gradcheck():
    from agents.neumosync.kernels import Workspace, folded_ffn, layer_norm_columns, neuron_attention

    g = torch.Generator().manual_seed(0)
    dd = dict(dtype=torch.float64)
    ws = Workspace()
    x = torch.randn(5, 9, generator=g, **dd).requires_grad_()
    w1, b1 = torch.randn(7, 5, generator=g, **dd).requires_grad_(), torch.randn(7, generator=g, **dd).requires_grad_()
    wo = torch.randn(3, 7, generator=g, **dd).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: folded_ffn(*a, ws), (x, w1, b1, wo))
    norm = nn.LayerNorm(5).double()
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    assert torch.autograd.gradcheck(lambda t: layer_norm_columns(t, norm), (x,))
    torch.testing.assert_close(layer_norm_columns(x, norm), norm(x.t()).t())
    qkv = torch.randn(3, 2, 3, 6, generator=g, **dd).requires_grad_()
    kv = torch.randn(2, 2, 3, 4 * 5, generator=g, **dd).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: neuron_attention(a, b, 0.7, 4, ws), (qkv, kv))
    assert torch.autograd.gradcheck(lambda a: neuron_attention(a, None, 0.7, 1, ws), (qkv,))


def test_workspace_buffers_are_not_reused_while_a_graph_holds_them():
    """Two training forwards before one backward (and a no-grad forward in between): each graph keeps its own saved
    buffers, so both backward passes give the gradients of separate runs."""
    ctrl, _, n = _controller_pair(True, dtype=torch.float32)
    feats = torch.randn(n, 9)
    x1, x2 = torch.rand(4, 3, 10, 10), torch.rand(4, 3, 10, 10)
    params = list(ctrl.parameters())
    alone = [torch.autograd.grad(ctrl(feats, x).sum(), params) for x in (x1, x2)]
    out1, out2 = ctrl(feats, x1), ctrl(feats, x2)
    with torch.no_grad():
        ctrl(feats, torch.rand(4, 3, 10, 10))
    for out, ref in zip((out1, out2), alone):
        for u, v in zip(torch.autograd.grad(out.sum(), params), ref):
            torch.testing.assert_close(u, v)


def test_fused_switch_gives_the_same_training_step():
    """fused=False (plain autograd ops) and the default kernels train the same network to float32 rounding."""
    x, y = batch((1, 10, 10))
    nets = [agents.make("neumosync", spec((1, 10, 10)), neutral_init=False, fused=f) for f in (True, False)]
    assert nets[0].network.controller.fused and not nets[1].network.controller.fused
    grads = []
    for agent in nets:
        params = [p for p in agent.network.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(F.cross_entropy(agent.network(x), y), params))
    for u, v in zip(*grads):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
    losses = [[float(a.learn(x, y)) for _ in range(3)] for a in nets]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_compile_switch_falls_back_to_eager_with_a_warning(monkeypatch):
    """compile=True wraps the network forward in torch.compile; if that fails the network warns once, runs eager
    (the same numbers) and stays eager. Copies start uncompiled."""
    def broken(fn, **_):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    x, y = batch((1, 10, 10))
    eager = agents.make("neumosync", spec((1, 10, 10)), neutral_init=False)
    comp = agents.make("neumosync", spec((1, 10, 10)), neutral_init=False, compile=True)
    assert comp.network.compile and not eager.network.compile
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        first = comp.learn(x, y)
    assert comp.network._compiled.failed
    torch.testing.assert_close(first, eager.learn(x, y))
    import warnings

    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        torch.testing.assert_close(comp.learn(x, y), eager.learn(x, y))
    assert not [w for w in later if "torch.compile" in str(w.message)]  # warned once, then eager
    clone = comp.clone()
    assert clone.network._compiled.fn is None and not clone.network._compiled.failed


@pytest.mark.slow
@pytest.mark.parametrize("hp", [dict(controller="none"), dict(fused=False), dict(fused=True)])
def test_compiled_and_eager_steps_agree(hp):
    """torch.compile (inductor, offline) of the network forward gives the eager loss and gradients (float32
    tolerance: inductor reorders sums) and trains the same; 10-30 s of compilation each."""
    x, y = batch((1, 8, 8))
    nets = [agents.make("neumosync", spec(), neutral_init=False, compile=c, **hp) for c in (False, True)]
    grads = []
    for agent in nets:
        params = [p for p in agent.network.parameters() if p.requires_grad]
        loss = F.cross_entropy(agent.network(x), y)
        grads.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))  # features: unused by 'none'
    assert not nets[1].network._compiled.failed and nets[1].network._compiled.fn is not None
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for u, v in zip(grads[0][1], grads[1][1]):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)
    losses = [[float(a.learn(x, y)) for _ in range(3)] for a in nets]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_cross_attention_equals_multihead_attention():
    """The sparse controller's CrossAttention (fused attention) == nn.MultiheadAttention with the same weights."""
    torch.manual_seed(0)
    att, ref = CrossAttention(14, 2), nn.MultiheadAttention(14, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([att.q.weight, att.kv.weight]))
        ref.in_proj_bias.copy_(torch.cat([att.q.bias, att.kv.bias]))
        ref.out_proj.load_state_dict(att.proj.state_dict())
        q, memory = torch.randn(3, 50, 14), torch.randn(3, 20, 14)
        torch.testing.assert_close(att(q, memory), ref(q, memory, memory, need_weights=False)[0],
                                   rtol=1e-4, atol=1e-5)


def test_lowrank_controller_is_a_rank_d_image_readout():
    """alpha = D(h) + U(h) c_b: the per-sample coefficients of all neurons form a rank-d matrix, c_b is the
    layer-normed embedding of the mean patch (= the mean of the embedded patches), and without image conditioning
    the coefficients are the shared D(h)."""
    torch.manual_seed(0)
    n, b, d = 40, 24, 6
    ctrl = LowRankController(n, 9, (3, 10, 10), d=d, d_ff=16, heads=2, patch=5)
    feats, x = torch.randn(n, 9), torch.rand(b, 3, 10, 10)
    with torch.no_grad():
        alphas = ctrl(feats, x)
        assert alphas.shape == (b, n, 4)
        flat = alphas.reshape(b, -1)
        # generic rank d: the shared part plus the d - 1 directions a layer-normed (zero-mean) code spans
        assert torch.linalg.matrix_rank(flat) == d
        assert (alphas[0] - alphas[1]).abs().max() > 1e-4
        # the mean of per-patch embeddings (a conv with stride = kernel) equals the embedding of the mean patch
        w = ctrl.embed.weight.view(d, 3, 5, 5)
        per_patch = F.conv2d(x, w, ctrl.embed.bias, stride=5).mean((2, 3))
        code = F.layer_norm(per_patch, (d,)) * d ** -0.5
        h = ctrl.encoder.neurons(ctrl.token(feats), None)[0]
        out = ctrl.decoder(h)
        expected = out[:, :4] + torch.einsum("bk,njk->bnj", code, out[:, 4:].view(n, 4, d))
        torch.testing.assert_close(alphas, expected, rtol=1e-4, atol=1e-5)
    plain = LowRankController(n, 9, (3, 10, 10), d=d, d_ff=16, heads=2, input_conditioned=False)
    assert plain(feats, x).shape == (1, n, 4)


def test_activity_statistics_reduced_in_one_pass_match_per_layer():
    g = torch.Generator().manual_seed(0)
    ys = [torch.randn(6, k, generator=g) for k in (5, 3, 2)]
    torch.testing.assert_close(unit_stats(torch.cat(ys, 1)), torch.cat([unit_stats(y) for y in ys]))
    conv = torch.randn(4, 3, 5, 5, generator=g)
    flat = conv.transpose(0, 1).reshape(3, -1)
    expected = torch.stack([flat.mean(1), flat.abs().mean(1), (flat > 0).float().mean(1)], 1)
    torch.testing.assert_close(unit_stats(conv), expected)


# ---------------------------------------------------------------------------------------------- slow state
def test_consolidated_network_is_an_ema_of_theta_after_every_step():
    agent = agents.make("neumosync", spec(), beta=0.9)
    layers = modulated_layers(agent.network.backbone)
    for m in layers:
        torch.testing.assert_close(m.phi_weight, m.weight.detach())  # phi <- theta at the start
    x, y = batch()
    for step in range(3):
        phi0 = [m.phi_weight.clone() for m in layers]
        agent.learn(x, y)
        for m, p0 in zip(layers, phi0):
            torch.testing.assert_close(m.phi_weight, 0.9 * p0 + 0.1 * m.weight.detach())
            assert not torch.equal(m.phi_weight, m.weight)
    assert not any(m.phi_weight.requires_grad for m in layers)


def test_activity_features_track_the_training_pass():
    agent = agents.make("neumosync", spec(), feature_ema=0.5)
    net = agent.network
    assert torch.count_nonzero(net.activity) == 0
    x, y = batch()
    agent.learn(x, y)
    a1 = net.activity.clone()
    assert a1.shape == (net.num_neurons, 3) and torch.count_nonzero(a1) > 0
    frac_pos = a1[:, 2] * 2  # EMA from zero with rate 0.5: half the first value
    assert ((frac_pos >= 0) & (frac_pos <= 1)).all()
    agent.predict(x)  # evaluation passes do not move the statistics
    torch.testing.assert_close(net.activity, a1)
    agent.learn(x, y)
    assert not torch.equal(net.activity, a1)


# ---------------------------------------------------------------------------------------------- ablations
VARIANTS = {
    "w/o sm": dict(coefficients=("wc", "al", "arm")),
    "w/o wc": dict(coefficients=("sm", "al", "arm")),
    "w/o al": dict(coefficients=("sm", "wc", "arm")),
    "w/o arm": dict(coefficients=("sm", "wc", "al")),
    "only sm": dict(coefficients=("sm",)),
    "only wc": dict(coefficients=("wc",)),
    "only al": dict(coefficients=("al",)),
    "only arm": dict(coefficients=("arm",)),
    "no controller": dict(controller="none"),
    "global sm/wc": dict(global_plasticity=True),
    "unconditioned": dict(controller="unconditioned"),
    "conv1d": dict(controller="conv1d"),
    "mlp": dict(controller="mlp"),
    "sparse": dict(controller="sparse", sparse_fraction=0.2),
    "lowrank": dict(controller="lowrank"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_changes_the_function(name):
    x, _ = batch(shape=(1, 10, 10))
    full = agents.make("neumosync", spec((1, 10, 10)), neutral_init=False)
    variant = agents.make("neumosync", spec((1, 10, 10)), neutral_init=False, **VARIANTS[name])
    for a in (full, variant):
        perturb_phi(a)
        with torch.no_grad():  # the no-controller table starts at zero: give it values so every mechanism acts
            if isinstance(a.network.controller, agents.neumosync.controller.NoController):
                a.network.controller.table.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (full.network(x) - variant.network(x)).abs().max() > 1e-4
        alphas = variant.network.alphas(x)
    neutral = torch.tensor([1.0, 0.0, 0.0, 0.0])
    coefs = VARIANTS[name].get("coefficients", ("sm", "wc", "al", "arm"))
    for j, c in enumerate(("sm", "wc", "al", "arm")):
        if c in coefs:
            assert alphas[..., j].std() > 1e-4, c
        else:
            assert torch.equal(alphas[..., j], neutral[j].expand_as(alphas[..., j])), c
    if name == "global sm/wc":
        assert torch.allclose(alphas[:, :1, :2].expand(-1, alphas.shape[1], -1), alphas[..., :2])
        assert alphas[0, :, 2].std() > 1e-4  # a_AL stays per neuron
    if name in ("unconditioned", "no controller"):
        assert alphas.shape[0] == 1  # the same coefficients for every input
    else:
        assert alphas.shape[0] == x.shape[0] and (alphas[0] - alphas[1]).abs().max() > 1e-5


@pytest.mark.parametrize("controller", ["transformer", "lowrank", "conv1d", "mlp", "sparse", "unconditioned"])
def test_controller_starts_at_neutral_coefficients_and_still_learns(controller):
    """I.2 / Figure 4B: training starts from a_SM = 1, a_WC = a_AL = a_ARM = 0 (the plain MainNetwork; a default
    initialised output layer gave every neuron a shared offset, a_SM ~ 1.25, a_AL ~ -0.5, that collapsed early tasks
    to chance). The zeroed output layer must not freeze the controller: one step moves the coefficients, two steps
    reach the encoder; a G.2 reset starts neutral again."""
    x, y = batch((1, 10, 10), b=16)
    agent = agents.make("neumosync", spec((1, 10, 10)), controller=controller, reset_controller=True,
                        sparse_fraction=0.2)
    perturb_phi(agent)  # a_WC = 0 must hide phi exactly
    net = agent.network
    neutral = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        assert torch.equal(net.alphas(x), neutral.expand(x.shape[0] if net.controller.input_conditioned else 1,
                                                          net.num_neurons, 4))
        plain = x.flatten(1)
        for m in modulated_layers(net.backbone):
            plain = F.linear(plain, m.weight, m.bias)
            plain = plain if m is net.backbone.head else torch.relu(plain)
        torch.testing.assert_close(net(x), plain)
    out = set(map(id, net.controller.output_layer().parameters()))
    body = [p for p in net.controller.parameters() if id(p) not in out and p.dim() == 2]
    before = [p.detach().clone() for p in body]
    agent.on_task_switch(0)
    agent.learn(x, y)
    assert (net.last_alphas - neutral).abs().max() == 0  # the first step ran at the neutral point ...
    with torch.no_grad():
        assert (net.alphas(x) - neutral).abs().max() > 1e-5  # ... and moved the coefficients
    agent.learn(x, y)
    assert any(not torch.equal(a, p) for a, p in zip(before, body))  # gradient reaches past the output layer
    agent.on_task_switch(1)  # reset_controller=True: back to the neutral start
    with torch.no_grad():
        assert torch.equal(net.alphas(x), neutral.expand_as(net.alphas(x)))
    legacy = agents.make("neumosync", spec((1, 10, 10)), controller=controller, neutral_init=False,
                         sparse_fraction=0.2)
    with torch.no_grad():
        assert (legacy.network.alphas(x) - neutral).abs().max() > 1e-3


def test_no_controller_has_no_transformer_parameters():
    agent = agents.make("neumosync", spec(), controller="none")
    ctrl = agent.network.controller
    assert not any(isinstance(m, (EncoderLayer, nn.MultiheadAttention, nn.TransformerEncoderLayer))
                   for m in ctrl.modules())
    assert sum(p.numel() for p in ctrl.parameters()) == agent.network.num_neurons * 4
    full = agents.make("neumosync", spec())
    assert any(isinstance(m, EncoderLayer) for m in full.network.controller.modules())


def test_reset_controller_at_task_end():
    x, y = batch()
    kept = agents.make("neumosync", spec())
    reset = agents.make("neumosync", spec(), reset_controller=True)
    for a in (kept, reset):
        a.on_task_switch(0)
        for _ in range(3):
            a.learn(x, y)
    before = copy.deepcopy(reset.network.controller.state_dict())
    theta = [p.detach().clone() for p in reset.network.backbone.parameters()]
    kept_before = copy.deepcopy(kept.network.controller.state_dict())
    for a in (kept, reset):
        a.on_task_switch(1)
    after = reset.network.controller.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    assert all(torch.equal(kept_before[k], v) for k, v in kept.network.controller.state_dict().items())
    # The MainNetwork and its optimiser state survive; the controller's Adam moments are dropped.
    assert all(torch.equal(a, b) for a, b in zip(theta, reset.network.backbone.parameters()))
    ctrl = set(map(id, reset.network.controller.parameters()))
    assert not any(id(p) in ctrl for p in reset.optimizer.state)
    assert any(id(p) not in ctrl for p in reset.optimizer.state)
    reset.learn(x, y)  # still trains


def test_sparse_controller_samples_a_fraction_and_scales():
    agent = agents.make("neumosync", spec((3, 8, 8), "cnn"), controller="sparse", sparse_fraction=0.25)
    ctrl = agent.network.controller
    assert ctrl.num_sampled == round(0.25 * agent.network.num_neurons)
    x, y = batch((3, 8, 8))
    agent.network.eval()
    with torch.no_grad():  # eval draws are fixed: repeatable predictions
        torch.testing.assert_close(agent.predict(x), agent.predict(x))
    twin = agent.clone()
    agent.learn(x, y), twin.learn(x, y)  # copies continue the same draw sequence
    torch.testing.assert_close(agent.network.controller.state_dict()["encoder.qkv.weight"],
                               twin.network.controller.state_dict()["encoder.qkv.weight"])


# ---------------------------------------------------------------------------------------------- contract
def test_same_seed_same_numbers_and_state_roundtrip():
    x, y = batch()
    a, b = agents.make("neumosync", spec(), seed=3), agents.make("neumosync", spec(), seed=3)
    for _ in range(3):
        la, lb = a.learn(x, y), b.learn(x, y)
        assert torch.equal(la, lb)
    c = agents.make("neumosync", spec(), seed=4)
    c.load_state_dict(a.state_dict())
    torch.testing.assert_close(c.predict(x), a.predict(x))
    fresh = a.fresh()
    assert not torch.equal(fresh.predict(x), a.predict(x))


def test_trace_and_diagnostics_report_the_last_step():
    agent = agents.make("neumosync", spec())
    assert agent.trace() == {}
    x, y = batch()
    agent.learn(x, y)
    tr = agent.trace()
    net = agent.network
    assert net.layer_names == ["fc0", "fc1", "head"]
    a = net.last_alphas
    assert tr["alpha_wc/fc1"] == pytest.approx(float(a[:, 100:200, 1].mean()), rel=1e-5)
    assert tr["alpha_sm_abs/head"] == pytest.approx(float(a[:, 200:, 0].abs().mean()), rel=1e-5)
    assert len(tr) == 5 * 3 - 2  # the head has no activation: no a_AL / a_ARM there
    assert "alpha_al/head" not in tr and "alpha_arm/head" not in tr and "alpha_arm/fc1" in tr
    d = agent.diagnostics()
    assert d["units"] == [100, 100, 10] and d["alpha"]["al"]["fc0"].shape == (100,)
    assert "head" not in d["alpha"]["arm"] and "head" in d["alpha"]["wc"]
    assert d["samples"]["sm"]["head"].shape == (6, 10)
    np.testing.assert_allclose(d["alpha"]["sm"]["fc0"], a[:, :100, 0].mean(0).numpy(), rtol=1e-6)


def test_parameter_overhead_matches_table_18_band():
    """e = 128 on 28x28 inputs and e = 512 on 3x32x32 give the paper's 5-8 % overhead."""
    mnist = agents.make("neumosync", spec((1, 28, 28)))
    cifar = agents.make("neumosync", spec((3, 32, 32)), d_ff=512)
    for agent, base in ((mnist, 89_610), (cifar, 318_410)):
        o = agent.parameter_overhead()
        assert o["base"] == base
        assert 0.05 <= o["share"] <= 0.08, o


def test_clear_errors():
    with pytest.raises(ValueError, match="coefficients"):
        agents.make("neumosync", spec(), coefficients=("sm", "gain"))
    with pytest.raises(ValueError, match="activation='relu'"):
        agents.make("neumosync", spec(), activation="tanh")
    with pytest.raises(ValueError, match="backbones"):
        agents.make("neumosync", spec((3, 16, 16)), backbone="vit")
    with pytest.raises(ValueError, match="unknown controller"):
        agents.make("neumosync", spec(), controller="lstm")
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        agents.make("neumosync", spec(), bta=0.9)


def test_composes_with_er():
    pytest.importorskip("agents.er")
    agent = agents.make("neumosync+er", spec(), buffer_size=4000)
    assert isinstance(agent, NeuMoSyncAgent)
    assert agent.hparams["optimizer"] == "adam" and agent.hparams["buffer_size"] == 4000
    x, y = batch()
    layers = modulated_layers(agent.network.backbone)
    for step in range(3):
        phi0 = layers[0].phi_weight.clone()
        agent.learn(x, y)
        # NeuMoSync's after_update ran inside the composition (phi moved), and ER stored the batch.
        assert not torch.equal(phi0, layers[0].phi_weight)
    assert len(agent.memory) > 0
    assert agent.network.last_alphas.shape[0] > x.shape[0]  # trained on stream + replay


@pytest.mark.slow
def test_learns_random_labels_better_than_base():
    import gymnasium as gym

    import clenv

    env = gym.make("RandomLabelDigits-v0", num_tasks=4, samples_per_task=128, epochs_per_task=30)
    acc = {}
    for name in ("base", "neumosync"):
        torch.set_num_threads(1)
        acc[name] = clenv.run(env, agents.make(name, env), seed=0, progress=False).last_fraction_accuracy(0.5)
    assert acc["neumosync"] > acc["base"] + 0.04, acc


def test_alphas_example_draws_both_figures_from_a_run(tmp_path):
    """examples/neumosync_alphas.py: traces and task-end distributions come out of one recorded run as PNGs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "neumosync_alphas.py"
    spec_ = importlib.util.spec_from_file_location("neumosync_alphas", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    written = module.main(["--env", "RandomLabelDigits-v0", "--tasks", "2", "--samples", "32", "--epochs", "1",
                           "--trace-every", "1", "--out", str(tmp_path)])
    assert [w.name for w in written] == ["alpha_traces.png", "alpha_distributions.png"]
    assert all(w.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for w in written)


def test_step_benchmark_reports_time_and_flop_ratios():
    """benchmarks/neumosync_step.py runs and ends with the issue's ``ratio=`` line, after the FLOP-ratio lines; the
    FLOP ratios are ordered as the controllers' costs are (none < lowrank < e=128 < e=512)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "neumosync_step.py"
    out = subprocess.run([sys.executable, str(script), "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio=\d+\.\d\d", lines[-1])
    flops = {m[1]: float(m[2]) for m in re.finditer(r"^flop_ratio_(\w+)=([\d.]+)$", out.stdout, re.M)}
    assert list(flops) == ["no_controller", "lowrank_e128", "e128", "e512"]
    assert 1.0 < flops["no_controller"] < flops["lowrank_e128"] < flops["e128"] < flops["e512"]


# ---------------------------------------------------------------------------------------------- ResNets
def test_resnet_block_passes_the_modulated_activation_to_conv2():
    # The modulated layer of a residual block is conv1 -> bn1 -> PReLU_{a_AL} + a_ARM -> conv2: negative
    # pre-activations must reach conv2 scaled by a_AL, and every value shifted by a_ARM (no block ReLU after it).
    agent = agents.make("neumosync", spec((3, 8, 8), "resnet18"), controller="none")
    net = agent.network
    slot = net.layer_names.index("layer1.0.conv1")
    start, n = sum(net.layer_sizes[:slot]), net.layer_sizes[slot]
    with torch.no_grad():
        net.controller.table[start:start + n, 2] = 0.5   # a_AL
        net.controller.table[start:start + n, 3] = -0.2  # a_ARM
    block = net.backbone.body.layer1[0]
    seen = {}
    block.bn1[0].register_forward_hook(lambda m, i, o: seen.__setitem__("z", o.detach()))
    block.conv2.register_forward_pre_hook(lambda m, i: seen.__setitem__("conv2_in", i[0].detach()))
    agent.predict(batch((3, 8, 8))[0])
    z = seen["z"]
    assert (z < 0).any()
    torch.testing.assert_close(seen["conv2_in"], torch.where(z >= 0, z, 0.5 * z) - 0.2)


def test_resnets_get_the_sparse_controller_with_the_papers_fraction():
    agent = agents.make("neumosync", spec((3, 8, 8), "resnet18"))
    assert agent.hparams["controller"] == "sparse" and agent.hparams["sparse_fraction"] == 0.1
    ctrl = agent.network.controller
    assert type(ctrl).__name__ == "SparseController" and ctrl.num_sampled == round(0.1 * agent.network.num_neurons)
    assert NeuMoSyncAgent.default_controller("resnet50") == ("sparse", 0.01)
    mlp = agents.make("neumosync", spec())
    assert mlp.hparams["controller"] == "transformer"  # the MLP / CNN benchmarks keep the full transformer
    explicit = agents.make("neumosync", spec((3, 8, 8), "resnet18"), controller="mlp")
    assert type(explicit.network.controller).__name__ == "MLPController"
    assert agent.fresh().hparams == agent.hparams  # the resolved values rebuild the same agent
