"""The adapter-memory agent and its protocols (004_49f6201e6e679480.txt; issue 16): one q / v LoRA adapter + head per
task on a frozen ViT, written to the exact, Hopfield and BayesPCN memories, recalled under TIL and MTS."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from agents.adapters.layer import adapted_layers
from agents.adapters.memory import adapter_layout, adapter_vector
from agents.adapters.memory.agent import AdapterMemoryAgent
from agents.common.schedules import schedule_factor
from agents.adapters.vit import CompactViT, pretrained_vit, vit_config, vit_path
from clenv.probes import AdapterRecall
from tests.disk_formats import write_cifar, write_image_folder

# A random 1-block ViT for the tests of the mechanism; the tests of what is learned use a small pretrained one.
SMALL = dict(base_model="random", base_dim=16, base_depth=1, base_heads=2, base_mlp_dim=32, predictor_epochs=1)


def _env(**kw):
    """Split Fashion-MNIST 5S at 100 images per class, batch 16: 36 steps per task."""
    return gym.make("SplitFashionMNIST-5S-v0", **{"samples_per_class": 100, "batch_size": 16, **kw})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 1-block, 32-wide ViT pretrained for 200 steps on digits upsampled to 28 x 28 (about 10 s)."""
    return pretrained_vit("fashion_mnist", (1, 28, 28), {"steps": 200, "dim": 32, "depth": 1, "heads": 2,
                                                         "mlp_dim": 32},
                          cache_dir=tmp_path_factory.mktemp("models"), progress=False)


def _run(base, seed=0, mts=True, **hp):
    env = _env()
    agent = agents.make("adapter_memory", env, **{**SMALL, "base_model": base, **hp})
    vectors = {}
    commit = agent.commit_task

    def spy():  # the adapter as trained, captured just before each write
        if not agent._committed and agent.task_id is not None:
            vectors[int(agent.task_id)] = adapter_vector(agent.network).clone()
        return commit()

    agent.commit_task = spy
    result = clenv.run(env, agent, seed=seed, progress=False,
                       callbacks=[AdapterRecall(mts=mts, samples=200, predictor_samples=200)])
    return agent, result, vectors


@pytest.fixture(scope="module")
def run(base):
    return _run(base)


def test_exact_store_recall_is_bit_identical_and_its_d_is_zero(run):
    agent, result, vectors = run
    assert sorted(vectors) == list(range(5)) and agent.stored_tasks == list(range(5))
    for t, v in vectors.items():
        assert torch.equal(agent.recalled_adapter(t, "exact"), v)
        assert agent.recall_error(t, "exact") == 0.0
    # MTS through the exact store with every task predicted right is TIL exactly
    m = result.metrics
    assert m["d_mts_exact"] == pytest.approx(m["faa_gt"] - m["faa_mts_exact"], abs=0)
    assert 0.0 <= m["task_acc"] <= 1.0


def test_hopfield_recall_is_within_the_bound_set_by_beta_and_the_key_gaps(run):
    agent, result, vectors = run
    keys = torch.stack([agent.keys[t].double() for t in range(5)])
    keys = keys / keys.norm(dim=1, keepdim=True)
    sim = keys @ keys.T
    values = torch.stack([vectors[t].double()[keys.shape[1]:] for t in range(5)])
    for i in range(5):
        gap = 1.0 - max(float(sim[i, j]) for j in range(5) if j != i)
        spread = max(float((values[j] - values[i]).norm()) for j in range(5))
        bound = 4 * math.exp(-agent.hparams["beta"] * gap) * spread
        # the recall error is the value part's (the key is given back as it is); float32 storage adds ~1e-7 relative
        assert agent.recall_error(i, "hopfield") <= bound + 1e-6 * float(values[i].norm())
    # fresh random A per task: the keys are far apart, so the bound is tiny and Hopfield matches the exact store
    assert abs(result.metrics["d_til_hopfield"]) < 0.005


def test_metrics_are_the_records_means_and_d_is_their_difference(run):
    _, result, _ = run
    rec, m = result.records["adapter_recall"], result.metrics
    for name in ("hopfield", "bayespcn"):
        assert m[f"faa_til_{name}"] == pytest.approx(np.mean(rec["til_accuracy"][name]), abs=1e-12)
        assert m[f"d_til_{name}"] == pytest.approx(m["faa_gt"] - m[f"faa_til_{name}"], abs=1e-12)
        assert m[f"recall_error_{name}"] == pytest.approx(np.mean(rec["recall_error"][name]), abs=1e-12)
    assert m["faa_gt"] == pytest.approx(np.mean(rec["til_accuracy"]["exact"]), abs=1e-12)
    assert m["task_acc"] == pytest.approx(np.mean(rec["task_accuracy"]), abs=1e-12)
    # the exact store keeps every pair; Hopfield keeps K and V, the same numbers; BayesPCN a fixed-size network
    assert m["memory_bytes_exact"] == m["adapter_bytes"] == m["memory_bytes_hopfield"]
    assert m["memory_bytes_bayespcn"] > 0


def test_the_adapters_learn_their_tasks(run):
    _, result, _ = run
    # 2-class Fashion-MNIST tasks, 36 steps each on a small pretrained base: chance is 0.5 and this setting reaches
    # about 0.9; a broken head, schedule, reset or install sits near chance
    assert result.metrics["faa_gt"] > 0.75


def test_the_base_stays_frozen_and_each_task_gets_a_fresh_adapter():
    env = _env()
    agent = agents.make("adapter_memory", env, **SMALL)
    frozen = {n: p.detach().clone() for n, p in agent.network.named_parameters() if not p.requires_grad}
    seen = {}
    original = agent.on_task_switch

    def switch(task_id):
        original(task_id)
        seen[task_id] = adapter_vector(agent.network).clone()
        seen[("lr", task_id)] = [g["lr"] for g in agent.optimizer.param_groups]
        seen[("state", task_id)] = len(agent.optimizer.state)

    agent.on_task_switch = switch
    clenv.run(env, agent, seed=0, progress=False)
    assert frozen and all(torch.equal(p, dict(agent.network.named_parameters())[n]) for n, p in frozen.items())
    for t in range(1, 5):
        assert seen[("state", t)] == 0  # a fresh optimiser: no moments carried over
        layers = adapted_layers(agent.network)
        assert len(layers) == 2  # query and value of the one block
    first_a = [seen[t][:8 * 16] for t in range(5)]  # the first layer's A (rank 8 x width 16) leads the vector
    assert all(not torch.equal(first_a[0], a) for a in first_a[1:])
    # B starts at 0 each task (every adapter's initial update is exactly zero)
    offset = 0
    for name, shape in adapter_layout(agent.network):
        n = int(np.prod(shape))
        if name.endswith("lora_B"):
            assert all(torch.count_nonzero(seen[t][offset:offset + n]) == 0 for t in range(1, 5))
        offset += n


def test_learning_rate_decays_within_each_task_from_5e_3_to_1e_4():
    env = _env()
    agent = agents.make("adapter_memory", env, **SMALL)
    lrs = []
    original = agent.apply_lr_schedule

    def record(optimizer=None):
        original(optimizer)
        lrs.append((agent.task_id, agent.optimizer.param_groups[0]["lr"]))

    agent.apply_lr_schedule = record
    clenv.run(env, agent, seed=0, progress=False)
    steps = env.unwrapped.steps_per_task(0)
    assert steps == 36  # 200 images // 16 = 12 full batches per epoch, 3 epochs
    task0 = [lr for t, lr in lrs if t == 0]
    assert len(task0) == steps
    assert task0[0] == pytest.approx(5e-3) and task0[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(task0, task0[1:]))
    task1 = [lr for t, lr in lrs if t == 1]
    assert task1[0] == pytest.approx(5e-3)  # the schedule restarts with the task
    assert schedule_factor("cosine", 5, 11) == pytest.approx(0.5)


def test_same_seed_same_numbers(base):
    a = _run(base, seed=3, mts=False)[1].metrics
    b = _run(base, seed=3, mts=False)[1].metrics
    keys = [k for k in a if k.startswith(("faa", "d_", "recall_error"))]
    assert keys and all(a[k] == b[k] for k in keys)


def test_bad_input_installs_nothing(run, base):
    agent = run[0]
    before = adapter_vector(agent.network).clone()
    with pytest.raises(ValueError, match="entries"):
        with agent.using_adapter(before[:-1]):
            pass
    assert torch.equal(adapter_vector(agent.network), before)
    with pytest.raises(ValueError, match="non-finite"):
        with agent.using_adapter(torch.full_like(before, float("nan"))):
            pass
    assert torch.equal(adapter_vector(agent.network), before)
    with pytest.raises(KeyError, match="no adapter"):
        agent.recalled_adapter(7, "hopfield")
    with pytest.raises(KeyError, match="no memory"):
        agent.recalled_adapter(0, "disk")
    with pytest.raises(ValueError, match="query has 3 entries"):
        agent.memories["hopfield"].read(torch.zeros(3))
    # an adapter of another rank: another layout
    other = agents.make("adapter_memory", _env(), **{**SMALL, "base_model": base, "rank": 4})
    with pytest.raises(ValueError):
        with agent.using_adapter(adapter_vector(other.network)):
            pass
    assert torch.equal(adapter_vector(agent.network), before)


def test_a_read_before_any_write_is_a_clear_error():
    agent = agents.make("adapter_memory", _env(), **SMALL)
    with pytest.raises(KeyError, match="written: \\[\\]"):
        agent.recalled_adapter(0)
    with pytest.raises(RuntimeError, match="empty"):
        agent.memories["bayespcn"].read(torch.zeros(10))
    with pytest.raises(RuntimeError, match="fit_task_predictor"):
        agent.predict_task(torch.zeros(1, 1, 28, 28))


def test_refuses_streams_it_cannot_adapt_to_and_bad_memories():
    with pytest.raises(ValueError, match="image classification"):
        agents.make("adapter_memory", gym.make("ConceptShiftRegression-v0"), **SMALL)
    with pytest.raises(ValueError, match="'exact'"):
        agents.make("adapter_memory", _env(), memories=("hopfield",), **SMALL)
    with pytest.raises(TypeError, match="adapter_memory"):
        clenv.run(_env(), agents.make("base", _env()), seed=0, progress=False, callbacks=[AdapterRecall()])
    with pytest.raises(ValueError, match="hides task ids"):
        agents.make("adapter_memory", _env(), **SMALL).on_task_switch(None)


def test_checkpointed_agent_round_trips_its_memories(run, base):
    agent = run[0]
    twin = agents.make("adapter_memory", _env(), **{**SMALL, "base_model": base})
    twin.load_state_dict(agent.state_dict())
    for t in range(5):
        for m in agent.memory_names:
            assert torch.equal(twin.recalled_adapter(t, m), agent.recalled_adapter(t, m))


def test_paper_split_ids_on_the_real_layouts(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # our small files have other checksums
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the decoded ImageFolder cache
    write_cifar(tmp_path, num_classes=100, per_class_train=2, per_class_test=1)
    small = dict(data_root=str(tmp_path), batch_size=2)  # the registered batch (64) needs more images than these
    env = gym.make("SplitCIFAR100-20S-v0", **small)
    u = env.unwrapped
    assert u.num_tasks == 20 and u.num_classes == 5 and u.epochs_per_task == 3
    assert gym.spec("SplitCIFAR100-20S-v0").kwargs["batch_size"] == 64
    env.reset(seed=0)
    classes = [set(u.task(t).train_labels.tolist()) for t in range(20)]
    assert all(c == set(range(5)) for c in classes)  # task-local labels
    env50 = gym.make("SplitCIFAR100-50S-v0", **small).unwrapped
    assert env50.num_tasks == 50 and env50.num_classes == 2
    write_image_folder(tmp_path / "tiny-imagenet-200", num_classes=200, per_class=1, size=64, tiny_val=True)
    tin = gym.make("SplitTinyImageNet-100S-v0", **small).unwrapped
    assert tin.num_tasks == 100 and tin.num_classes == 2
    assert tin.observation_space.shape[1:] == (3, 64, 64)
    agent = agents.make("adapter_memory", gym.make("SplitTinyImageNet-50S-v0", **small), **SMALL)
    assert agent.network.patch == 16 and agent.num_outputs == 4


def test_pretrained_base_is_cached_reproducible_and_disjoint(tmp_path):
    cfg = vit_config("fashion_mnist", (1, 28, 28), {"steps": 3, "dim": 16, "depth": 1, "heads": 2, "mlp_dim": 16})
    assert cfg["data"] == "digits"  # Fashion-MNIST tasks: a base that never saw Fashion-MNIST
    assert vit_config("digits", (1, 8, 8))["data"] == "fashion_mnist"
    with pytest.raises(FileNotFoundError, match="python -m agents.adapters.vit"):
        pretrained_vit("fashion_mnist", (1, 28, 28), {"steps": 3}, cache_dir=tmp_path, train_if_missing=False)
    small = {k: cfg[k] for k in ("steps", "dim", "depth", "heads", "mlp_dim")}
    a = pretrained_vit("fashion_mnist", (1, 28, 28), small, cache_dir=tmp_path, progress=False)
    assert vit_path(cfg, tmp_path).exists()
    b = pretrained_vit("fashion_mnist", (1, 28, 28), small, cache_dir=tmp_path, train_if_missing=False)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert vit_path(vit_config("fashion_mnist", (1, 28, 28), {**small, "seed": 1}), tmp_path) != vit_path(cfg, tmp_path)
    with pytest.raises(ValueError, match="unknown ViT base setting"):
        vit_config("fashion_mnist", (1, 28, 28), {"width": 3})


def test_vit_refuses_images_of_another_shape():
    net = CompactViT((1, 8, 8), 3, dim=16, depth=1, heads=2, mlp_dim=16)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        net(torch.zeros(2, 1, 28, 28))
    assert isinstance(agents.make("adapter_memory", _env(), **SMALL), AdapterMemoryAgent)


def test_example_runs_and_refuses_a_wrong_layout(capsys):
    from examples.adapter_memory import main

    m = main(["--samples-per-class", "64", "--predictor-epochs", "1", "--base-model", "random",
              "--recall-samples", "200"])
    out = capsys.readouterr().out
    assert "refused: the adapter vector has" in out and "FAA_GT" in out
    assert m["d_mts_exact"] == pytest.approx(m["faa_gt"] - m["faa_mts_exact"], abs=1e-12)


def test_killed_and_resumed_run_ends_identical(tmp_path):
    from tests.test_checkpoint import assert_same

    def fresh():
        env = _env(samples_per_class=48)  # 6 steps per task, 30 in all
        return env, agents.make("adapter_memory", env, **SMALL)

    env, agent = fresh()
    full = clenv.run(env, agent, seed=2, progress=False, callbacks=[AdapterRecall(mts=False, samples=100)])
    env, agent = fresh()
    clenv.run(env, agent, seed=2, progress=False, total_steps=14,  # killed in task 2, after two writes
              callbacks=[clenv.Checkpoint(tmp_path, every=4), AdapterRecall(mts=False, samples=100)])
    env, agent = fresh()
    resumed = clenv.resume(tmp_path, env, agent, seed=2, progress=False,
                           callbacks=[AdapterRecall(mts=False, samples=100)])
    assert_same(resumed, full)
    assert resumed.metrics["faa_gt"] == full.metrics["faa_gt"]
    assert resumed.metrics["recall_error_bayespcn"] == full.metrics["recall_error_bayespcn"]
