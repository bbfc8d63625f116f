"""Device-resident runs: with ``output="torch"`` (the default off the CPU) a batch goes from the stream to the agent and
its action back to the env without a host round trip; the only per-step transfer is the reward.

No GPU is needed. Two instruments stand in for one:

- on the CPU, every numpy <-> torch conversion and every read of a tensor's values into Python is counted (the
  Python-level entry points are wrapped), per step of a real ``clenv.run``;
- on the ``meta`` device, whose tensors hold no data, any copy to the host raises: a whole run there succeeds only
  if nothing but the one sanctioned read (here answered with zeros) ever leaves the device.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv
from clenv.envs.supervised import SupervisedStreamEnv

# 3 tasks x 2 epochs x 4 steps (64 samples, batch 16): 24 steps, an epoch starts every 4th step.
KW = dict(dataset="digits", stream="permuted", num_tasks=3, samples_per_task=64, epochs_per_task=2, batch_size=16,
          test_samples_per_task=32)
STEPS_PER_EPOCH = 4


def make_env(**kw):
    return SupervisedStreamEnv(**{**KW, **kw})


# ---------------------------------------------------------------------------------------------- the CPU instrument
_READS = ("numpy", "__array__", "cpu", "tolist", "item", "__bool__", "__int__", "__float__")
_FROM_NUMPY = ("from_numpy", "as_tensor", "tensor", "asarray")


@contextlib.contextmanager
def host_traffic():
    """Counts, as ``(kind, name, shape)`` events: ``"read"`` (a tensor's values taken to numpy or Python: a device-to-
    host copy and a sync on a GPU) and ``"numpy_in"`` (a numpy array made a tensor: a host-to-device copy there)."""
    events: list[tuple[str, str, tuple]] = []
    saved = {}

    def read_wrapper(name, original):
        def wrapper(self, *args, **kwargs):
            events.append(("read", name, tuple(self.shape)))
            return original(self, *args, **kwargs)
        return wrapper

    def from_numpy_wrapper(name, original):
        def wrapper(data, *args, **kwargs):
            if isinstance(data, (np.ndarray, np.generic)):
                events.append(("numpy_in", name, tuple(np.shape(data))))
            return original(data, *args, **kwargs)
        return wrapper

    for name in _READS:
        saved[(torch.Tensor, name)] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, read_wrapper(name, getattr(torch.Tensor, name)))
    for name in _FROM_NUMPY:
        saved[(torch, name)] = getattr(torch, name)
        setattr(torch, name, from_numpy_wrapper(name, getattr(torch, name)))
    try:
        yield events
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


class PerStep(clenv.Callback):
    """The instrument's events of each step (the agent's task-switch hook, act, env.step, observe)."""

    def __init__(self, events):
        self.events, self.mark, self.steps = events, 0, []

    def on_run_start(self, env, agent, result):
        self.mark = len(self.events)  # reset()'s traffic is not a step's

    def on_step(self, env, agent, step):
        self.steps.append((step["info"]["step_in_task"], list(self.events[self.mark:])))
        self.mark = len(self.events)
        self.kinds = (type(step["obs"]), type(step["action"]), type(step["info"]["labels"]))


def instrumented_run(output, seed=5, **kw):
    env = make_env(output=output, **kw)
    agent = agents.make("base", env)
    with host_traffic() as events:
        per_step = PerStep(events)
        result = clenv.run(env, agent, seed=seed, progress=False, callbacks=[per_step])
    return result, agent, per_step


def test_torch_output_moves_nothing_between_host_and_device_per_step():
    result, _, per_step = instrumented_run("torch")
    assert result.steps == len(per_step.steps) == 24
    assert per_step.kinds == (torch.Tensor, torch.Tensor, torch.Tensor)  # obs, the agent's action, the labels
    image = (16, 1, 8, 8)
    checks = 0
    for step_in_task, events in per_step.steps:
        # No batch, label or action ever crosses: nothing of the image batch's or the action's shape.
        assert not [e for e in events if e[2] in (image, (16,), (16, 10))], events
        reads = [e for e in events if e[0] == "read"]
        # the one sync: the check's verdict and the reward; the step after a task switch also carries the agent's
        # once-per-task finiteness check of its weights (one flag)
        check = [("read", "__bool__", ())] if reads[:1] == [("read", "__bool__", ())] else []
        checks += len(check)
        assert reads == check + [("read", "tolist", (2,))], events
        numpy_in = [e for e in events if e[0] == "numpy_in"]
        if step_in_task % STEPS_PER_EPOCH:  # mid-epoch: nothing at all goes to the device
            assert numpy_in == [], (step_in_task, events)
        else:  # the step that starts the next epoch moves its sample order there once
            assert len(numpy_in) <= 4 and all(e[2] in ((64,), (1, 64)) for e in numpy_in), events
    assert checks == result.num_task_switches > 0  # one flag per task switch, none on any other step


def test_the_instrument_sees_the_numpy_outputs_round_trips():
    # The control: with numpy output every step converts the batch, so the assertions above can fail.
    result, _, per_step = instrumented_run("numpy")
    assert per_step.kinds == (np.ndarray, np.ndarray, np.ndarray)
    for _, events in per_step.steps:
        # the agent takes the batch from the host (torch.from_numpy, or as_tensor for other host data)
        assert any(e[0] == "numpy_in" and e[2] == (16, 1, 8, 8) for e in events), events
        assert ("read", "numpy", (16,)) in events  # and gives its action back there


@pytest.mark.parametrize("extra", [dict(), dict(augment=True, task_aware=True), dict(augment="per_task"),
                                   dict(stream="random_label"), dict(action_type="logits")])
def test_torch_output_gives_the_numpy_outputs_run_exactly(extra):
    a, agent_a, _ = instrumented_run("numpy", **extra)
    b, agent_b, _ = instrumented_run("torch", **extra)
    assert a.step_reward.dtype == b.step_reward.dtype and np.array_equal(a.step_reward, b.step_reward)
    assert a.task_accuracy == b.task_accuracy and a.task_ids == b.task_ids
    assert 0 < a.average_accuracy < 1  # a run that learned something, not a constant
    sa, sb = agent_a.network.state_dict(), agent_b.network.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- a pretend device
@contextlib.contextmanager
def meta_reads():
    """``tolist`` of a meta tensor answers zeros (the values a real device would send) and is counted; every other
    way off the meta device still raises."""
    calls = []
    original = torch.Tensor.tolist

    def tolist(self):
        if self.device.type != "meta":
            return original(self)
        calls.append(tuple(self.shape))
        return [0] * self.numel()

    torch.Tensor.tolist = tolist
    try:
        yield calls
    finally:
        torch.Tensor.tolist = original


class Kinds(clenv.Callback):
    def __init__(self):
        self.seen = set()

    def on_step(self, env, agent, step):
        x = step["obs"]["x"] if isinstance(step["obs"], dict) else step["obs"]
        self.seen.add((x.device.type, step["action"].device.type, step["info"]["labels"].device.type))


@pytest.mark.parametrize("extra", [dict(), dict(augment=True, task_aware=True), dict(action_type="logits")])
def test_a_run_on_a_device_serves_tensors_by_default_and_never_copies_to_the_host(extra):
    env = make_env(device="meta", **extra)  # no output given
    assert env.output == "torch" and env.config["output"] == "torch"
    agent = agents.make("base", env)
    assert agent.device.type == "meta"
    kinds = Kinds()
    with meta_reads() as calls:
        result = clenv.run(env, agent, seed=0, progress=False, callbacks=[kinds])
    assert result.steps == 24 and len(calls) == 24  # one read per step: the reward
    assert kinds.seen == {("meta", "meta", "meta")}


def test_the_meta_instrument_catches_a_host_copy():
    # The control: the numpy action path of a device env copies to the host, which a meta tensor cannot do.
    env = make_env(device="meta")
    env.reset(seed=0)
    with meta_reads(), pytest.raises((NotImplementedError, RuntimeError, TypeError)):
        env.step(torch.zeros(16, dtype=torch.int64, device="meta").numpy())


def test_explicit_numpy_on_a_device_keeps_numpy():
    env = make_env(device="meta", output="numpy")
    assert env.output == "numpy" and env.config["output"] == "numpy"
    # Serving numpy means copying the device batch to the host: on meta that copy is the error.
    with pytest.raises(NotImplementedError, match="meta"):
        env.reset(seed=0)


def test_the_cpu_default_stays_numpy():
    env = make_env()
    assert env.output == "numpy" and env.config["output"] == "numpy"
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and isinstance(info["labels"], np.ndarray)
    obs, _, _, _, info = env.step(np.zeros(16, np.int64))
    assert isinstance(obs, np.ndarray) and isinstance(info["labels"], np.ndarray)
    genv = gym.make("RandomLabelDigits-v0", num_tasks=2)
    assert genv.unwrapped.output == "numpy" and isinstance(genv.reset(seed=0)[0], np.ndarray)
    assert make_env(output=None).config == env.config  # None is the default, recorded as what it resolved to


@pytest.mark.parametrize("bad", ["jax", "Torch", "", 1, True])
def test_a_bad_output_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"output must be 'numpy' or 'torch'.*got " + repr(bad).replace("'", "\\'")):
        make_env(output=bad)


# ---------------------------------------------------------------------------------------------- the env's side
def test_tensor_actions_are_checked_on_the_device_and_refused_before_the_stream_moves():
    env = make_env(output="torch", action_type="logits")
    env.reset(seed=0)
    logits = torch.zeros(16, 10)
    bad = [(torch.zeros(16, 9), "shape"), (torch.zeros(16, 10, dtype=torch.int64), "floating point"),
           (logits.clone().index_fill_(0, torch.tensor([3]), float("nan")), "NaN or inf")]
    for action, message in bad:
        with pytest.raises(ValueError, match=message):
            env.step(action)
        assert env._step == 0
    labels_env = make_env(output="torch")
    labels_env.reset(seed=0)
    for action, message in [(torch.zeros(16), "integer class labels"), (torch.zeros(16, dtype=torch.bool), "integer"),
                            (torch.full((16,), 10), r"in 0\.\.9, got values in 10\.\.10"),
                            (torch.full((16,), -1), "got values in -1..-1"), (torch.zeros(16, 10, dtype=torch.int64),
                                                                              "logits\\?")]:
        with pytest.raises(ValueError, match=message):
            labels_env.step(action)
        assert labels_env._step == 0
    env.step(logits)  # a valid action after the refused ones: the stream goes on from where it was
    assert env._step == 1


def test_every_action_kind_scores_the_same():
    """numpy, list, CPU tensor, int32 tensor and bfloat16 logits give the numpy env's reward."""
    rng = np.random.default_rng(0)
    preds = [rng.integers(10, size=16) for _ in range(6)]
    ref, env = make_env(), make_env(output="torch")
    ref.reset(seed=2), env.reset(seed=2)
    for k, p in enumerate(preds):
        kind = k % 3
        action = p if kind == 0 else p.tolist() if kind == 1 else torch.as_tensor(p, dtype=torch.int32)
        assert env.step(action)[1] == ref.step(p)[1]
    lref, lenv = make_env(action_type="logits"), make_env(output="torch", action_type="logits")
    lref.reset(seed=2), lenv.reset(seed=2)
    for _ in range(4):
        z = torch.randn(16, 10).to(torch.bfloat16)
        assert lenv.step(z)[1] == lref.step(z.float().numpy())[1]


def test_state_round_trip_and_resume_with_torch_output(tmp_path):
    env = make_env(output="torch")
    env.reset(seed=1)
    for _ in range(6):
        env.step(torch.zeros(16, dtype=torch.int64))
    state = env.state_dict()
    assert isinstance(state["labels"], np.ndarray)  # a checkpoint holds host data
    twin = make_env(output="torch")
    twin.reset(seed=9)
    twin.load_state_dict(state)
    assert isinstance(twin._labels, torch.Tensor) and torch.equal(twin._labels, env._labels)
    for _ in range(5):
        a, b = env.step(torch.ones(16, dtype=torch.int64)), twin.step(torch.ones(16, dtype=torch.int64))
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[4]["labels"], b[4]["labels"])


def test_a_killed_torch_output_run_resumes_exactly(tmp_path):
    def fresh():
        e = gym.make("PermutedDigits-v0", num_tasks=2, samples_per_task=64, epochs_per_task=2, output="torch")
        return e, agents.make("base", e, optimizer="adam", lr=1e-3)

    full = clenv.run(*fresh(), seed=4, progress=False)
    clenv.run(*fresh(), seed=4, progress=False, total_steps=11, callbacks=[clenv.Checkpoint(tmp_path, every=5)])
    state = clenv.checkpoint.resume_state(tmp_path, *fresh(), seed=4)
    assert isinstance(state.obs, torch.Tensor) and isinstance(state.info["labels"], torch.Tensor)
    resumed = clenv.resume(tmp_path, *fresh(), seed=4, progress=False)
    assert np.array_equal(resumed.step_reward, full.step_reward) and resumed.task_accuracy == full.task_accuracy


def test_probes_read_torch_batches():
    def run(output):
        e = make_env(output=output)
        ev = clenv.Evaluation(adaptation=True, forgetting=True, plasticity=True, stability_every=5, gamma=2,
                              probe_samples=32, eval_samples=32, plasticity_samples=32, stability_samples=32)
        return clenv.run(e, agents.make("base", e), seed=3, progress=False, evaluation=ev)

    a, b = run("numpy"), run("torch")
    drop = lambda m: {k: v for k, v in m.items() if k != "probe_time_s"}  # noqa: E731 - wall time
    np.testing.assert_equal(drop(b.metrics), drop(a.metrics))
    assert {"lca_f", "acc", "dormant_ratio"} <= set(a.metrics)


# ---------------------------------------------------------------------------------------------- the agent's side
def test_the_agent_answers_in_the_kind_it_was_asked_and_keeps_tensors_where_they_are():
    env = make_env(output="torch")
    agent = agents.make("base", env)
    obs, _ = env.reset(seed=0)
    action = agent.act(obs, {})
    assert isinstance(action, torch.Tensor) and action.dtype == torch.int64 and action.shape == (16,)
    numpy_action = agent.act(obs.numpy(), {})
    assert isinstance(numpy_action, np.ndarray) and np.array_equal(numpy_action, action.numpy())
    labels = torch.arange(16) % 10
    assert agent.targets(labels) is labels  # already int64 on the agent's device: used as it is
    assert torch.equal(agent.targets(labels.numpy()), labels) and agent.targets(labels.int()).dtype == torch.int64
    x = torch.rand(16, 1, 8, 8)
    assert agent.preprocess(x) is x  # float inputs on the device: no copy at all
