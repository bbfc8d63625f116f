"""The text style-shift stream (FTN Experiment 2, Appendix E): six transformations of the same sentences as byte
tokens, next-token labels on the target span, a stream that is a pure function of its seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import clenv
from clenv.data.style_corpus import SENTENCES, TEST, TRAIN
from clenv.envs.style_shift import (BOS, EOS, PAD, SEP, TRANSFORMS, VOCAB_SIZE, StyleShiftTextEnv, decode, encode,
                                    encode_sample)
from clenv.envs.supervised import INFO_KEYS

SHORT = dict(steps_per_task=5)
B, L = 8, 96


def _env(**kw) -> StyleShiftTextEnv:
    return gym.make("StyleShiftText-v0", **{**SHORT, **kw}).unwrapped


def _walk(env, n):
    """``n`` steps with all-zero predictions; the observations seen after each."""
    out = []
    for _ in range(n):
        obs, *_ = env.step(np.zeros((B, L), np.int64))
        out.append(obs)
    return out


# ------------------------------------------------------------------------------------------------ the contract
@pytest.mark.filterwarnings("ignore:.*A Box action space m")  # logits are unbounded, as the supervised envs'
@pytest.mark.parametrize("action_type", ["labels", "logits"])
def test_the_env_checker_passes_and_the_info_contract_holds(action_type):
    env = _env(action_type=action_type)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (B, L) and obs.dtype == np.int64 and env.observation_space.contains(obs)
    assert set(INFO_KEYS) <= set(info) and info["labels"].shape == (0, L)
    assert env.task_type == "language" and env.num_classes == VOCAB_SIZE == 260
    assert env.task_names == tuple(TRANSFORMS) == ("upper", "lower", "reverse_words", "double_words",
                                                   "starred_vowels", "pirate")
    assert env.num_tasks == 6 and env.total_steps == 30 and env.splits == ("test", "support", "train")
    _, reward, *_, info = env.step(env.action_space.sample())
    assert set(INFO_KEYS) <= set(info) and info["labels"].shape == (B, L) and info["tokens_scored"] > 0
    row = clenv.protocol("StyleShiftText-v0")
    assert row.kwargs == dict(num_tasks=6, steps_per_task=200, batch_size=8, max_length=96)
    assert row.tags == ("forgetting", "concept_shift", "text") and row.paper == "FTN Experiment 2"


def test_the_six_transformations():
    s = "Rome was not built in a day."
    assert TRANSFORMS["upper"](s) == "ROME WAS NOT BUILT IN A DAY."
    assert TRANSFORMS["lower"](s) == "rome was not built in a day."
    assert TRANSFORMS["reverse_words"](s) == "day. a in built not was Rome"
    assert TRANSFORMS["double_words"](s) == "Rome Rome was was not not built built in in a a day. day."
    assert TRANSFORMS["starred_vowels"](s) == "R*m* w*s n*t b**lt *n * d*y."
    assert TRANSFORMS["pirate"](s) == "Arr! Rome was not built in a day. matey!"
    assert TRANSFORMS["starred_vowels"]("AEIOU aeiou xyz") == "***** ***** xyz"
    assert TRANSFORMS["reverse_words"]("Haste makes waste.") == "waste. makes Haste"
    assert TRANSFORMS["double_words"]("No pain, no gain.") == "No No pain, pain, no no gain. gain."


def test_encode_decode_round_trip_and_special_tokens():
    for s in (*SENTENCES, "", "caf\u00e9 \u00fcber"):
        ids = encode(s)
        assert ids.dtype == np.int64 and (ids < 256).all() and decode(ids) == s
    assert encode("Hi").tolist() == [72, 105]
    tokens, _ = encode_sample("Hi", "upper", 10)
    assert decode(tokens) == "HiHI"
    assert decode(tokens, skip_special=False) == "<bos>Hi<sep>HI<eos><pad><pad><pad>"
    with pytest.raises(ValueError, match="0..259"):
        decode([65, 260])


def test_the_token_layout_and_the_labels():
    tokens, labels = encode_sample("Hi there", "upper", 24)
    src, tgt = list(b"Hi there"), list(b"HI THERE")
    expected = [BOS, *src, SEP, *tgt, EOS]
    assert tokens.tolist() == expected + [PAD] * (24 - len(expected))
    start = 1 + len(src) + 1  # the first target token
    for i in range(24):
        scored = start <= i + 1 <= start + len(tgt)  # the next token is a target byte or EOS
        assert labels[i] == (tokens[i + 1] if scored else -100), i
    assert (labels != -100).sum() == len(tgt) + 1 and labels[start + len(tgt) - 1] == EOS
    # Every corpus sentence fits under every task at the paper's 96 (the corpus keeps sentences <= 30 characters).
    env = StyleShiftTextEnv()
    for k in range(6):
        for s in SENTENCES:
            t, lab = env.sample(s, k)
            target = TRANSFORMS[env.task_names[k]](s)
            n = len(encode(s)) + len(encode(target)) + 3
            assert decode(t[:n], skip_special=False) == f"<bos>{s}<sep>{target}<eos>" and (t[n:] == PAD).all()
            assert decode(lab[lab != -100]) == target and lab[lab != -100][-1] == EOS
    with pytest.raises(ValueError, match="max_length >= 94"):
        StyleShiftTextEnv(max_length=93)
    StyleShiftTextEnv(num_tasks=3, max_length=64)  # without double_words the samples are shorter


def test_the_corpus_split_is_fixed():
    assert len(SENTENCES) == 120 and len(set(SENTENCES)) == 120
    assert TRAIN == SENTENCES[:100] and TEST == SENTENCES[100:]
    assert all(s.isascii() and s == " ".join(s.split()) and s != s.lower() and s != s.upper() for s in SENTENCES)


# ------------------------------------------------------------------------------------------------ the stream
def test_the_stream_is_a_pure_function_of_seed_task_and_step():
    a, b = _env(), _env()
    a.reset(seed=3)
    seen = _walk(a, 5 + 2)  # task 1's first three batches: seen[4], seen[5], seen[6]
    b.reset(seed=3, options={"task_id": 1})
    np.testing.assert_array_equal(b.step(np.zeros((B, L), np.int64))[0], seen[5])  # whether or not task 0 ran
    first, _ = b.reset(options={"task_id": 1})  # a replay with the same stream seed
    np.testing.assert_array_equal(first, seen[4])
    # A reset with a seed draws the same stream again; another seed gives other batches.
    c = _env()
    c.reset(seed=3)
    np.testing.assert_array_equal(_walk(c, 7)[6], seen[6])
    c.reset(seed=4)
    assert not all(np.array_equal(x, y) for x, y in zip(_walk(c, 7), seen))
    assert a.split_indices(0, "support").tolist() == b.split_indices(0, "support").tolist()


def test_same_source_different_targets_strict_concept_shift():
    env = _env()
    env.reset(seed=0)
    for s in SENTENCES:
        targets = [env.target(s, k) for k in range(6)]
        assert len(set(targets)) == 6, s
    # In the served data: sentence i's source is the same under every task, its labels are not.
    toks = [next(env.test_batches(k, batch_size=20))[0] for k in range(6)]
    labs = [next(env.test_batches(k, batch_size=20))[1] for k in range(6)]
    n_src = [len(encode(s)) for s in TEST]
    for i, n in enumerate(n_src):
        for k in range(1, 6):
            assert torch.equal(toks[k][i, :n + 2], toks[0][i, :n + 2])  # BOS, source, SEP
            assert not torch.equal(labs[k][i], labs[0][i])


def test_held_out_sentences_never_reach_training_or_support_batches():
    env = _env(steps_per_task=40)
    env.reset(seed=1)
    test_rows = {tuple(encode_sample(s, k)[0]) for s in TEST for k in range(6)}
    train_rows = {tuple(encode_sample(s, k)[0]) for s in TRAIN for k in range(6)}
    obs, _ = env.reset(seed=1)
    done = False
    while not done:
        rows = {tuple(r) for r in obs}
        assert rows <= train_rows and not rows & test_rows
        obs, _, done, _, _ = env.step(np.zeros((B, L), np.int64))
    for k in range(6):
        sup = next(env.test_batches(k, split="support"))[0]
        assert sup.shape == (16, L) and not {tuple(r) for r in sup.tolist()} & test_rows
        test = torch.cat([x for x, _ in env.test_batches(k, batch_size=7)])
        assert [decode(r).startswith(s) for r, s in zip(test, TEST)] == [True] * 20
        assert len(list(env.test_batches(k, split="train", batch_size=100))[0][0]) == 100
    assert next(env.test_batches(0, max_samples=3))[0].shape == (3, L)
    few = _env(test_samples_per_task=5)
    few.reset(seed=1)
    assert next(few.eval_env().test_batches(0))[0].shape == (5, L)


def _twins(n, **kw):
    envs = [_env(**kw) for _ in range(n)]
    for e in envs:
        e.reset(seed=2)
    return envs


def test_the_reward_is_the_per_token_accuracy_on_the_target():
    a, b, c, d = _twins(4)
    _, r0, _, _, info = a.step(np.zeros((B, L), np.int64))
    labels = info["labels"]  # the first batch's labels, the same for the twins' first batch
    scored = labels != -100
    n = int(scored.sum())
    assert info["tokens_scored"] == n and n >= B
    assert r0 == pytest.approx(np.count_nonzero(labels[scored] == 0) / n) and info["accuracy"] == r0
    # Perfect predictions give 1.0, whatever sits at the unscored positions.
    perfect = np.where(scored, labels, 7)
    assert b.step(perfect)[1] == 1.0
    # By hand: the first two scored tokens of every row wrong, so 2 * B of n are wrong.
    pred = perfect.copy()
    for r in range(B):
        for col in np.nonzero(scored[r])[0][:2]:
            pred[r, col] = (labels[r, col] + 1) % VOCAB_SIZE
    _, reward, _, _, info_c = c.step(pred)
    assert reward == pytest.approx((n - 2 * B) / n) and info_c["accuracy"] == reward
    np.testing.assert_array_equal(info_c["labels"], labels)
    # Logits: read by argmax; one-hot logits of the labels give 1.0, torch actions are accepted.
    (lg,) = _twins(1, action_type="logits")
    logits = np.zeros((B, L, VOCAB_SIZE), np.float32)
    np.put_along_axis(logits, perfect[..., None], 1.0, axis=-1)
    assert lg.step(torch.as_tensor(logits))[1] == 1.0
    assert d.step(torch.as_tensor(perfect))[1] == 1.0


@pytest.mark.parametrize("action_type, bad, match", [
    ("labels", np.zeros((B, L - 1), np.int64), "shape"),
    ("labels", np.zeros((B, L), np.float32), "integer"),
    ("labels", np.full((B, L), VOCAB_SIZE, np.int64), "0..259"),
    ("labels", np.full((B, L), -1, np.int64), "0..259"),
    ("labels", np.zeros((B, L, VOCAB_SIZE), np.float32), "logits"),
    ("labels", [[1, 2], [3]], "array-like"),
    ("logits", np.full((B, L, VOCAB_SIZE), np.nan, np.float32), "NaN"),
    ("logits", np.zeros((B, L), np.int64), "shape"),
    ("logits", np.zeros((B, L, VOCAB_SIZE), np.int64), "floating"),
])
def test_a_bad_action_is_refused_and_the_stream_does_not_move(action_type, bad, match):
    env, twin = _env(action_type=action_type), _env(action_type=action_type)
    env.reset(seed=5)
    twin.reset(seed=5)
    env.step(env.action_space.sample())
    twin.step(twin.action_space.sample())
    before = env.state_dict()
    with pytest.raises(ValueError, match=match):
        env.step(bad)
    assert env.state_dict() == before
    good = np.zeros((B, L, VOCAB_SIZE), np.float32) if action_type == "logits" else np.zeros((B, L), np.int64)
    o1, r1, *_, i1 = env.step(good)
    o2, r2, *_, i2 = twin.step(good)
    np.testing.assert_array_equal(o1, o2)
    assert r1 == r2 and i1["step"] == i2["step"] == 2


def test_checkpoint_round_trip_and_a_foreign_state_is_refused():
    env = _env()
    env.reset(seed=9)
    _walk(env, 7)  # mid task 1
    state = env.state_dict()
    fresh = _env()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    for x, y in zip(_walk(env, 6), _walk(fresh, 6)):
        np.testing.assert_array_equal(x, y)
    # A seedless reset after the load draws the same next stream (np_random is part of the state).
    np.testing.assert_array_equal(env.reset()[0], fresh.reset()[0])
    # Another configuration: refused, nothing changes.
    other = _env(batch_size=4)
    other.reset(seed=1)
    before = other.state_dict()
    with pytest.raises(ValueError, match="another configuration: batch_size=8"):
        other.load_state_dict(state)
    mid = fresh.state_dict()
    with pytest.raises(ValueError, match="outside"):
        fresh.load_state_dict({**mid, "step_in_task": 99})
    assert fresh.state_dict() == mid
    assert other.state_dict() == before
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({"config": {}})
    assert other.state_dict() == before


def test_bad_configurations_are_refused():
    for kw, err in [(dict(num_tasks=7), ValueError), (dict(num_tasks=2.0), TypeError),
                    (dict(test_samples_per_task=21), ValueError), (dict(support_samples_per_task=0), ValueError),
                    (dict(action_type="probs"), ValueError), (dict(output="jax"), ValueError)]:
        with pytest.raises(err):
            StyleShiftTextEnv(**kw)
    env = StyleShiftTextEnv(num_tasks=2, steps_per_task=3, output="torch")
    obs, _ = env.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.int64 and env.task_names == ("upper", "lower")
    with pytest.raises(ValueError, match="split"):
        next(env.test_batches(0, split="val"))


# ------------------------------------------------------------------------------------------------ tasks=
def test_a_task_subset_serves_the_six_task_streams_batches_of_that_transformation():
    """A task's batches and splits are keyed by its transformation, not its position: the single-task pirate stream
    (how adapters are trained independently before merging) sees exactly the six-task stream's pirate task."""
    full, single, pair = _env(), _env(tasks=("pirate",), num_tasks=1), _env(tasks="pirate, upper", num_tasks=2)
    for env in (full, single, pair):
        env.reset(seed=4)
    assert single.task_names == ("pirate",) and single.total_steps == 5 and pair.task_names == ("pirate", "upper")
    pirate = [full.batch_indices(5, j).tolist() for j in range(5)]
    assert [single.batch_indices(0, j).tolist() for j in range(5)] == pirate
    assert [pair.batch_indices(0, j).tolist() for j in range(5)] == pirate
    assert pair.batch_indices(1, 2).tolist() == full.batch_indices(0, 2).tolist()
    for split in ("support", "test"):
        np.testing.assert_array_equal(single.split_indices(0, split), full.split_indices(5, split))
        a, b = next(single.test_batches(0, split=split)), next(full.test_batches(5, split=split))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # The served observations too, and the labels are the pirate targets.
    first, _ = single.reset(seed=4)
    full.reset(seed=4, options={"task_id": 5})
    np.testing.assert_array_equal(first, full._batch(5, 0)[0])
    tokens, labels = single.sample("Hi.", 0)
    assert single.target("Hi.", 0) == "Arr! Hi. matey!" and decode(labels[labels != -100]) == "Arr! Hi. matey!"
    # The default order keeps its identity (no tasks key) and its streams; a reordering is part of the config.
    assert "tasks" not in _env().config and _env(tasks=list(TRANSFORMS)).config == _env().config
    assert single.config["tasks"] == ["pirate"] and single.eval_env().task_names == ("pirate",)
    state = single.state_dict()
    with pytest.raises(ValueError, match="another configuration"):
        _env(tasks=("upper",), num_tasks=1).load_state_dict(state)


def test_bad_task_subsets_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="did you mean 'pirate'"):
        StyleShiftTextEnv(tasks=("pirat",), num_tasks=1)
    with pytest.raises(ValueError, match="more than once"):
        StyleShiftTextEnv(tasks=("upper", "upper"), num_tasks=2)
    with pytest.raises(ValueError, match="pass num_tasks=1"):
        StyleShiftTextEnv(tasks=("pirate",))  # num_tasks=6 (the default) for one transformation
    with pytest.raises(ValueError, match="non-empty sequence"):
        StyleShiftTextEnv(tasks=(), num_tasks=1)
    with pytest.raises(ValueError, match="unknown transformation"):
        StyleShiftTextEnv(tasks=(3,), num_tasks=1)
    # Only the chosen transformations must fit max_length (double_words is the longest).
    StyleShiftTextEnv(tasks=("pirate", "upper"), num_tasks=2, max_length=80)
