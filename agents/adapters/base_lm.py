"""The in-repository pretrained base of the adapter agents: a small byte-level GPT-2, trained once and cached.

The paper behind LoRA-FTN adapts a frozen, pretrained ``distilgpt2`` (002_b6d509c9f1140765.txt, Appendix E). This is
**not** distilgpt2: it is a 2-layer, 128-wide Hugging Face ``GPT2LMHeadModel`` (442k parameters) over the
style-shift stream's own tokens (:mod:`clenv.envs.style_shift`: the 256 bytes, then PAD, BOS, SEP, EOS; 96
positions), pretrained here from a seed, so that the adapters start from a model that already knows English bytes
instead of a random one.

**Text.** The English prose and examples of the Python language reference that ship with every CPython in its
standard library (``pydoc_data.topics``: 79 topics, about 465 kB), paragraphs with their whitespace collapsed and
repeats dropped.
Paragraphs that contain one of the style corpus's 120 sentences would be dropped (none do; a test checks that no
corpus sentence occurs in the training text), so the base never saw the benchmark's sentences. Every 20th paragraph
is held out for validation.

**Samples**, half each, in the stream's layout and padded to 96:

- ``[BOS] span [EOS]``: a span of at most 94 bytes starting at a word, plain language modelling;
- ``[BOS] s [SEP] s [EOS]``: a span ``s`` of one to six words and at most 30 bytes copied through the separator, the
  identity "style". A pretrained LM copies in context (its induction heads); on this format each style task is then
  an edit of copying, which is what adapting a real base looks like.

The loss is the next-token cross-entropy at every position whose next token is not PAD. AdamW (betas 0.9, 0.95,
weight decay 0.01), a linear warm-up over the first 5% of steps then a cosine decay to 10%, gradient clipping at 1,
batch 32, 3,000 steps, under one seed (torch's generator for the initialisation, numpy's for the samples).

**Cache.** ``$CLENV_MODELS`` or ``~/.cache/clenv/models``; the file name carries a hash of the configuration, so a
different configuration never loads another's weights. ``<name>.safetensors`` holds the weights and ``<name>.json``
the configuration and the training record (losses, validation, seconds). Train it ahead of time with::

    python -m agents.adapters.base_lm            # seed 0, the defaults; prints the cache path and validation

The adapter agents' default ``base_model="pretrained"`` loads it, training it first (7-20 minutes on
a CPU core, with a progress bar) when the cache is empty. On one machine, the same configuration gives the same
weights bit for bit.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from agents.adapters.cache import base_parser, cached_model, cached_path, models_root, parse_base_args, train_or_show
from clenv.data.style_corpus import SENTENCES
from clenv.envs.style_shift import BOS, EOS, PAD, SEP, VOCAB_SIZE

__all__ = ["DEFAULT_CONFIG", "pretraining_paragraphs", "pretraining_batch", "build_base_lm", "train_base_lm",
           "pretrained_base_lm", "base_lm_path", "models_root"]

#: The pretrained base's configuration: the model's size, the training schedule and the seed.
DEFAULT_CONFIG = dict(n_layer=2, n_embd=128, n_head=4, n_positions=96, steps=3000, batch_size=32, lr=2e-3,
                      warmup=0.05, final_lr=0.1, weight_decay=0.01, copy_fraction=0.5, seed=0)
_MAX_COPY_BYTES, _MAX_COPY_WORDS = 30, 6
_HOLDOUT_EVERY = 20  # paragraph i is held out when i % 20 == 19


def _full_config(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown base LM setting(s) {unknown}; expected some of {sorted(DEFAULT_CONFIG)}")
    return {**DEFAULT_CONFIG, **overrides}


def base_lm_path(config: dict | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``config`` (overrides of :data:`DEFAULT_CONFIG`) are cached (``.safetensors``)."""
    cfg = _full_config(dict(config or {}))
    return cached_path(f"byte-gpt2-L{cfg['n_layer']}-E{cfg['n_embd']}-seed{cfg['seed']}", cfg, cache_dir)


# --------------------------------------------------------------------------------------------- the text
def pretraining_paragraphs() -> tuple[list[bytes], list[bytes]]:
    """(training, held-out) paragraphs of ``pydoc_data.topics`` as UTF-8 bytes, whitespace collapsed, topics in
    sorted order, each distinct paragraph once; paragraphs containing a style-corpus sentence are dropped."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # pragma: no cover - a CPython without its pydoc data
        raise ImportError("the base LM's text is CPython's pydoc_data.topics, which this Python lacks") from exc
    paragraphs = {}  # insertion-ordered and deduplicated: the reference repeats some paragraphs across topics
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            text = " ".join(block.split())
            if len(text.split()) >= 3 and not any(s in text for s in SENTENCES):
                paragraphs.setdefault(text.encode("utf-8"))
    paragraphs = list(paragraphs)
    train = [p for i, p in enumerate(paragraphs) if i % _HOLDOUT_EVERY != _HOLDOUT_EVERY - 1]
    held = [p for i, p in enumerate(paragraphs) if i % _HOLDOUT_EVERY == _HOLDOUT_EVERY - 1]
    return train, held


class _Spans:
    """Word-aligned random spans of a list of paragraphs, drawn in proportion to the paragraphs' lengths."""

    def __init__(self, paragraphs: list[bytes]):
        self.paragraphs = paragraphs
        self.starts = [np.flatnonzero(np.frombuffer(b" " + p, np.uint8) == 32) for p in paragraphs]  # word starts
        lengths = np.array([len(p) for p in paragraphs], np.float64)
        self.p = lengths / lengths.sum()

    def plain(self, rng: np.random.Generator, max_bytes: int) -> bytes:
        i = int(rng.choice(len(self.paragraphs), p=self.p))
        start = int(rng.choice(self.starts[i]))
        return self.paragraphs[i][start:start + max_bytes]

    def words(self, rng: np.random.Generator) -> bytes:
        """One to six whole words of at most 30 bytes (a single longer word is cut)."""
        i = int(rng.choice(len(self.paragraphs), p=self.p))
        words = self.paragraphs[i][int(rng.choice(self.starts[i])):].split(b" ")[:int(rng.integers(1, 7))]
        while len(words) > 1 and len(b" ".join(words)) > _MAX_COPY_BYTES:
            words.pop()
        return b" ".join(words)[:_MAX_COPY_BYTES]


def _sample(spans: _Spans, rng: np.random.Generator, length: int, copy_fraction: float) -> np.ndarray:
    if rng.random() < copy_fraction:
        s = list(spans.words(rng))
        ids = [BOS, *s, SEP, *s, EOS]
    else:
        ids = [BOS, *spans.plain(rng, length - 2), EOS]
    out = np.full(length, PAD, np.int64)
    out[:len(ids)] = ids
    return out


def pretraining_batch(spans: _Spans, rng: np.random.Generator, batch_size: int, length: int,
                      copy_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, labels) of ``batch_size`` samples: labels are the next tokens, -100 where the next token is PAD."""
    x = torch.from_numpy(np.stack([_sample(spans, rng, length, copy_fraction) for _ in range(batch_size)]))
    y = torch.full_like(x, -100)
    y[:, :-1] = torch.where(x[:, 1:] == PAD, -100, x[:, 1:])
    return x, y


# --------------------------------------------------------------------------------------------- the model
def build_base_lm(config: dict | None = None):
    """A randomly initialised ``GPT2LMHeadModel`` of ``config``'s size over the stream's 260 tokens (dropout off,
    no cache, no special-token ids), drawn from torch's global generator."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:  # pragma: no cover - the adapters extra
        raise ImportError("the base LM is a Hugging Face GPT-2: pip install 'clenv[adapters]'") from exc
    cfg = _full_config(dict(config or {}))
    gpt = GPT2Config(n_layer=int(cfg["n_layer"]), n_embd=int(cfg["n_embd"]), n_head=int(cfg["n_head"]),
                     vocab_size=VOCAB_SIZE, n_positions=int(cfg["n_positions"]), resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, use_cache=False, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(gpt)


def _lr_factor(step: int, cfg: dict) -> float:
    warm = max(1, int(cfg["warmup"] * cfg["steps"]))
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, cfg["steps"] - warm)
    return cfg["final_lr"] + (1 - cfg["final_lr"]) * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def _validate(model, spans: _Spans, cfg: dict, batches: int = 8) -> dict:
    """Held-out next-token loss (nats per byte) on plain text, and per-token copy accuracy on the copy format."""
    model.eval()
    rng = np.random.default_rng(int(cfg["seed"]) + 7)
    out = {}
    for name, fraction in (("plain", 0.0), ("copy", 1.0)):
        losses, correct, scored = [], 0, 0
        for _ in range(batches):
            x, y = pretraining_batch(spans, rng, 32, int(cfg["n_positions"]), fraction)
            logits = model(x).logits
            losses.append(float(F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), ignore_index=-100)))
            if fraction:  # score the copied target only: the positions after SEP
                after = (x == SEP).long().cumsum(1) > 0
                keep = after & (y != -100)
                correct += int((logits.argmax(-1)[keep] == y[keep]).sum())
                scored += int(keep.sum())
        out[f"val_{name}_loss"] = float(np.mean(losses))
        if fraction:
            out["val_copy_accuracy"] = correct / max(1, scored)
    model.train()
    return out


def train_base_lm(config: dict | None = None, *, progress: bool = True):
    """Pretrain the base LM of ``config`` (overrides of :data:`DEFAULT_CONFIG`) from its seed; returns (model,
    record) with the model in eval mode and the record holding the losses, validation and seconds."""
    cfg = _full_config(dict(config or {}))
    train_text, held_text = pretraining_paragraphs()
    spans, held = _Spans(train_text), _Spans(held_text)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(cfg["seed"]))
        model = build_base_lm(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), betas=(0.9, 0.95),
                            weight_decay=float(cfg["weight_decay"]))
    rng = np.random.default_rng(int(cfg["seed"]))
    steps, losses, t0 = int(cfg["steps"]), [], time.perf_counter()
    bar = _progress(steps, progress)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = float(cfg["lr"]) * _lr_factor(step, cfg)
        x, y = pretraining_batch(spans, rng, int(cfg["batch_size"]), int(cfg["n_positions"]),
                                 float(cfg["copy_fraction"]))
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    record = dict(config=cfg, train_paragraphs=len(train_text), heldout_paragraphs=len(held_text),
                  first_loss=losses[0], final_loss=float(np.mean(losses[-100:])),
                  seconds=round(time.perf_counter() - t0, 1), **_validate(model, held, cfg))
    model.eval()
    return model, record


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="pretraining the base LM", unit="step", file=sys.stderr)


def pretrained_base_lm(config: dict | None = None, *, cache_dir: str | os.PathLike | None = None,
                       train_if_missing: bool = True, progress: bool = True):
    """The pretrained base LM of ``config`` (overrides of :data:`DEFAULT_CONFIG`; None: the defaults), in eval mode:
    loaded from the cache, or trained and cached first (``train_if_missing``; else ``FileNotFoundError``)."""
    cfg = _full_config(dict(config or {}))
    return cached_model(base_lm_path(cfg, cache_dir), lambda: build_base_lm(cfg),
                        lambda: train_base_lm(cfg, progress=progress), what="adapters' base LM",
                        command=f"python -m agents.adapters.base_lm --seed {cfg['seed']}",
                        train_if_missing=train_if_missing)


def main(argv=None) -> int:
    args = parse_base_args(base_parser("python -m agents.adapters.base_lm",
                                       "Pretrain (or show) the adapter agents' byte-level base LM.", DEFAULT_CONFIG),
                           argv)
    cfg = {"seed": args.seed, "steps": args.steps}
    return train_or_show(base_lm_path(cfg, args.cache_dir), lambda: train_base_lm(cfg), force=args.force)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
