"""The NGM-SGD stream kinds (rotated, ordered_split), the joint ids built on them and the stored reference numbers."""

import numpy as np
import pytest
import torch

import agents
import clenv
from clenv.envs import SupervisedStreamEnv
from clenv.streams import rotation_map


def test_rotation_map_is_exact_at_right_angles_and_matches_torchvision():
    import torchvision.transforms.functional as TF

    img = torch.arange(2 * 6 * 6).reshape(1, 2, 6, 6)
    flat = img.reshape(1, -1)
    assert torch.equal(flat[:, torch.as_tensor(rotation_map((2, 6, 6), 0))], flat)
    rot90 = flat[:, torch.as_tensor(rotation_map((2, 6, 6), 90))].reshape(img.shape)
    assert torch.equal(rot90, torch.rot90(img, 1, dims=(-2, -1)))  # counter-clockwise, per channel
    # 80 and 160 degrees: torchvision's nearest-neighbour rotate with zero fill, on images whose corner is 0
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 1, 28, 28), generator=g, dtype=torch.uint8)
    x[:, :, 0, 0] = 0
    for deg in (80, 160):
        ours = x.reshape(16, -1)[:, torch.as_tensor(rotation_map((1, 28, 28), deg))].reshape(x.shape)
        theirs = TF.rotate(x, deg, interpolation=TF.InterpolationMode.NEAREST, fill=0)
        assert (ours == theirs).float().mean() > 0.995  # rounding ties at a few pixels may differ


def env(stream, **kw):
    base = dict(dataset="digits", stream=stream, num_tasks=3, joint=True, steps_per_task=4, batch_size=16)
    return SupervisedStreamEnv(**{**base, **kw})


def test_rotated_stream_rotates_each_context_by_80_degrees_and_keeps_labels():
    e = env("rotated")
    e.reset(seed=1)
    assert [e.stream.angle(b) for b in range(3)] == [0.0, 80.0, 160.0]
    plain = SupervisedStreamEnv(dataset="digits", stream="rotated", num_tasks=3)
    plain.reset(options={"stream_seed": e.stream_seed})
    for k in (1, 2):
        (x, y), = plain.test_batches(k, batch_size=10, max_samples=10)
        t = plain.task(k)
        raw = plain.dataset.test.images[t.test_indices[:10]]
        m = torch.as_tensor(rotation_map((1, 8, 8), 80.0 * k))
        assert torch.equal(x, raw.reshape(10, -1)[:, m].reshape(raw.shape))
        assert torch.equal(y, plain.dataset.test.labels[t.test_indices[:10]])
    joint = e.task(2)  # the union of the three contexts, sampled with replacement
    assert joint.with_replacement and joint.permutations.shape[0] == 3
    assert set(np.unique(joint.train_perm_ids)) == {0, 1, 2}


def test_ordered_split_takes_class_pairs_in_the_datasets_order_and_is_pure():
    e = env("ordered_split", num_tasks=5)
    e.reset(seed=3)
    assert [e.task(k).classes for k in range(2)] == [(0, 1), (0, 1, 2, 3)]
    a = e.stream.task(7, 3)
    fresh = env("ordered_split", num_tasks=5).stream.task(7, 3)  # no earlier task asked for
    assert np.array_equal(a.train_indices, fresh.train_indices)
    assert set(np.unique(a.train_labels)) == set(range(8))
    with pytest.raises(ValueError, match="samples_per_task"):
        env("ordered_split", num_tasks=5, samples_per_task=10)
    with pytest.raises(ValueError, match="at least one class per task"):
        env("ordered_split", num_tasks=11)


def test_joint_ids_carry_the_authors_protocol():
    split, rot = clenv.protocol("JointSplitFashionMNIST-v0"), clenv.protocol("JointRotatedFashionMNIST-v0")
    assert {k: split.kwargs[k] for k in ("num_tasks", "steps_per_task", "batch_size", "joint")} == \
        dict(num_tasks=5, steps_per_task=200, batch_size=128, joint=True)
    assert {k: rot.kwargs[k] for k in ("num_tasks", "steps_per_task", "batch_size", "stream")} == \
        dict(num_tasks=3, steps_per_task=400, batch_size=128, stream="rotated")
    cifar = clenv.protocol("JointSplitCIFAR10-v0")
    assert (cifar.kwargs["steps_per_task"], cifar.kwargs["batch_size"], cifar.backbone) == (400, 256, "resnet18")
    assert (split.benchmark, rot.benchmark, cifar.benchmark) == ("ngm_split_mnist", "ngm_rotated_mnist",
                                                                  "ngm_split_cifar10")


def test_ngm_reference_numbers_are_the_specs():
    from clenv.app.paper_tables import NGM_TABLE
    from clenv.protocols import BENCHMARKS

    cells = {(c.benchmark, c.method, c.metric): (c.mean, c.std) for c in NGM_TABLE.cells}
    assert cells[("ngm_split_cifar10", "NGM-SGD", "ngm_avg_acc")] == (90.630, 1.576)
    assert cells[("ngm_split_mnist", "MSGD", "ngm_avg_sg")][0] == pytest.approx(26.7)
    assert set(NGM_TABLE.benchmarks) <= set(BENCHMARKS)
    for m in NGM_TABLE.methods:
        agents.agent_class(m.agent)


def test_superclass_domain_splits_every_superclass_across_tasks_and_labels_by_superclass():
    from clenv.streams import CIFAR100_COARSE, SuperclassDomainStream

    coarse = np.asarray(CIFAR100_COARSE)
    assert np.array_equal(np.bincount(coarse), np.full(20, 5))
    assert (coarse[0], coarse[4], coarse[30], coarse[13]) == (4, 0, 0, 18)  # apple, beaver, dolphin, bus
    fine = np.repeat(np.arange(100), 3)
    s = SuperclassDomainStream(num_train=300, num_test=300, num_classes=100, num_tasks=3, train_labels_all=fine,
                               test_labels_all=fine)
    groups = [s.task_classes(5, b) for b in range(3)]
    assert sorted(np.concatenate(groups).tolist()) == list(range(100))  # disjoint, together every fine class
    assert [len(g) for g in groups] == [40, 40, 20]  # 2, 2 and 1 fine classes of each of the 20 superclasses
    for g in groups:
        assert set(coarse[g]) == set(range(20))
    t = s.task(5, 1)
    assert np.array_equal(t.train_labels, coarse[fine[t.train_indices]]) and s.num_outputs == 20
    with pytest.raises(ValueError, match="100 fine classes"):
        SuperclassDomainStream(num_train=10, num_test=10, num_classes=10, num_tasks=3,
                               train_labels_all=np.arange(10), test_labels_all=np.arange(10))
