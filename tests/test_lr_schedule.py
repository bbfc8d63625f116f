"""The base agent's learning-rate schedule (``lr_schedule``; agents.common.schedules): its shape, its scope (one
task or the whole stream), its state in checkpoints, and the seed stack stepping it as the sequential runs do."""

import gymnasium as gym
import pytest

import agents
import clenv
from agents.common.schedules import schedule_factor


def test_cosine_factor_warms_up_linearly_then_decays_to_the_final_factor():
    total, warmup = 100, 0.1
    f = [schedule_factor("cosine", s, total, final=0.2, warmup=warmup) for s in range(total + 5)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # 10 warm-up steps reach 1 at step 9
    assert f[10] == pytest.approx(1.0) and f[total - 1] == pytest.approx(0.2) and f[-1] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    mid = 10 + (total - 1 - 10) / 2
    assert schedule_factor("cosine", int(mid), total, final=0.2, warmup=warmup) == pytest.approx(0.6, abs=0.02)
    assert schedule_factor(None, 7, total) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        schedule_factor("step", 0, 10)


def _lrs(**hp):
    env = gym.make("RandomLabelDigits-v0", num_tasks=3, samples_per_task=64, epochs_per_task=2)
    agent = agents.make("base", env, optimizer="sgd", lr=0.1, **hp)
    seen = []
    original = agent.apply_lr_schedule

    def record(optimizer=None):
        original(optimizer)
        seen.append((agent.task_id, agent.optimizer.param_groups[0]["lr"]))

    agent.apply_lr_schedule = record
    clenv.run(env, agent, seed=0, progress=False)
    return agent, seen, env.unwrapped.steps_per_task(0)


def test_task_scope_restarts_every_task_and_stream_scope_spans_the_stream():
    _, per_task, steps = _lrs(lr_schedule="cosine", lr_final=0.01)
    for t in range(3):
        lrs = [lr for task, lr in per_task if task == t]
        assert len(lrs) == steps and lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.01)
    _, stream, steps = _lrs(lr_schedule="cosine", lr_final=0.01, lr_schedule_scope="stream", lr_warmup=0.05)
    lrs = [lr for _, lr in stream]
    ramp = -(-int(0.05 * 100 * 3 * steps) // 100)  # ceil(warmup x total steps)
    assert lrs[0] == pytest.approx(0.1 / ramp) and lrs[-1] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == ramp - 1
    constant = [lr for _, lr in _lrs()[1]]
    assert set(constant) == {0.1}  # no schedule: the rate is never touched


def test_schedule_position_is_checkpointed():
    agent, _, _ = _lrs(lr_schedule="cosine", lr_schedule_scope="stream")
    twin = agents.make("base", gym.make("RandomLabelDigits-v0", num_tasks=3, samples_per_task=64, epochs_per_task=2),
                       optimizer="sgd", lr=0.1, lr_schedule="cosine", lr_schedule_scope="stream")
    twin.load_state_dict(agent.state_dict())
    assert twin.schedule_step == agent.schedule_step > 0


def test_bad_schedule_settings_are_refused():
    env = gym.make("RandomLabelDigits-v0", num_tasks=2)
    for bad in (dict(lr_schedule="linear"), dict(lr_schedule_scope="epoch"), dict(lr_warmup=1.0),
                dict(lr_final=-1.0)):
        with pytest.raises(ValueError):
            agents.make("base", env, **bad)


def test_vectorised_seeds_follow_the_same_schedule():
    kw = dict(num_tasks=2, samples_per_task=64, epochs_per_task=2)
    hp = dict(optimizer="adam", lr=1e-3, lr_schedule="cosine", lr_final=1e-5, lr_warmup=0.1)
    seq = [clenv.run(gym.make("RandomLabelDigits-v0", **kw), agents.make("base", gym.make("RandomLabelDigits-v0",
                     **kw), **hp), seed=s, progress=False) for s in (0, 1)]
    env = gym.make("RandomLabelDigits-v0", **kw)
    vec = clenv.run(env, agents.make("base", env, **hp), seeds=[0, 1], progress=False)
    for a, b in zip(seq, vec):
        # the stacked step is the sequential one up to rounding (tests/test_seed_stack.py's tolerance)
        assert abs(a.average_accuracy - b.average_accuracy) <= 0.01
