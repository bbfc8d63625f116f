"""The adapters' in-repository pretrained base LM (agents/adapters/base_lm.py): its text, its samples, determinism
from a seed, the cache, and the adapter agents' default ``base_model="pretrained"``.

Training runs at a tiny size (1 layer, 32 wide, a few dozen steps) into a temporary cache; the real base (2 x 128,
3,000 steps) is what ``python -m agents.adapters.base_lm`` trains.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents
import clenv  # noqa: F401 - registers the envs
from agents.adapters import base_lm
from clenv.data.style_corpus import SENTENCES
from clenv.envs.style_shift import BOS, EOS, PAD, SEP

TINY = dict(n_layer=1, n_embd=32, n_head=2, steps=4, batch_size=8)


@pytest.fixture
def tiny_default(monkeypatch, tmp_path):
    """The default configuration shrunk to TINY and the cache in a temporary directory."""
    for k, v in TINY.items():
        monkeypatch.setitem(base_lm.DEFAULT_CONFIG, k, v)
    monkeypatch.setenv("CLENV_MODELS", str(tmp_path))
    return tmp_path


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_text_is_pythons_own_and_never_contains_the_benchmark_sentences():
    train, held = base_lm.pretraining_paragraphs()
    assert len(train) > 1000 and len(held) > 50 and sum(map(len, train)) > 300_000
    assert not set(train) & set(held)
    text = b"\n".join(train + held)
    assert not [s for s in SENTENCES if s.encode() in text]


def test_samples_are_in_the_streams_layout_and_copies_are_exact():
    spans = base_lm._Spans(base_lm.pretraining_paragraphs()[0])
    rng = np.random.default_rng(0)
    x, y = base_lm.pretraining_batch(spans, rng, 64, 96, 0.5)
    assert x.shape == y.shape == (64, 96) and bool((x[:, 0] == BOS).all())
    copies = 0
    for row, lab in zip(x.tolist(), y.tolist()):
        end = row.index(EOS)
        assert all(t == PAD for t in row[end + 1:]) and all(t < 256 for t in row[1:end] if t != SEP)
        # the label is the next token wherever it is not padding, -100 elsewhere
        assert lab[:end] == row[1:end + 1] and all(v == -100 for v in lab[end:])
        if SEP in row:
            copies += 1
            sep = row.index(SEP)
            src, tgt = row[1:sep], row[sep + 1:end]
            assert src == tgt and 1 <= len(src) <= 30
    assert 16 <= copies <= 48  # half of 64, within about 4 standard deviations


def test_the_same_seed_trains_the_same_weights_and_another_seed_does_not():
    a, ra = base_lm.train_base_lm({**TINY, "seed": 3}, progress=False)
    b, _ = base_lm.train_base_lm({**TINY, "seed": 3}, progress=False)
    c, _ = base_lm.train_base_lm({**TINY, "seed": 4}, progress=False)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert ra["config"]["seed"] == 3 and np.isfinite(ra["val_plain_loss"]) and 0 <= ra["val_copy_accuracy"] <= 1


def test_pretraining_learns_the_bytes():
    # uniform over 260 ids is 5.56 nats, where training starts; 40 steps of the tiny model reach about 3.9 nats per
    # byte on held-out text (a unigram model of English bytes: about 3.0)
    _, rec = base_lm.train_base_lm({**TINY, "steps": 40}, progress=False)
    assert rec["first_loss"] > 5.3 and rec["val_plain_loss"] < 4.3


def test_the_cache_trains_once_and_loads_the_same_weights(tiny_default, monkeypatch):
    path = base_lm.base_lm_path()
    assert path.parent == tiny_default and not path.exists()
    first = base_lm.pretrained_base_lm(progress=False)
    assert path.exists() and path.with_suffix(".json").exists()

    def no_training(*a, **k):
        raise AssertionError("a cached base must not be retrained")

    monkeypatch.setattr(base_lm, "train_base_lm", no_training)
    again = base_lm.pretrained_base_lm()
    s1, s2 = _state(first), _state(again)
    assert all(torch.equal(s1[k], s2[k]) for k in s1) and not again.training
    # another configuration has another file; without training it is a clear error naming the command
    other = base_lm.base_lm_path({"seed": 9})
    assert other != path
    with pytest.raises(FileNotFoundError, match="python -m agents.adapters.base_lm --seed 9"):
        base_lm.pretrained_base_lm({"seed": 9}, train_if_missing=False)
    with pytest.raises(ValueError, match="unknown base LM setting"):
        base_lm.base_lm_path({"layers": 3})


def test_the_adapter_agents_default_base_is_the_cached_pretrained_one(tiny_default):
    env = gym.make("StyleShiftText-v0", num_tasks=2, steps_per_task=2)
    agent = agents.make("lora", env, seed=0)
    assert agent.hparams["base_model"] == "pretrained"
    cached = _state(base_lm.pretrained_base_lm(train_if_missing=False))
    base = {k: v for k, v in agent.network.state_dict().items() if ".lora_" not in k}
    # the adapted modules keep their weights under .base; everything else sits where GPT-2 has it
    assert {k.replace(".base.", "."): v for k, v in base.items()}.keys() == cached.keys()
    assert all(torch.equal(v, cached[k.replace(".base.", ".")]) for k, v in base.items())
    # the base does not depend on the agent's seed, only on base_seed
    other = agents.make("lora", env, seed=1)
    assert torch.equal(other.network.transformer.wte.weight, agent.network.transformer.wte.weight)


def test_a_stream_the_pretrained_base_cannot_read_is_refused(tiny_default):
    env = gym.make("StyleShiftText-v0", num_tasks=1, steps_per_task=2, max_length=120)
    with pytest.raises(ValueError, match="base_model='random'"):
        agents.make("lora", env)
    assert not list(tiny_default.iterdir())  # refused before anything was trained


def test_the_command_trains_into_the_cache_and_rejects_bad_steps(tiny_default, capsys):
    assert base_lm.main([]) == 0
    out = capsys.readouterr().out
    assert str(base_lm.base_lm_path()) in out and "val_copy_accuracy" in out
    with pytest.raises(SystemExit):
        base_lm.main(["--steps", "0"])
