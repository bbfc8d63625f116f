"""Continual RL streams: schedule, info schema, determinism, replay, observation perturbation, the shared loop."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import clenv
from clenv.envs.rl import RL_INFO_KEYS, ContinualCartPoleEnv, PermutedCartPole, TaskSequenceEnv
from clenv.envs.wrappers import TaskObservationPerturbation

RL_IDS = clenv.env_ids("rl")  # every registered RL id, the protocol ids included


def test_the_rl_ids_are_the_registered_streams():
    assert {"ContinualCartPole-v0", "ContinualAcrobot-v0", "ContinualMountainCar-v0", "TaskSequence-v0"} <= set(RL_IDS)


def _drive(env, seed, actions_seed=0, max_steps=10_000):
    """Random actions until stream_done, resetting after every episode end; returns per-step records."""
    rng = np.random.default_rng(actions_seed)
    obs, info = env.reset(seed=seed)
    recs = [("reset", obs, info)]
    for _ in range(max_steps):
        obs, r, te, tr, info = env.step(int(rng.integers(env.action_space.n)))
        recs.append(("step", obs, info, r, te, tr))
        if te or tr:
            if info["stream_done"]:
                return recs
            obs, info = env.reset()
            recs.append(("reset", obs, info))
    raise AssertionError("stream did not end")


@pytest.mark.parametrize("env_id", RL_IDS)
def test_check_env_clean(env_id):
    env = gym.make(env_id, steps_per_task=40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    # CartPole itself declares infinite velocity bounds; nothing else may warn.
    bad = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert bad == []


def test_schedule_info_and_stream_done():
    env = ContinualCartPoleEnv(num_tasks=4, steps_per_task=60, max_episode_steps=25)
    recs = _drive(env, seed=3)
    steps = [r for r in recs if r[0] == "step"]
    resets = [r for r in recs if r[0] == "reset"]
    assert len(steps) == env.total_steps == 240
    for rec in recs:
        info = rec[2]
        assert set(info) == set(RL_INFO_KEYS)
        assert info["labels"].dtype == np.int64 and info["labels"].size == 0 and info["accuracy"] == 0.0
    for _, _, info, r, te, tr in steps:
        assert info["labels_task_id"] == info["task_id"] == (info["step"] - 1) // 60
        assert type(te) is bool and type(tr) is bool and isinstance(r, float)
    # stream_done exactly once, on the last step; each later task starts on a reset flagged task_switch.
    assert [s[2]["stream_done"] for s in steps].count(True) == 1 and steps[-1][2]["stream_done"]
    switches = [r[2]["task_id"] for r in resets if r[2]["task_switch"]]
    assert switches == [0, 1, 2, 3]
    assert all(r[2]["labels_task_id"] == -1 for r in resets)
    # The episode limit truncates inside a task; task ends also truncate.
    lengths, n = [], 0
    for s in steps:
        n += 1
        if s[4] or s[5]:
            lengths.append(n)
            n = 0
    assert max(lengths) <= 25 and sum(lengths) == 240


def test_physics_change_per_task_and_reproducible():
    env = ContinualCartPoleEnv(num_tasks=5, steps_per_task=10)
    env.reset(seed=1)
    params = [env.task(k) for k in range(5)]
    assert len({p["gravity"] for p in params}) == 5 and len({p["length"] for p in params}) == 5
    for p in params:
        for k, v in ContinualCartPoleEnv.DEFAULTS.items():
            assert v / 2 - 1e-9 <= p[k] <= v * 2 + 1e-9
    # The inner env really runs with the task's physics.
    inner = env._inner
    assert inner.gravity == params[0]["gravity"] and inner.polemass_length == pytest.approx(
        params[0]["masspole"] * params[0]["length"])
    other = ContinualCartPoleEnv(num_tasks=5, steps_per_task=10)
    other.reset(seed=1)
    assert [other.task(k) for k in range(5)] == params
    other.reset(seed=2)
    assert other.task(0) != params[0]
    fixed = ContinualCartPoleEnv(num_tasks=3, steps_per_task=10, vary=())
    fixed.reset(seed=1)
    assert all(fixed.task(k) == ContinualCartPoleEnv.DEFAULTS for k in range(3))


def test_same_seed_same_trajectory():
    a = _drive(ContinualCartPoleEnv(num_tasks=3, steps_per_task=50), seed=7)
    b = _drive(ContinualCartPoleEnv(num_tasks=3, steps_per_task=50), seed=7)
    c = _drive(ContinualCartPoleEnv(num_tasks=3, steps_per_task=50), seed=8)
    assert len(a) == len(b)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_replay_one_task():
    env = ContinualCartPoleEnv(num_tasks=4, steps_per_task=30)
    env.reset(seed=5)
    ev = env.eval_env()
    obs, info = ev.reset(options={"task_id": 2})
    assert info["task_id"] == 2 and ev.task(2) == env.task(2) and ev._inner.gravity == env.task(2)["gravity"]
    assert ev.total_steps == 30
    n = 0
    while True:
        obs, r, te, tr, info = ev.step(0)
        n += 1
        assert info["task_id"] == 2
        if te or tr:
            if info["stream_done"]:
                break
            ev.reset()
    assert n == 30
    with pytest.raises(ValueError, match="task_id"):
        ev.reset(options={"task_id": 4})
    with pytest.raises(ValueError, match="reset option"):
        ev.reset(options={"bogus": 1})


def test_step_after_episode_end_raises():
    env = ContinualCartPoleEnv(num_tasks=1, steps_per_task=3)
    env.reset(seed=0)
    for _ in range(3):
        *_, te, tr, info = env.step(0)
    assert tr and info["stream_done"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_task_sequence_cycles_and_rejects_mismatched_spaces():
    env = TaskSequenceEnv(["CartPole-v1", {"id": "CartPole-v1", "sutton_barto_reward": True}], num_tasks=4,
                          steps_per_task=20)
    recs = _drive(env, seed=0)
    # sutton_barto_reward gives 0 per step (-1 on failure) in tasks 1 and 3, CartPole's +1 in tasks 0 and 2.
    for rec in recs:
        if rec[0] == "step":
            assert (rec[3] == 1.0) == (rec[2]["task_id"] % 2 == 0)
    assert env.task(3) == {"id": "CartPole-v1", "sutton_barto_reward": True}
    with pytest.raises(ValueError, match="all tasks must match"):
        TaskSequenceEnv(["CartPole-v1", "Acrobot-v1"])
    with pytest.raises(TypeError, match="id"):
        TaskSequenceEnv([{"name": "CartPole-v1"}])


@pytest.mark.parametrize("mode", ["permute", "affine", "permute_affine"])
def test_observation_perturbation_is_the_declared_map(mode):
    base = TaskSequenceEnv(["Acrobot-v1"], num_tasks=3, steps_per_task=40)
    wrapped = TaskObservationPerturbation(TaskSequenceEnv(["Acrobot-v1"], num_tasks=3, steps_per_task=40), mode=mode)
    ra, rb = _drive(base, seed=4), _drive(wrapped, seed=4)
    transforms = [wrapped.transform(k) for k in range(3)]
    for x, y in zip(ra, rb):
        perm, a, b = transforms[x[2]["task_id"]]
        np.testing.assert_allclose(y[1], (x[1][perm] * a + b).astype(np.float32), rtol=1e-5, atol=1e-5)
        assert y[1] in wrapped.observation_space
    # Tasks differ from each other and from the identity.
    for k in range(3):
        perm, a, b = transforms[k]
        assert not (np.array_equal(perm, np.arange(6)) and np.allclose(a, 1) and np.allclose(b, 0))
    assert not np.array_equal(transforms[0][0], transforms[1][0]) or not np.allclose(transforms[0][1],
                                                                                      transforms[1][1])


def test_perturbation_identity_first_task_and_errors():
    env = TaskObservationPerturbation(TaskSequenceEnv(["Acrobot-v1"], num_tasks=2, steps_per_task=10),
                                      identity_first_task=True)
    env.reset(seed=0)
    perm, a, b = env.transform(0)
    assert np.array_equal(perm, np.arange(6)) and np.all(a == 1) and np.all(b == 0)
    assert not np.array_equal(env.transform(1)[0], np.arange(6))
    with pytest.raises(ValueError, match="mode"):
        TaskObservationPerturbation(TaskSequenceEnv(["Acrobot-v1"]), mode="rotate")
    with pytest.raises(TypeError, match="Box"):
        TaskObservationPerturbation(TaskSequenceEnv(["FrozenLake-v1"]))


class _RandomAgent:
    def __init__(self, n, seed=0):
        self.rng, self.n, self.switches = np.random.default_rng(seed), n, []

    def act(self, obs, info):
        return int(self.rng.integers(self.n))

    def observe(self, *args):
        pass

    def on_task_switch(self, task_id):
        self.switches.append(task_id)


def test_loop_runs_rl_stream_with_episode_returns():
    env = gym.make("ContinualCartPole-v0", num_tasks=4, steps_per_task=200)
    agent = _RandomAgent(2)
    result = clenv.run(env, agent, seed=0, progress=False)
    assert result.steps == 800 and result.num_task_switches == 3
    assert result.task_ids == [0, 1, 2, 3] and agent.switches == [0, 1, 2, 3]
    # CartPole pays 1 per step, so the per-task mean reward is 1 and returns are episode lengths.
    assert result.task_accuracy == [1.0] * 4
    episodes = result.records["episodes"]
    assert len(episodes) == result.episodes and sum(e[2] for e in episodes) == 800
    assert all(ret == length for _, ret, length in episodes)
    for k in range(4):
        rets = [ret for t, ret, _ in episodes if t == k]
        assert result.task_return[k] == pytest.approx(np.mean(rets))


# ---------------------------------------------------------------------------------------------------- actions,
# refused resets and refused kwargs: each refusal is an error that leaves the stream where it was

from clenv.envs.rl import ContinualAcrobot, ContinualMountainCar  # noqa: E402

STREAMS = {
    "cartpole": lambda: ContinualCartPoleEnv(num_tasks=2, steps_per_task=12, max_episode_steps=5),
    "acrobot": lambda: ContinualAcrobot(num_tasks=2, steps_per_task=12),
    "mountaincar": lambda: ContinualMountainCar(num_tasks=2, steps_per_task=12),
    "continuous": lambda: TaskSequenceEnv(["MountainCarContinuous-v0"], num_tasks=2, steps_per_task=12),
}


def _valid_actions(env, seed=0):
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        rng = np.random.default_rng(seed)
        return lambda: int(rng.integers(space.n))
    space.seed(seed)
    return space.sample


def _rest_of_stream(env, seed=0):
    """Observations, rewards and infos until stream_done, with seeded valid actions, resetting between episodes."""
    act, out = _valid_actions(env, seed), []
    while True:
        obs, r, te, tr, info = env.step(act())
        out.append((np.array(obs), r, te, tr, info))
        if info["stream_done"]:
            return out
        if te or tr:
            obs, info = env.reset()
            out.append((np.array(obs), info))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])
        assert [str(v) for v in x[1:]] == [str(v) for v in y[1:]]


BAD_DISCRETE = [-1, 3, 7, "x", 1.0, np.float32(0), True, np.bool_(False), None, np.array([1]), np.array(1.5), [0],
                {"a": 1}]
BAD_BOX = [np.array([2.0]), np.array([-1.5], np.float32), np.array([np.nan]), np.array([np.inf]), 0.5,
           np.array([[0.5]]), ["x"], np.array([True]), np.array([0.5j]), None]


@pytest.mark.parametrize("name, action", [(n, a) for n in ("cartpole", "acrobot", "mountaincar") for a in BAD_DISCRETE]
                         + [("continuous", a) for a in BAD_BOX])
def test_actions_outside_the_action_space_are_refused_and_change_nothing(name, action):
    env, twin = STREAMS[name](), STREAMS[name]()
    for e in (env, twin):
        e.reset(seed=3)
        e.step(_valid_actions(e, 1)())
    with pytest.raises((ValueError, TypeError), match="action"):
        env.step(action)
    _same(_rest_of_stream(env), _rest_of_stream(twin))


def test_acrobot_refuses_minus_one_instead_of_applying_plus_one_torque():
    env = ContinualAcrobot(num_tasks=1, steps_per_task=5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be in 0\.\.2.*got -1"):
        env.step(-1)
    with pytest.raises(TypeError, match="integer"):
        env.step("x")
    # numpy integers and 0-d integer arrays are valid actions, as gymnasium's Discrete.contains has them
    for a in (np.int64(2), np.array(0), np.uint8(1)):
        env.step(a)


@pytest.mark.slow
def test_action_check_survives_python_O():
    import subprocess
    import sys

    code = ("from clenv.envs.rl import ContinualCartPoleEnv\n"
            "e = ContinualCartPoleEnv(num_tasks=1, steps_per_task=5); e.reset(seed=0)\n"
            "for a in (7, 'x'):\n"
            "    try:\n        e.step(a)\n    except (ValueError, TypeError) as err:\n        print('refused', a)\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused 7", "refused x"]


@pytest.mark.parametrize("seed, options", [
    (1, {"task_id": 2}), (None, {"task_id": -0.75}), (None, {"task_id": 1.0}), (2, {"task_id": True}),
    (None, {"task_id": float("nan")}), (3, {"stream_seed": 1.5}), (4, {"other": 0}), (5, "task_id=1"),
    (-3, None), (2.0, None), ("7", None),
])
def test_refused_rl_reset_leaves_the_stream_where_it_was(seed, options):
    env, twin = STREAMS["cartpole"](), STREAMS["cartpole"]()
    for e in (env, twin):
        e.reset(seed=0)
        e.step(0)
    with pytest.raises((ValueError, TypeError), match="must be|unknown reset option"):
        env.reset(seed=seed, options=options)
    assert env.stream_seed == twin.stream_seed
    assert env.np_random.bit_generator.state == twin.np_random.bit_generator.state
    _same(_rest_of_stream(env), _rest_of_stream(twin))


@pytest.mark.parametrize("make, name", [
    (lambda: ContinualCartPoleEnv(num_tasks=2.5), "num_tasks"),
    (lambda: ContinualCartPoleEnv(num_tasks=3.0), "num_tasks"),
    (lambda: ContinualCartPoleEnv(steps_per_task=0), "steps_per_task"),
    (lambda: ContinualCartPoleEnv(steps_per_task=2.5), "steps_per_task"),
    (lambda: ContinualCartPoleEnv(steps_per_task="100"), "steps_per_task"),
    (lambda: ContinualCartPoleEnv(max_episode_steps=0.5), "max_episode_steps"),
    (lambda: ContinualCartPoleEnv(spread=float("nan")), "spread"),
    (lambda: ContinualCartPoleEnv(spread="2"), "spread"),
    (lambda: ContinualCartPoleEnv(vary="gravity"), "vary"),
    (lambda: TaskSequenceEnv("CartPole-v1"), "tasks"),
    (lambda: TaskSequenceEnv(["CartPole-v1"], num_tasks=1.5), "num_tasks"),
    (lambda: ContinualAcrobot(steps_per_task=-5), "steps_per_task"),
    (lambda: ContinualAcrobot(scale=float("nan")), "scale"),
    (lambda: ContinualMountainCar(noise_std=float("inf")), "noise_std"),
    (lambda: ContinualAcrobot(identity_first_task="no"), "identity_first_task"),
])
def test_rl_constructors_refuse_values_they_used_to_accept(make, name):
    with pytest.raises((TypeError, ValueError), match=name):
        make()


def test_rl_task_lookup_refuses_non_integers():
    env = STREAMS["cartpole"]()
    env.reset(seed=0)
    assert env.task(np.int64(1)) == env.task(1)
    with pytest.raises(TypeError, match="task_id"):
        env.task(0.75)


# ------------------------------------------------------------------ revisits
def test_cartpole_distinct_tasks_revisit_the_same_physics():
    env = ContinualCartPoleEnv(num_tasks=7, steps_per_task=30, distinct_tasks=3)
    env.reset(seed=4)
    params = [env.task(k) for k in range(7)]
    assert params[0] != params[1] != params[2] != params[0]
    for k in range(3, 7):
        assert params[k] == params[k % 3] and env.distinct_task(k) == k % 3
    free = ContinualCartPoleEnv(num_tasks=7, steps_per_task=30)
    free.reset(seed=4)
    assert [free.task(k) for k in range(3)] == params[:3]  # the first visits are the unrevisited stream's tasks
    assert free.task(3) != params[0] and free.distinct_task(5) == 5
    with pytest.raises(ValueError, match="distinct_tasks"):
        ContinualCartPoleEnv(distinct_tasks=0)


def test_permuted_cartpole_maps_each_revisit_like_its_first_visit():
    env = PermutedCartPole(num_tasks=6, steps_per_task=40, distinct_tasks=2)
    recs = _drive(env, seed=1)
    raw = env.unwrapped
    perm0, perm1 = env.transform(0), env.transform(1)
    assert not np.array_equal(perm0[0], perm1[0]) or not np.allclose(perm0[1], perm1[1])
    for k in range(6):
        got = env.transform(k)
        want = perm0 if k % 2 == 0 else perm1
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
        assert env.get_wrapper_attr("distinct_task")(k) == k % 2
    assert raw.num_tasks == 6 and recs[-1][2]["stream_done"]
    # The observation really is the declared map of the inner CartPole state.
    inner_obs = np.asarray(raw._inner.unwrapped.state, dtype=np.float64)
    perm, a, b = env.transform(5)
    np.testing.assert_allclose(recs[-1][1], np.clip(inner_obs[perm] * a + b, env.observation_space.low,
                                                    env.observation_space.high), rtol=1e-5, atol=1e-5)
