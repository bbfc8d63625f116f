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
    if "memory" in d.tags:  # the adapter-memory splits: batch 64 of few written images; 4 Tiny-ImageNet classes
        kw["batch_size"] = 2
        if d.kwargs["dataset"] == "tiny_imagenet":
            kw["num_tasks"] = 4 // d.kwargs["classes_per_task"]
    if d.kwargs["dataset"] == "mini_imagenet" and d.kwargs["stream"] == "class_split":
        kw.update(num_tasks=3, classes_per_task=1, samples_per_class=8, batch_size=4)  # 3 classes of 10 written
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


def _views(env, seed):
    """{(task, epoch): {task position: served image}} over a whole run (positions from the epoch's own order)."""
    env.reset(seed=seed)
    out, per_epoch = {}, env.steps_per_task(0) // env.epochs_per_task
    for i in range(env.total_steps):
        task, j = divmod(i, env.steps_per_task(0))
        epoch, b = divmod(j, per_epoch)
        order = env._epoch(task, epoch).order
        x = env._batch(type(env._cursor)(task, j))[0]
        for p, img in zip(order[b * env.batch_size:(b + 1) * env.batch_size], np.asarray(x)):
            out.setdefault((task, epoch), {})[int(p)] = img
    return out


@pytest.mark.parametrize("mode", ["per_task", "per_epoch"])
def test_augment_modes_fix_a_view_per_sample_per_task_or_redraw_it_every_epoch(mode):
    # A sample is served at most once per epoch (the last partial batch's are left out); per_task serves it the same
    # way in every epoch of its task and differently in another task (the same dataset rows: samples_per_task=None
    # takes the whole split).
    env = _digits(num_tasks=2, samples_per_task=None, epochs_per_task=3, augment=mode)
    assert env.config["augment"] == mode
    views = _views(env, 4)
    same = [np.array_equal(views[(0, 0)][p], views[(0, e)][p]) for e in (1, 2) for p in views[(0, 0)]
            if p in views[(0, e)]]
    assert len(same) > 2000
    if mode == "per_task":
        assert all(same)
    else:  # 1-pixel shifts, flips, +-15 degrees: a redraw leaves at most a few percent of images unchanged
        assert np.mean(same) < 0.1
    t0, t1 = env.task(0), env.task(1)
    row0 = {int(t0.train_indices[p]): img for p, img in views[(0, 0)].items()}
    row1 = {int(t1.train_indices[p]): img for p, img in views[(1, 0)].items()}
    shared = sorted(set(row0) & set(row1))
    assert len(shared) > 100 and np.mean([np.array_equal(row0[r], row1[r]) for r in shared]) < 0.1
    again = _views(_digits(num_tasks=2, samples_per_task=None, epochs_per_task=3, augment=mode), 4)
    assert all(np.array_equal(again[k][p], v[p]) for k, v in views.items() for p in v)


def test_augment_true_is_the_default_mode_and_unknown_modes_are_refused():
    from clenv.envs.supervised import DEFAULT_AUGMENT

    assert _digits(augment=True).config["augment"] == DEFAULT_AUGMENT
    assert _digits(augment=False).config["augment"] is False
    with pytest.raises(TypeError, match="'per_task', 'per_epoch'.*'per-task'"):
        _digits(augment="per-task")


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
    (np.r_[np.zeros(15, np.int64), 10], r"0\.\.9"),
    (np.r_[np.zeros(15, np.int64), -(2 ** 63)], r"0\.\.9"),
    (np.full(16, 2 ** 64 - 1, np.uint64), r"0\.\.9"),
])
@pytest.mark.parametrize("scoring", ["python", "numpy"])
def test_bad_actions_are_rejected_and_the_stream_does_not_advance(action, message, scoring, monkeypatch):
    import clenv.envs.supervised as sup

    if scoring == "numpy":  # batches above the threshold are checked with numpy
        monkeypatch.setattr(sup, "PYTHON_SCORING_MAX_BATCH", 0)
    env, ref = small(), small()
    env.reset(seed=0), ref.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)
    good = np.zeros(16, np.int64)
    a, b = env.step(good), ref.step(good)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[4]["step"] == b[4]["step"] == 1


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64])
def test_python_and_numpy_scoring_count_the_same_correct_labels(dtype, monkeypatch):
    """Small batches are scored as Python ints, larger ones with numpy: the same reward for every action dtype."""
    import clenv.envs.supervised as sup

    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 10, 16).astype(dtype) for _ in range(6)]
    rewards = {}
    for limit in (256, 0):
        monkeypatch.setattr(sup, "PYTHON_SCORING_MAX_BATCH", limit)
        env = small(num_tasks=2)
        env.reset(seed=3)
        out = []
        for a in actions:
            labels = env._labels.copy()
            out.append(env.step(a)[1])
            assert out[-1] == np.count_nonzero(a.astype(np.int64) == labels) / 16
        rewards[limit] = out
    assert rewards[256] == rewards[0] and len(set(rewards[0])) > 1


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


# ---------------------------------------------------------------------------------------------------- "numbers users
# can trust": augmentation order, refused resets, refused kwargs, the steps-per-task rule

def _unpermute(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    flat = x.reshape(x.shape[0], -1)
    out = np.empty_like(flat)
    out[:, perm] = flat  # observed[:, i] = image[:, perm[i]]
    return out.reshape(x.shape)


def test_permuted_stream_augments_the_image_then_permutes_it():
    import torch

    from clenv.data import Augmentation

    env = small(stream="permuted", num_tasks=2, augment=True, samples_per_task=64)
    obs, _ = env.reset(seed=0)
    t = env.task(0)
    _, order, params, *_ = env._epoch(0, 0)  # the sample order and augmentation draws of task 0's first epoch
    for j in range(2):
        sel = order[j * 16:(j + 1) * 16]
        image = env.dataset.train.images[t.train_indices[sel]]
        augmented = Augmentation.apply(image, params[j * 16:(j + 1) * 16])
        assert not torch.equal(augmented, image)  # the draws really move pixels
        # Un-permuting what the agent sees gives the augmented original image.
        np.testing.assert_array_equal(_unpermute(obs, t.permutations[0]), augmented.numpy())
        obs, *_ = env.step(np.zeros(16, np.int64))


def test_permuted_stream_without_augmentation_is_unchanged_by_the_order():
    # augment=False: the observation is exactly the permuted image (no augmentation step to reorder).
    env = small(stream="permuted", num_tasks=2, samples_per_task=64)
    obs, _ = env.reset(seed=0)
    t = env.task(0)
    _, order, *_ = env._epoch(0, 0)
    raw = env.dataset.train.images[t.train_indices[order[:16]]].numpy()
    np.testing.assert_array_equal(_unpermute(obs, t.permutations[0]), raw)


def _run_out(env, action_seed=7):
    """Every remaining observation, reward and info of the current episode."""
    rng, out = np.random.default_rng(action_seed), []
    while True:
        obs, r, term, _, info = env.step(rng.integers(env.num_classes, size=env.batch_size))
        out.append((np.array(obs, copy=True), r, {k: np.array(v) for k, v in info.items()}))
        if term:
            return out


def _assert_same_run(a, b):
    assert len(a) == len(b)
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb and ia.keys() == ib.keys()
        for k in ia:
            np.testing.assert_array_equal(ia[k], ib[k])


BAD_RESETS = [
    (1, {"task_id": 3}),  # out of range, with a seed that would reseed the stream
    (None, {"task_id": -1}),
    (None, {"task_id": -0.75}),  # int() would make this task 0
    (None, {"task_id": 1.0}),  # whole floats are refused too (one rule for every integer)
    (None, {"task_id": float("nan")}),
    (2, {"task_id": True}),
    (None, {"task_id": "1"}),
    (3, {"stream_seed": 2.5}),
    (4, {"stream_seed": "12"}),
    (5, {"bogus": 1}),
    (6, [("task_id", 1)]),
    (-1, None),
    (1.5, None),
    ("3", None),
    (True, None),
]


@pytest.mark.parametrize("seed, options", BAD_RESETS)
def test_refused_reset_leaves_the_stream_where_it_was(seed, options):
    env, twin = small(augment=True), small(augment=True)
    for e in (env, twin):
        e.reset(seed=0)
        e.step(np.zeros(16, np.int64))
    with pytest.raises((ValueError, TypeError)) as err:
        env.reset(seed=seed, options=options)
    assert "must be" in str(err.value) or "unknown reset option" in str(err.value)
    assert env.stream_seed == twin.stream_seed
    assert env.np_random.bit_generator.state == twin.np_random.bit_generator.state
    _assert_same_run(_run_out(env), _run_out(twin))
    # The seedless reset draws the next stream seed from np_random: the refused reset did not reseed it.
    env.reset(), twin.reset()
    assert env.stream_seed == twin.stream_seed


def test_reset_task_id_must_be_an_integer_in_range():
    env = small()
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"task_id must be an integer.*-0\.75"):
        env.reset(options={"task_id": -0.75})
    with pytest.raises(TypeError, match=r"task_id.*pass 1"):
        env.reset(options={"task_id": 1.0})
    with pytest.raises(ValueError, match=r"task_id must be in 0\.\.2, got 3"):
        env.reset(options={"task_id": 3})
    # numpy integers are integers
    _, info = env.reset(options={"task_id": np.int64(2)})
    assert info["task_id"] == 2 and env.total_steps == env.steps_per_task(2)


def _digits(**kw):
    return SupervisedStreamEnv(**{**dict(dataset="digits", num_tasks=2, samples_per_task=32, batch_size=8), **kw})


@pytest.mark.parametrize("kw, name", [
    *[(dict(augment=v), "augment") for v in ("no", "false", "off", "0", "False", 0, 1, None)],
    (dict(task_aware="yes"), "task_aware"),
    (dict(joint="False", steps_per_task=4), "joint"),
    (dict(download="no"), "download"),
    (dict(num_tasks=2.5), "num_tasks"),
    (dict(num_tasks=3.0), "num_tasks"),
    (dict(num_tasks="3"), "num_tasks"),
    (dict(num_tasks=True), "num_tasks"),
    (dict(steps_per_task=0), "steps_per_task"),
    (dict(steps_per_task=-2), "steps_per_task"),
    (dict(steps_per_task=2.5), "steps_per_task"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(batch_size="8"), "batch_size"),
    (dict(batch_size=-1), "batch_size"),
    (dict(epochs_per_task=0), "epochs_per_task"),
    (dict(epochs_per_task=1.5), "epochs_per_task"),
    (dict(samples_per_task=0), "samples_per_task"),
    (dict(samples_per_task=32.5), "samples_per_task"),
    (dict(test_samples_per_task=0), "test_samples_per_task"),
    (dict(test_samples_per_task=10.5), "test_samples_per_task"),
    (dict(recurring_every=2.5), "recurring_every"),
    (dict(recurring_every=1), "recurring_every"),
    (dict(image_size=8.5), "image_size"),
    (dict(device="gpu0"), "device"),
    (dict(data_root=3), "data_root"),
    (dict(stream="class_split", samples_per_task=None, classes_per_task=2.5), "classes_per_task"),
    (dict(stream="class_split", samples_per_task=None, samples_per_class=0), "samples_per_class"),
    (dict(stream="class_split", samples_per_task=None, disjoint="yes"), "disjoint"),
])
def test_constructor_refuses_values_it_used_to_accept_silently(kw, name):
    with pytest.raises((TypeError, ValueError), match=name):
        _digits(**kw)


def test_string_flags_get_a_message_saying_to_pass_a_bool():
    with pytest.raises(TypeError, match=r"augment must be True, False or one of 'per_task', 'per_epoch', got 'no'"):
        _digits(augment="no")
    with pytest.raises(TypeError, match=r"num_tasks must be an integer, got 3\.0.*pass 3"):
        _digits(num_tasks=3.0)


def test_bad_kwargs_are_refused_before_any_data_is_loaded(tmp_path):
    # No CIFAR-10 at tmp_path: a loader call would raise DatasetNotFoundError; the kwarg check must come first.
    clear_cache()
    with pytest.raises(ValueError, match="steps_per_task"):
        SupervisedStreamEnv("cifar10", data_root=str(tmp_path), download=False, steps_per_task=0)
    with pytest.raises(TypeError, match="augment"):
        SupervisedStreamEnv("cifar10", data_root=str(tmp_path), download=False, augment="off")


def test_numpy_integers_and_bools_are_the_same_as_python_ones():
    a = _digits(num_tasks=np.int64(2), batch_size=np.int32(8), samples_per_task=np.int16(32),
                epochs_per_task=np.uint8(2), augment=np.bool_(True), task_aware=np.False_)
    b = _digits(num_tasks=2, batch_size=8, samples_per_task=32, epochs_per_task=2, augment=True, task_aware=False)
    assert a.config == b.config and all(type(v) is type(b.config[k]) for k, v in a.config.items())
    a.reset(seed=9), b.reset(seed=9)
    _assert_same_run(_run_out(a), _run_out(b))


def test_task_steps_is_the_rule_the_env_uses():
    from clenv.envs.supervised import task_steps

    assert task_steps(64, 16, 2) == 8
    assert task_steps(70, 16, 3) == 12  # the partial last batch is dropped, per epoch
    assert task_steps(10, 16, 5) == 0
    assert task_steps(64, 16, 2, steps_per_task=5) == 5  # the override is the whole count, epochs ignored
    for kw in (dict(stream="random_label", samples_per_task=70, epochs_per_task=3),
               dict(stream="class_split", samples_per_task=None, num_tasks=3, classes_per_task=3, epochs_per_task=2),
               dict(stream="permuted", joint=True, steps_per_task=5),
               dict(stream="label_shuffle", samples_per_task=None, steps_per_task=300)):
        env = _digits(**{"batch_size": 16, **kw})
        env.reset(seed=0)
        for k in range(env.num_tasks):
            assert env.steps_per_task(k) == task_steps(env.task(k).num_train, 16, env.epochs_per_task,
                                                      kw.get("steps_per_task"))
        assert env.total_steps == sum(env.steps_per_task(k) for k in range(env.num_tasks))
        steps = 0
        env.reset(seed=0)
        while not env.step(np.zeros(16, np.int64))[2]:
            steps += 1
        assert steps + 1 == env.total_steps
    with pytest.raises(ValueError, match="batch_size"):
        task_steps(64, 0, 1)
    with pytest.raises(TypeError, match="epochs_per_task"):
        task_steps(64, 16, 1.5)
    with pytest.raises(ValueError, match="steps_per_task"):
        task_steps(64, 16, 1, steps_per_task=0)


@pytest.mark.parametrize("kind", [dict(stream="permuted"), dict(stream="random_label"),
                                  dict(stream="random_label", augment=True)])
def test_epoch_image_cache_serves_the_same_bytes(monkeypatch, kind):
    """Batches sliced from the epoch's gathered images equal batches gathered from the whole dataset (with
    permutations and augmentation applied after), labels included, across a task and an epoch boundary; each batch
    served owns its data (a ready batch) or shares no memory with the gathered rows (a sliced one)."""
    import clenv.envs.supervised as sup

    def stream():
        env = small(samples_per_task=64, num_tasks=2, epochs_per_task=2, **kind)
        obs, info = env.reset(seed=5)
        out = [(obs, None)]
        for _ in range(10):
            obs, _, _, _, info = env.step(np.zeros(env.action_space.shape, env.action_space.dtype))
            out.append((obs, info["labels"]))
        return env, out

    env, cached = stream()
    epoch = env.unwrapped._epoch_cache[1]
    ready, rows = epoch.ready, epoch.rows
    if kind == dict(stream="random_label"):  # nothing to apply: the epoch is cut into batches that own their data
        assert rows is None and all(o.base is None and l.base is None for o, l in cached[1:])
    else:  # sliced from the gathered rows, then copied
        assert ready is None and not any(np.shares_memory(o, rows[0]) for o, _ in cached)
    monkeypatch.setattr(sup, "EPOCH_CACHE_BYTES", 0)  # every batch gathered from the whole dataset, as before
    env, direct = stream()
    epoch = env.unwrapped._epoch_cache[1]
    assert epoch.ready is None and epoch.rows is None
    assert len(cached) == len(direct) == 11
    for (a, la), (b, lb) in zip(cached, direct):
        assert np.array_equal(a, b) and (la is None or (np.array_equal(la, lb) and la.dtype == lb.dtype == np.int64))
