"""The papers' backbones: each builds for the env's input, trains through the shared step, and describes its units."""

import pytest
import torch

import agents
from agents.backbones import build_backbone
from clenv.envs import SupervisedStreamEnv


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_wide", "resnet18", "resnet50", "vit"])
def test_backbone_trains_through_the_shared_step(name):
    env = SupervisedStreamEnv("digits", "random_label", num_tasks=1, samples_per_task=32, batch_size=4)
    agent = agents.make("base", env, backbone=name, optimizer="adam", lr=1e-3)
    x = agent.preprocess(env.reset(seed=0)[0])
    assert agent.predict(x).shape == (4, 10)
    before = [p.detach().clone() for p in agent.network.parameters()]
    agent.learn(x, torch.arange(4))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.network.parameters()))


def test_paper_sizes():
    mlp = build_backbone("mlp", (1, 28, 28), 10)
    assert [l.num_units for l in mlp.unit_layers] == [100, 100]
    assert sum(p.numel() for p in mlp.parameters()) == 89_610  # NeuMoSync C.7
    cnn = build_backbone("cnn", (3, 32, 32), 100)
    assert [l.num_units for l in cnn.unit_layers] == [8, 16, 32, 64]
    assert sum(p.numel() for p in cnn.parameters()) == 24_528 + 25_700  # C.7: conv total + FC 256 x 100
    wide = build_backbone("cnn_wide", (3, 32, 32), 10)
    assert [l.num_units for l in wide.unit_layers] == [256, 128, 64, 32, 256, 256]


def test_unit_layer_out_map_feeds_the_right_columns():
    crelu = build_backbone("mlp", (1, 8, 8), 10, hidden=(5, 7), activation="crelu")
    first = crelu.unit_layers[0]
    assert first.outgoing.in_features == 10 and first.out_map.tolist()[2] == [2, 7]  # both branches of unit 2
    cnn = build_backbone("cnn", (3, 32, 32), 10)
    last = cnn.unit_layers[-1]
    assert last.out_map.shape == (64, 4) and last.out_map[1].tolist() == [4, 5, 6, 7]  # 2x2 positions per channel
    x = torch.randn(3, 3, 32, 32)
    with cnn.capture() as cap:
        cnn(x)
    assert set(cap) == {l.name for l in cnn.unit_layers}
    assert cnn.unit_layers[0].unit_activity(cap["conv0"]).shape == (3, 8)


def test_max_grad_norm_clips_the_shared_step_and_rejects_bad_values():
    """With SGD (lr 1) the update is minus the gradient, so its global norm is exactly max_grad_norm once clipped."""
    env = SupervisedStreamEnv("digits", "random_label", num_tasks=1, samples_per_task=32, batch_size=4)
    x = torch.rand(4, 1, 8, 8)
    moved = {}
    for clip in (None, 1e-3):
        agent = agents.make("base", env, optimizer="sgd", lr=1.0, max_grad_norm=clip)
        before = [p.detach().clone() for p in agent.network.parameters()]
        agent.learn(x, torch.arange(4))
        moved[clip] = float(torch.cat([(p.detach() - b).flatten()
                                       for p, b in zip(agent.network.parameters(), before)]).norm())
    assert moved[None] > 1e-2
    assert moved[1e-3] == pytest.approx(1e-3, rel=1e-3)
    for bad in (0, -1.0, "1", True):
        with pytest.raises(ValueError, match="max_grad_norm"):
            agents.make("base", env, max_grad_norm=bad)


@pytest.mark.parametrize("hidden", [[0], (), (-3, 5), (100, 2.5), 0])
def test_non_positive_or_missing_widths_are_refused(hidden):
    with pytest.raises(ValueError, match="hidden=.*(not positive integers|no layer)"):
        build_backbone("mlp", (1, 8, 8), 3, hidden=hidden)
    env_spec = {"input_shape": (1, 8, 8), "num_outputs": 3, "action_type": "labels", "backbone": "mlp",
                "task_aware": False, "num_tasks": 1, "device": "cpu"}
    for name in ("base", "crelu"):  # through an agent too (crelu scales the widths first)
        with pytest.raises(ValueError, match="hidden="):
            agents.make(name, env_spec, hidden=hidden, width_multiplier=0.5) if name == "crelu" else \
                agents.make(name, env_spec, hidden=hidden)
    with pytest.raises(ValueError, match="channels="):
        build_backbone("cnn", (1, 8, 8), 3, channels=(8, 0, 4))


def test_valid_widths_are_unchanged():
    import numpy as np

    net = build_backbone("mlp", (1, 8, 8), 3, hidden=[7, np.int64(5)])
    assert [l.num_units for l in net.unit_layers] == [7, 5]
