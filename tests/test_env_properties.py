"""Property-based tests (hypothesis) of ``step`` and ``reset`` for the supervised and RL stream envs.

Every input either gives a valid transition (observation in the observation space, the info keys present, the same
result as on an identical twin env given the same call) or raises a clear ``ValueError`` / ``TypeError`` and leaves
the env exactly as it was: its state equals an untouched twin's, and the next valid call gives the same result on
both. (``RuntimeError`` is allowed only for a step after the episode ended, which the env documents.)
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from clenv.envs import INFO_KEYS, SupervisedStreamEnv
from clenv.envs.rl import RL_INFO_KEYS, ContinualAcrobot, ContinualCartPoleEnv

# 40 examples keep the default suite fast; CLENV_HYPOTHESIS_EXAMPLES=2000 searches harder.
SETTINGS = settings(max_examples=int(os.environ.get("CLENV_HYPOTHESIS_EXAMPLES", 40)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------------- strategies
DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64,
          np.complex64]


def _elements(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return st.booleans()
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(max(-3, int(info.min)), min(12, int(info.max)))  # mostly near the valid labels
    if dtype.kind == "f":
        return st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    return st.complex_numbers(width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False, max_magnitude=10)


def numpy_actions(shapes):
    return st.sampled_from(DTYPES).flatmap(
        lambda dt: st.sampled_from(shapes).flatmap(lambda shape: arrays(dt, shape, elements=_elements(dt))))


PYTHON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=True),
                          st.text(max_size=3), st.lists(st.integers(-1, 11), max_size=9),
                          st.lists(st.lists(st.integers(0, 9), max_size=3), min_size=1, max_size=9),  # ragged
                          st.dictionaries(st.text(max_size=1), st.integers(), max_size=1))

SEEDS = st.one_of(st.none(), st.integers(-3, 2**64), st.builds(np.int64, st.integers(0, 99)),
                  st.floats(allow_nan=True), st.booleans(), st.text(max_size=2))
OPTION_VALUES = st.one_of(st.integers(-2, 4), st.builds(np.int32, st.integers(-1, 3)), st.floats(allow_nan=True),
                          st.booleans(), st.text(max_size=2), st.none())
OPTIONS = st.one_of(st.none(),
                    st.dictionaries(st.sampled_from(["task_id", "stream_seed", "bogus", 0]), OPTION_VALUES,
                                    max_size=2),
                    st.lists(st.integers(), max_size=2), st.text(max_size=3))


def ops(actions):
    step = st.tuples(st.just("step"), actions)
    reset = st.tuples(st.just("reset"), SEEDS, OPTIONS)
    return st.lists(st.one_of(step, step, reset), min_size=1, max_size=6)


# ---------------------------------------------------------------------------------------------------- comparison
def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return type(a) is type(b) and a == b


def _call(env, op):
    """Run one op; return ("ok", result) or ("error", exception)."""
    try:
        if op[0] == "step":
            return "ok", env.step(op[1])
        return "ok", env.reset(seed=op[1], options=op[2])
    except Exception as err:  # noqa: BLE001 - the property is about which exceptions come out
        return "error", err


def _check_valid(env, result, op, info_keys):
    obs, info = (result[0], result[-1])
    assert env.observation_space.contains(obs), f"{op}: observation outside {env.observation_space}"
    assert set(info) == set(info_keys), f"{op}: info keys {sorted(info)}"
    if op[0] == "step":
        _, reward, terminated, truncated, _ = result
        assert isinstance(reward, float) and type(terminated) is bool and type(truncated) is bool


def _run_property(make, op_list, state, continue_both, info_keys, ended):
    env, twin = make(), make()
    for e in (env, twin):
        e.reset(seed=0)
    for op in op_list:
        kind, out = _call(env, op)
        if kind == "error":
            allowed = (ValueError, TypeError) + ((RuntimeError,) if op[0] == "step" and ended(env) else ())
            assert isinstance(out, allowed), f"{op!r:.200} raised {type(out).__name__}: {out}"
            assert str(out), "an error needs a message"
            assert _equal(state(env), state(twin)), f"{op!r:.200} was refused but changed the env"
            a, b = continue_both(env), continue_both(twin)
            assert _equal(a, b), f"after the refused {op!r:.200} the next valid call differs from the twin's"
            continue
        twin_kind, twin_out = _call(twin, op)
        assert twin_kind == "ok", f"{op!r:.200} worked on one env and not on its twin: {twin_out}"
        _check_valid(env, out, op, info_keys)
        assert _equal(out, twin_out), f"{op!r:.200} gave another result on the twin"
        assert _equal(state(env), state(twin))


# ---------------------------------------------------------------------------------------------------- supervised
def _supervised(action_type):
    return lambda: SupervisedStreamEnv("digits", "random_label", num_tasks=2, samples_per_task=24, batch_size=8,
                                       action_type=action_type, augment=True, test_samples_per_task=8,
                                       task_aware=action_type == "logits")


def _sup_state(env):
    s = env.state_dict()
    s["stream_seed_attr"] = env.stream_seed
    return s


def _sup_continue(env):
    if env._done:
        return env.reset()
    a = (np.arange(env.batch_size) % env.num_classes if env.action_type == "labels"
         else np.eye(env.num_classes, dtype=np.float32)[np.arange(env.batch_size) % env.num_classes])
    return env.step(a)


@pytest.mark.parametrize("action_type", ["labels", "logits"])
@SETTINGS
@given(data=st.data())
def test_supervised_step_and_reset_are_valid_or_refused_without_change(action_type, data):
    shapes = [(), (8,), (7,), (8, 10), (8, 1), (2, 4), (8, 10, 1), (0,)]
    actions = st.one_of(numpy_actions(shapes), PYTHON_VALUES)
    _run_property(_supervised(action_type), data.draw(ops(actions)), _sup_state, _sup_continue, INFO_KEYS,
                  lambda e: e._done)


# ---------------------------------------------------------------------------------------------------- RL
def _rl_state(env):
    u = env.unwrapped
    inner = u._inner.unwrapped if u._inner is not None else None
    return {"stream_seed": u.stream_seed, "cursor": (u._task, u._step, u._step_in_task, u._episode_steps),
            "flags": (u._episode_over, u._stream_over, u._first_task, u._last_task),
            "rng": u.np_random.bit_generator.state,
            "inner": None if inner is None else np.array(inner.state, dtype=np.float64)}


def _rl_continue(env):
    u = env.unwrapped
    return env.reset() if u._episode_over else env.step(1)


RL_STREAMS = {
    "cartpole": lambda: ContinualCartPoleEnv(num_tasks=2, steps_per_task=6, max_episode_steps=4),
    "acrobot": lambda: ContinualAcrobot(num_tasks=2, steps_per_task=6),
}


@pytest.mark.parametrize("name", sorted(RL_STREAMS))
@SETTINGS
@given(data=st.data())
def test_rl_step_and_reset_are_valid_or_refused_without_change(name, data):
    actions = st.one_of(numpy_actions([(), (1,), (2,)]), PYTHON_VALUES,
                        st.builds(np.int64, st.integers(-2, 4)), st.builds(np.float64, st.integers(0, 2)))
    _run_property(RL_STREAMS[name], data.draw(ops(actions)), _rl_state, _rl_continue, RL_INFO_KEYS,
                  lambda e: e.unwrapped._episode_over)
