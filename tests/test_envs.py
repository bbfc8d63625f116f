"""SupervisedStreamEnv: the env checker, determinism, replay, stream semantics and input validation."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import clenv
from clenv.data import DatasetNotFoundError, clear_cache
from clenv.envs import INFO_KEYS, SupervisedStreamEnv
from clenv.streams import _label_map
from tests.disk_formats import write_cifar, write_image_folder, write_mnist

LOCAL_IDS = [d.id for d in clenv.ENV_TABLE if d.entry_point.endswith("SupervisedStreamEnv")
             and d.kwargs["dataset"] in ("digits", "fashion_mnist")]
DISK_IDS = [d.id for d in clenv.ENV_TABLE if d.entry_point.endswith("SupervisedStreamEnv")
            and d.kwargs["dataset"] not in ("digits", "fashion_mnist")]


def small(**kw):
    base = dict(dataset="digits", stream="random_label", num_tasks=3, samples_per_task=64, epochs_per_task=1,
                batch_size=16)
    return SupervisedStreamEnv(**{**base, **kw})


def rollout(env, seed, steps, options=None):
    obs, info = env.reset(seed=seed, options=options)
    out = [(obs.copy(), info)]
    rng = np.random.default_rng(123)
    for _ in range(steps):
        action = rng.integers(env.num_classes, size=env.batch_size)
        obs, r, term, trunc, info = env.step(action)
        out.append((obs.copy(), r, info))
        if term:
            break
    return out


@pytest.mark.parametrize("env_id", LOCAL_IDS)
def test_env_checker_passes_on_local_data(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped)
    assert env.spec.max_episode_steps is None


@pytest.fixture(scope="module")
def disk_root(tmp_path_factory):
    """Small files in the real formats of every torchvision-backed id."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=200, n_test=40)
    write_cifar(root, num_classes=10, per_class_train=20, per_class_test=2)
    write_cifar(root, num_classes=100, per_class_train=4, per_class_test=1)
    write_image_folder(root / "tiny-imagenet-200", num_classes=4, per_class=8, size=64, tiny_val=True)
    write_image_folder(root / "mini-imagenet", num_classes=3, per_class=10, size=84, split_dirs=("train",))
    write_image_folder(root / "imagenet", num_classes=6, per_class=4, size=48)
    clear_cache()
    yield root
    clear_cache()


@pytest.mark.parametrize("env_id", DISK_IDS)
def test_env_checker_passes_on_torchvision_formats(env_id, disk_root, monkeypatch):
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)  # official MD5s cannot match small files
    d = clenv.protocol(env_id)
    kw = {"data_root": str(disk_root)}
    if "samples_per_task" in d.kwargs:
        kw["samples_per_task"] = 64  # the files written are small; the protocol is otherwise the registered one
    if d.kwargs["dataset"] == "tiny_imagenet":
        kw["num_tasks"] = 2  # 4 classes written: 2 binary tasks
    if d.kwargs["dataset"] == "cifar10" and d.kwargs["stream"] == "class_split":
        kw["batch_size"] = 16
    env = gym.make(env_id, **kw)
    check_env(env.unwrapped)


def test_registered_kwargs_are_the_paper_defaults():
    d = clenv.protocol("RandomLabelCIFAR10-v0")
    assert (d.kwargs["num_tasks"], d.kwargs["samples_per_task"], d.kwargs["epochs_per_task"],
            d.kwargs["batch_size"], d.gamma) == (100, 1200, 50, 16, 187)
    env = gym.make("RandomLabelFashionMNIST-v0")
    assert env.unwrapped.steps_per_task(0) == 200 * 1200 // 16
    assert clenv.protocol("PermutedMNIST-v0").gamma == 1_0000 // 64


def test_every_protocol_knob_is_a_make_kwarg():
    env = gym.make("RandomLabelFashionMNIST-v0", num_tasks=2, samples_per_task=32, epochs_per_task=2,
                   batch_size=8, augment=False, device="cpu", task_aware=True, data_root=None)
    u = env.unwrapped
    assert (u.num_tasks, u.batch_size, u.steps_per_task(0), u.augmentation) == (2, 8, 8, None)
    assert isinstance(env.observation_space, gym.spaces.Dict)


def test_same_seed_same_stream_other_seed_differs():
    a, b, c = rollout(small(augment=True), 5, 10), rollout(small(augment=True), 5, 10), rollout(small(augment=True), 6, 10)
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1] == y[1]
        np.testing.assert_array_equal(x[2]["labels"], y[2]["labels"])
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))


def test_eval_env_replays_task_k_exactly():
    env = small(num_tasks=4, epochs_per_task=2, augment=True)
    full = rollout(env, 3, 10_000)
    per_task = env.steps_per_task(0)
    k = 2
    ev = env.eval_env()
    replay = rollout(ev, None, 10_000, options={"task_id": k})
    # the stream's task-k observations start right after task k-1's last step
    start = k * per_task
    assert len(replay) - 1 == per_task
    np.testing.assert_array_equal(replay[0][0], full[start][0])
    for i in range(1, per_task):
        np.testing.assert_array_equal(replay[i][0], full[start + i][0])
        np.testing.assert_array_equal(replay[i][2]["labels"], full[start + i][2]["labels"])
    assert replay[-1][2]["labels_task_id"] == k


def test_tasks_are_pure_functions_of_seed_and_index():
    env = small(num_tasks=5)
    s = env.stream
    late_first = s.task(11, 4)
    fresh = small(num_tasks=5).stream
    for k in range(5):
        fresh.task(11, k)
    np.testing.assert_array_equal(late_first.train_indices, fresh.task(11, 4).train_indices)
    np.testing.assert_array_equal(late_first.train_labels, fresh.task(11, 4).train_labels)


def test_random_labels_change_per_task_and_ignore_true_labels():
    env = small(num_tasks=3, samples_per_task=400)
    env.reset(seed=0)
    t0, t1 = env.task(0), env.task(1)
    assert not np.array_equal(t0.train_labels, t1.train_labels)
    true = env.dataset.train.labels.numpy()[t0.train_indices]
    assert np.mean(true == t0.train_labels) < 0.3


def test_label_shuffle_maps_differ_between_consecutive_tasks():
    for seed in range(20):
        maps = [_label_map(seed, k, 2) for k in range(30)]
        assert all(not np.array_equal(a, b) for a, b in zip(maps, maps[1:]))
    env = small(stream="label_shuffle", samples_per_task=None, num_tasks=2)
    env.reset(seed=1)
    t = env.task(1)
    true = env.dataset.train.labels.numpy()[t.train_indices]
    m = env.stream.label_map(env.stream_seed, 1)
    np.testing.assert_array_equal(t.train_labels, m[true])


def test_permuted_task_is_the_image_with_its_pixels_permuted():
    env = small(stream="permuted", num_tasks=2)
    obs, info = env.reset(seed=0)
    t = env.task(0)
    x, y = next(env.test_batches(0, batch_size=5))
    raw = env.dataset.test.images[t.test_indices[:5]].reshape(5, -1)
    np.testing.assert_array_equal(x.reshape(5, -1).numpy(), raw[:, t.permutations[0]].numpy())
    assert not np.array_equal(env.task(1).permutations, t.permutations)


def test_class_split_tasks_are_disjoint_and_labelled_by_class():
    env = SupervisedStreamEnv("digits", "class_split", num_tasks=5, classes_per_task=2, batch_size=8)
    env.reset(seed=0)
    seen = set()
    for k in range(5):
        t = env.task(k)
        assert len(t.classes) == 2 and not seen & set(t.classes)
        seen |= set(t.classes)
        assert set(np.unique(t.train_labels)) == set(t.classes)
    local = SupervisedStreamEnv("digits", "class_split", num_tasks=5, classes_per_task=2, labels="local")
    local.reset(seed=0)
    assert local.num_classes == 2 and set(np.unique(local.task(3).train_labels)) == {0, 1}
    with pytest.raises(ValueError, match="disjoint"):
        SupervisedStreamEnv("digits", "class_split", num_tasks=6, classes_per_task=2)


def test_recurring_task_returns_every_third_task():
    env = small(num_tasks=7, recurring_every=3)
    env.reset(seed=0)
    t = [env.task(k) for k in range(7)]
    for k in (3, 6):
        np.testing.assert_array_equal(t[k].train_labels, t[0].train_labels)
        np.testing.assert_array_equal(t[k].train_indices, t[0].train_indices)
    fresh = [1, 2, 4, 5]
    for i in fresh:
        assert not np.array_equal(t[i].train_labels, t[0].train_labels)
    assert len({t[i].train_labels.tobytes() for i in fresh}) == 4


def test_joint_training_task_is_the_union_so_far():
    env = small(num_tasks=3, joint=True, steps_per_task=5, stream="permuted")
    env.reset(seed=0)
    single = small(num_tasks=3, stream="permuted")
    single.reset(options={"stream_seed": env.stream_seed})
    t2 = env.task(2)
    assert t2.num_train == sum(single.task(k).num_train for k in range(3))
    np.testing.assert_array_equal(t2.permutations, np.concatenate([single.task(k).permutations for k in range(3)]))
    assert env.steps_per_task(2) == 5


def test_augmentation_is_per_task_deterministic_and_changes_images():
    plain = rollout(small(augment=False), 0, 3)
    aug = rollout(small(augment=True), 0, 3)
    assert not np.array_equal(plain[1][0], aug[1][0])
    np.testing.assert_array_equal(plain[1][2]["labels"], aug[1][2]["labels"])  # augmentation leaves labels alone
    from clenv.data import Augmentation
    import torch

    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(Augmentation.apply(x, torch.zeros(4, 4)), x)  # zero shift/flip/angle is the identity
    flipped = Augmentation.apply(x, torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 4))
    assert torch.equal(flipped, x.flip(-1))


def test_info_schema_is_stable_and_stream_terminates():
    env = small(num_tasks=2, samples_per_task=32)
    obs, info = env.reset(seed=0)
    assert tuple(info) == INFO_KEYS and info["task_switch"] and info["task_id"] == 0
    switches, steps = [], 0
    while True:
        obs, r, term, trunc, info = env.step(np.zeros(16, np.int64))
        steps += 1
        assert tuple(info) == INFO_KEYS and trunc is False and isinstance(r, float)
        if info["task_switch"]:
            switches.append(info["task_id"])
        if term:
            break
    assert steps == env.total_steps == 4 and switches == [1]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(16, np.int64))


def test_task_aware_observation_carries_the_task_id():
    env = small(task_aware=True, num_tasks=2, samples_per_task=16)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"x", "task_id"} and obs["task_id"] == 0
    obs, *_ = env.step(np.zeros(16, np.int64))
    assert obs["task_id"] == 1
    check_env(env)


@pytest.mark.parametrize("action, message", [
    (np.zeros(15, np.int64), "shape"),
    (np.zeros((16, 10), np.float32), "logits"),
    (np.zeros(16, np.float64), "integer"),
    (np.full(16, 10), r"0\.\.9"),
    (np.full(16, -1), r"0\.\.9"),
])
def test_bad_actions_are_rejected_and_the_stream_does_not_advance(action, message):
    env, ref = small(), small()
    env.reset(seed=0), ref.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)
    good = np.zeros(16, np.int64)
    a, b = env.step(good), ref.step(good)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[4]["step"] == b[4]["step"] == 1


def test_logit_actions_validate_nan_and_shape():
    env = small(action_type="logits")
    env.reset(seed=0)
    bad = np.zeros((16, 10), np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"\(16, 10\)"):
        env.step(np.zeros(16, np.int64))
    logits = np.zeros((16, 10), np.float32)
    logits[:, 4] = 1.0
    _, r, _, _, info = env.step(logits)
    assert r == np.mean(info["labels"] == 4)
    check_env(env)


def test_unknown_kwarg_and_bad_values_get_clear_errors():
    with pytest.raises(TypeError, match="unknown keyword.*epochs.*valid"):
        gym.make("RandomLabelDigits-v0", epochs=3)
    with pytest.raises(TypeError, match="class_split"):
        gym.make("RandomLabelDigits-v0", classes_per_task=2)
    with pytest.raises(ValueError, match="samples_per_task"):
        gym.make("RandomLabelDigits-v0", samples_per_task=10**6)
    with pytest.raises(ValueError, match="batch_size"):
        gym.make("RandomLabelDigits-v0", batch_size=0)


def test_missing_data_root_is_a_clear_error(tmp_path):
    clear_cache()
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        gym.make("RandomLabelCIFAR10-v0", data_root=str(tmp_path), download=False)


def test_colon_form_works_without_importing_clenv():
    code = ("import gymnasium as gym; e = gym.make('clenv:RandomLabelDigits-v0', num_tasks=2); "
            "o, i = e.reset(seed=0); print(o.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(16, 1, 8, 8)" in out.stdout


def test_torch_output_matches_numpy_output():
    import torch

    a, b = small(augment=True), small(augment=True, output="torch")
    oa, _ = a.reset(seed=4)
    ob, _ = b.reset(seed=4)
    assert isinstance(ob, torch.Tensor) and ob.dtype == torch.uint8
    np.testing.assert_array_equal(oa, ob.numpy())
    action = np.zeros(16, np.int64)
    for _ in range(5):
        (oa, ra, *_), (ob, rb, *_) = a.step(action), b.step(torch.as_tensor(action))
        np.testing.assert_array_equal(oa, ob.numpy())
        assert ra == rb


def test_gymnasium_vector_env_runs_independent_streams():
    venv = gym.make_vec("RandomLabelDigits-v0", num_envs=2, vectorization_mode="sync", num_tasks=2,
                        samples_per_task=32)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (2, 16, 1, 8, 8)  # (N sub-envs, batch, ...): two runs, not a bigger batch
    assert not np.array_equal(obs[0], obs[1])
    obs, reward, term, trunc, info = venv.step(np.zeros((2, 16), np.int64))
    assert reward.shape == (2,) and info["labels"].shape == (2, 16)
    venv.close()
