"""StyleShiftTextEnv: the text style-shift stream of Functional Task Networks (Experiment 2, Appendix E).

Six tasks share one corpus of short mixed-case English sentences (:mod:`clenv.data.style_corpus`) and apply six
deterministic text-to-text transformations (:data:`TRANSFORMS`, in this order): ``upper``, ``lower``,
``reverse_words`` (the words in reverse order), ``double_words`` (each word printed twice), ``starred_vowels`` (each
of ``aeiouAEIOU`` replaced by ``*``) and ``pirate`` (``"Arr! " + s + " matey!"``). Every task sees the same source
sentences and asks for another target text: strict concept shift. Words are what ``str.split()`` gives (punctuation
stays on its word) and are joined by single spaces.

Tokens are bytes: ids 0..255 are the UTF-8 bytes of the text, then :data:`PAD` = 256, :data:`BOS` = 257, :data:`SEP`
= 258, :data:`EOS` = 259 (:data:`VOCAB_SIZE` = 260). A sample is ``[BOS] source [SEP] target [EOS]`` padded with PAD
to ``max_length`` (96) tokens (:func:`encode_sample`); a configuration in which some corpus sentence's sample would
not fit is refused at construction.

Step semantics are the supervised envs' (test-then-train), with a language model's teacher forcing: the observation
is a batch of samples, int64 of shape ``(batch, max_length)``, and the action predicts the next token at every
position, either as token ids ``(batch, max_length)`` (``action_type="labels"``) or as logits ``(batch, max_length,
260)`` (``action_type="logits"``, read by argmax). ``info["labels"]`` then reveals the next token at every position
whose next token is in the target span (the target bytes and EOS) and -100 elsewhere (the source, the separator and
the padding are not scored; -100 is PyTorch's cross-entropy ``ignore_index``), so an agent's loss is
``cross_entropy(logits.reshape(-1, 260), labels.reshape(-1))``. The reward (and ``info["accuracy"]``) is the
per-token accuracy over the scored positions, ``info["tokens_scored"]`` their number. A bad action raises
``ValueError`` before anything changes.

Everything is a pure function of (stream seed, transformation, step): training batch ``j`` of a task samples
training sentences (without replacement within a batch) from a generator keyed by the task's transformation (its
index in :data:`TRANSFORMS`), not by its position in the stream, so a task's batches are the same whether or not
earlier tasks ran and whichever ``tasks`` the stream was made with: ``tasks=("pirate",)`` is a single-task stream
whose batches and splits are the six-task stream's pirate task's (how adapters are trained independently per task
before they are merged). :meth:`StyleShiftTextEnv.test_batches` serves three fixed splits per task: ``test``, the
held-out sentences (:data:`clenv.data.style_corpus.TEST`, never in a training or support batch; the split the paper's
per-token cross-entropy is reported on); ``support``, a fixed seeded draw of 16 training sentences (the labelled
support batch a mask-routed agent recovers its mask from at evaluation); ``train``, every training sentence.

Citation: Functional Task Networks, Experiment 2 and Appendix E (002_b6d509c9f1140765.txt): six style tasks on a
frozen distilgpt2 with LoRA-FTN, 200 steps per task at batch 8, support batch 16, max sequence length 96, per-token
cross-entropy on a held-out split. The paper tokenises with GPT-2's BPE; this env is byte-level, so an agent with a
pretrained tokenizer maps bytes to its own tokens (or learns byte embeddings), and ``max_length`` counts bytes.
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from gymnasium import spaces

from clenv.data.style_corpus import SENTENCES, TEST, TRAIN
from clenv.envs.step_stream import StepCountedStreamEnv
from clenv.envs.supervised import action_array
from clenv.streams import require_bool, require_int, task_rng

__all__ = ["StyleShiftTextEnv", "TRANSFORMS", "SPLITS", "PAD", "BOS", "SEP", "EOS", "VOCAB_SIZE", "IGNORE_INDEX",
           "encode", "decode", "encode_sample", "sample_length"]

PAD, BOS, SEP, EOS = 256, 257, 258, 259
VOCAB_SIZE = 260
#: The label of a position that is not scored (PyTorch's ``cross_entropy`` ignore_index).
IGNORE_INDEX = -100
_SPECIAL_NAMES = {PAD: "<pad>", BOS: "<bos>", SEP: "<sep>", EOS: "<eos>"}
_VOWELS = frozenset("aeiouAEIOU")


def _upper(s: str) -> str:
    return s.upper()


def _lower(s: str) -> str:
    return s.lower()


def _reverse_words(s: str) -> str:
    return " ".join(reversed(s.split()))


def _double_words(s: str) -> str:
    return " ".join(w for word in s.split() for w in (word, word))


def _starred_vowels(s: str) -> str:
    return "".join("*" if c in _VOWELS else c for c in s)


def _pirate(s: str) -> str:
    return "Arr! " + s + " matey!"


#: The six transformations, in task order: task k applies ``list(TRANSFORMS.values())[k]``.
TRANSFORMS: dict[str, Callable[[str], str]] = {
    "upper": _upper, "lower": _lower, "reverse_words": _reverse_words, "double_words": _double_words,
    "starred_vowels": _starred_vowels, "pirate": _pirate}
_TASK_NAMES = tuple(TRANSFORMS)

#: The fixed per-task sample sets of :meth:`StyleShiftTextEnv.test_batches`: the support draw's generator key, and
#: the sentences each draws from.
SPLITS = {"test": 1, "support": 2, "train": 3}
_BATCH_KEY = 10  # train batch j under transformation g (index in TRANSFORMS): task_rng(seed, g, _BATCH_KEY, j)


# --------------------------------------------------------------------------------------------- tokens
def encode(text: str) -> np.ndarray:
    """The byte tokens (int64, ids 0..255) of ``text``'s UTF-8 encoding."""
    if not isinstance(text, str):
        raise TypeError(f"encode takes a str, got {type(text).__name__}")
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(ids, skip_special: bool = True) -> str:
    """The text of byte tokens: special tokens are dropped (``skip_special``) or written as ``<bos>``, ``<sep>``,
    ``<eos>``, ``<pad>``; bytes that are not valid UTF-8 become U+FFFD. Ids outside 0..259 raise ``ValueError``."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids).reshape(-1)
    if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must be integers in 0..{VOCAB_SIZE - 1}, got {a.dtype} values "
                         f"{a.min()}..{a.max()}")
    out, run = [], bytearray()
    for t in a.tolist():
        if t < 256:
            run.append(t)
            continue
        if not skip_special:
            out.append(run.decode("utf-8", errors="replace"))
            out.append(_SPECIAL_NAMES[t])
            run = bytearray()
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def _task_name(task) -> str:
    if isinstance(task, str):
        if task not in TRANSFORMS:
            raise ValueError(f"unknown transformation {task!r}; expected one of {list(TRANSFORMS)}")
        return task
    return _TASK_NAMES[require_int("task", task, minimum=0, maximum=len(_TASK_NAMES) - 1)]


def _task_order(tasks) -> tuple[str, ...]:
    """The ``tasks`` option as transformation names in stream order, checked (None: all six in order)."""
    if tasks is None:
        return _TASK_NAMES
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else tasks
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"tasks must be a non-empty sequence of transformation names such as ('pirate',), or "
                         f"None for all six; got {tasks!r}")
    for name in names:
        if not isinstance(name, str) or name not in TRANSFORMS:
            close = difflib.get_close_matches(str(name), _TASK_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown transformation {name!r} in tasks{hint} (expected names of {list(TRANSFORMS)})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"tasks names {repeated} more than once; each transformation is one task")
    return tuple(names)


def sample_length(source: str, task) -> int:
    """Tokens in the (unpadded) sample of ``source`` under ``task`` (an index or a :data:`TRANSFORMS` name)."""
    return len(encode(source)) + len(encode(TRANSFORMS[_task_name(task)](source))) + 3


def encode_sample(source: str, task, max_length: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The sample of ``source`` under ``task`` (an index or a :data:`TRANSFORMS` name) as (tokens, labels), int64 of
    shape ``(max_length,)``: tokens ``[BOS] source [SEP] target [EOS] PAD...``; ``labels[i] = tokens[i + 1]`` where
    ``tokens[i + 1]`` is a target byte or EOS, -100 elsewhere. Raises ``ValueError`` when it does not fit."""
    max_length = require_int("max_length", max_length, minimum=1)
    src, tgt = encode(source), encode(TRANSFORMS[_task_name(task)](source))
    n = len(src) + len(tgt) + 3
    if n > max_length:
        raise ValueError(f"the sample of {source!r} under {_task_name(task)!r} needs {n} tokens, more than "
                         f"max_length={max_length}")
    tokens = np.full(max_length, PAD, np.int64)
    tokens[0] = BOS
    tokens[1:1 + len(src)] = src
    tokens[1 + len(src)] = SEP
    start = 2 + len(src)  # the first target token; EOS sits at start + len(tgt)
    tokens[start:start + len(tgt)] = tgt
    tokens[start + len(tgt)] = EOS
    labels = np.full(max_length, IGNORE_INDEX, np.int64)
    labels[start - 1:start + len(tgt)] = tokens[start:start + len(tgt) + 1]
    return tokens, labels


# --------------------------------------------------------------------------------------------- the env
class StyleShiftTextEnv(StepCountedStreamEnv):
    """Six text style-transformation tasks on the same sentences (FTN, Experiment 2; see the module docstring).

    Args:
        num_tasks: the first ``num_tasks`` of ``tasks`` (1..6).
        tasks: the transformations in stream order, a sequence of :data:`TRANSFORMS` names without repeats (or one
            comma-separated string); None: all six in :data:`TRANSFORMS` order. Each task's data is keyed by its
            transformation, so ``tasks=("pirate",), num_tasks=1`` serves exactly the six-task stream's pirate task.
        steps_per_task: batches per task (the paper: 200).
        batch_size: samples per observation (8).
        max_length: tokens per sample, padding included (96); every corpus sentence's sample must fit under every
            task of the stream.
        test_samples_per_task: how many of the 20 held-out sentences the ``test`` split serves (None: all).
        support_samples_per_task: size of each task's fixed ``support`` draw of training sentences (16).
        action_type: ``"labels"`` (predicted next-token ids) or ``"logits"`` (``(batch, max_length, 260)``).
        device: where :meth:`test_batches` tensors (and ``"torch"`` observations) live.
        output: ``"numpy"`` observations or ``"torch"`` tensors on ``device``.
    """

    metadata = {"render_modes": []}
    SPLITS = SPLITS
    task_type = "language"

    def __init__(self, num_tasks: int = 6, steps_per_task: int = 200, batch_size: int = 8, max_length: int = 96,
                 test_samples_per_task: int | None = None, support_samples_per_task: int = 16,
                 action_type: str = "labels", device: str = "cpu", output: str = "numpy",
                 tasks: Sequence[str] | str | None = None):
        if action_type not in ("labels", "logits"):
            raise ValueError(f"action_type must be 'labels' or 'logits', got {action_type!r}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        order = _task_order(tasks)
        self.num_tasks = require_int("num_tasks", num_tasks, minimum=1, maximum=len(TRANSFORMS))
        if self.num_tasks > len(order):
            raise ValueError(f"num_tasks={self.num_tasks} but tasks names {len(order)} transformation(s) "
                             f"{list(order)}: pass num_tasks={len(order)} with them")
        self._steps = require_int("steps_per_task", steps_per_task, minimum=1)
        self.batch_size = require_int("batch_size", batch_size, minimum=1)
        self.max_length = require_int("max_length", max_length, minimum=1)
        self.test_samples = require_int("test_samples_per_task", test_samples_per_task, minimum=1,
                                        maximum=len(TEST), optional=True)
        self.support_samples = require_int("support_samples_per_task", support_samples_per_task, minimum=1,
                                           maximum=len(TRAIN))
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})") from None
        self.task_names: tuple[str, ...] = order[:self.num_tasks]
        # The generator key of each task: its transformation's index in TRANSFORMS (the stream position for the
        # default order, so those streams are unchanged).
        self._keys = tuple(_TASK_NAMES.index(name) for name in self.task_names)
        need, worst = max((sample_length(s, t), (s, t)) for t in self.task_names for s in SENTENCES)
        if need > self.max_length:
            raise ValueError(f"max_length={self.max_length} is too short for this corpus: the sample of "
                             f"{worst[0]!r} under {worst[1]!r} needs {need} tokens ([BOS] source [SEP] target "
                             f"[EOS]); use max_length >= {need}")
        self.action_type = action_type
        self.output = output
        self.task_aware = False
        self.num_classes = VOCAB_SIZE
        self.vocab_size = VOCAB_SIZE
        self.config = dict(num_tasks=self.num_tasks, steps_per_task=self._steps, batch_size=self.batch_size,
                           max_length=self.max_length, test_samples_per_task=self.test_samples,
                           support_samples_per_task=self.support_samples, action_type=action_type,
                           device=str(device), output=output)
        if self.task_names != _TASK_NAMES[:self.num_tasks]:  # kept out of the default order's identity
            self.config["tasks"] = list(self.task_names)
        # Every (task, sentence) sample, built once: (num_tasks, len(SENTENCES), max_length) tokens and labels.
        pairs = [[encode_sample(s, t, self.max_length) for s in SENTENCES] for t in self.task_names]
        self._tokens = np.stack([np.stack([p[0] for p in row]) for row in pairs])
        self._labels = np.stack([np.stack([p[1] for p in row]) for row in pairs])
        shape = (self.batch_size, self.max_length)
        self.observation_space = spaces.MultiDiscrete(np.full(shape, VOCAB_SIZE, np.int64))
        if action_type == "labels":
            self.action_space = spaces.MultiDiscrete(np.full(shape, VOCAB_SIZE, np.int64))
        else:
            self.action_space = spaces.Box(-np.inf, np.inf, (*shape, VOCAB_SIZE), np.float32)
        self._start_cursor()

    # ----------------------------------------------------------------- the data, a pure function of the seed
    encode = staticmethod(encode)
    decode = staticmethod(decode)

    def sample(self, sentence: str, task_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The (tokens, labels) of any ``sentence`` under task ``task_id`` at this env's ``max_length``."""
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        return encode_sample(sentence, self.task_names[task_id], self.max_length)

    def target(self, sentence: str, task_id: int) -> str:
        """Task ``task_id``'s target text for ``sentence``."""
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        return TRANSFORMS[self.task_names[task_id]](sentence)

    def split_indices(self, task_id: int, split: str) -> np.ndarray:
        """Indices into :data:`clenv.data.style_corpus.SENTENCES` of task ``task_id``'s fixed ``split``: ``test``
        the held-out sentences (the first ``test_samples_per_task``), ``support`` a seeded draw of training
        sentences (without replacement, one per (stream seed, task)), ``train`` every training sentence."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        if split == "test":
            return np.arange(len(TRAIN), len(TRAIN) + (self.test_samples or len(TEST)))
        if split == "train":
            return np.arange(len(TRAIN))
        self._require_seed()
        rng = task_rng(self.stream_seed, self._keys[task_id], SPLITS["support"])
        return np.sort(rng.choice(len(TRAIN), size=self.support_samples, replace=False))

    def batch_indices(self, task_id: int, step_in_task: int) -> np.ndarray:
        """Indices into ``SENTENCES`` of training batch ``step_in_task`` of task ``task_id``: training sentences
        drawn from the generator of (stream seed, the task's transformation, step), without replacement within the
        batch (with replacement when the batch is larger than the training set)."""
        self._require_seed()
        rng = task_rng(self.stream_seed, self._keys[task_id], _BATCH_KEY, step_in_task)
        return rng.choice(len(TRAIN), size=self.batch_size, replace=self.batch_size > len(TRAIN))

    def _batch(self, task_id: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.batch_indices(task_id, j)
        return self._tokens[task_id, idx], self._labels[task_id, idx]

    # ----------------------------------------------------------------- evaluation helpers
    def test_batches(self, task_id: int, batch_size: int = 64, split: str = "test", max_samples: int | None = None,
                     context: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task ``task_id``'s fixed ``test`` (held-out sentences), ``support`` (the seeded support draw of training
        sentences) or ``train`` (every training sentence) samples as (int64 tokens, int64 labels) tensors of shape
        ``(n, max_length)`` on the env's device, in :meth:`split_indices` order. ``context`` is accepted for the
        probes' sake (this stream is never joint)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        batch_size = require_int("batch_size", batch_size, minimum=1)
        max_samples = require_int("max_samples", max_samples, minimum=0, optional=True)
        require_bool("context", context)
        idx = self.split_indices(task_id, split)
        if max_samples is not None:
            idx = idx[:max_samples]
        for s in range(0, len(idx), batch_size):
            sel = idx[s:s + batch_size]
            yield (torch.as_tensor(self._tokens[task_id, sel], device=self.device),
                   torch.as_tensor(self._labels[task_id, sel], device=self.device))

    def eval_env(self) -> "StyleShiftTextEnv":
        """A new env with the same configuration and stream seed."""
        self._require_seed()
        env = StyleShiftTextEnv(**self.config)
        env.reset(options={"stream_seed": self.stream_seed})
        return env

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The stream position: the configuration (checked on load), the stream seed, the cursor, the step count,
        the episode's first and last task, whether it has ended, and ``np_random``'s state (which draws the next
        stream seed at a seedless ``reset``). The current batch is derived and rebuilt on load."""
        rng = self._np_random
        return {"config": dict(self.config), "stream_seed": self.stream_seed, "task": int(self._task),
                "step_in_task": int(self._step_in_task), "step": int(self._step),
                "first_task": int(self._first_task), "last_task": int(self._last_task), "done": bool(self._done),
                "np_random": None if rng is None else rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; a state of another configuration (or an impossible position) is
        refused with ``ValueError`` and nothing changes."""
        if not isinstance(state, dict):
            raise ValueError(f"not a StyleShiftTextEnv state: expected a dict, got {type(state).__name__}")
        missing = {"config", "stream_seed", "task", "step_in_task", "step", "first_task", "last_task", "done"} - set(
            state)
        if missing:
            raise ValueError(f"not a StyleShiftTextEnv state: missing {sorted(missing)}")
        theirs = {k: v for k, v in dict(state["config"]).items() if k != "device"}
        ours = {k: v for k, v in self.config.items() if k != "device"}
        if theirs != ours:
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k, "<unset>") != theirs.get(k, "<unset>"))
            raise ValueError("env state was saved with another configuration: "
                             + ", ".join(f"{k}={theirs.get(k, '<unset>')!r} (this env: {ours.get(k, '<unset>')!r})"
                                         for k in diff))
        first, last, task = int(state["first_task"]), int(state["last_task"]), int(state["task"])
        if not 0 <= first <= task <= last < self.num_tasks:
            raise ValueError(f"env state has task {task} outside tasks {first}..{last}")
        done, step_in_task, step = bool(state["done"]), int(state["step_in_task"]), int(state["step"])
        if not 0 <= step_in_task <= self._steps - (0 if done else 1) or step < 0:
            raise ValueError(f"env state has step {step_in_task} of task {task}, outside 0..{self._steps - 1}")
        seed = None if state["stream_seed"] is None else int(state["stream_seed"])
        if seed is None and not done:
            raise ValueError("env state is mid-stream but has no stream seed")
        rng = None
        if state.get("np_random") is not None:
            bit_state = state["np_random"]
            try:
                rng = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
                rng.bit_generator.state = bit_state
            except (AttributeError, KeyError, TypeError, ValueError) as err:
                raise ValueError(f"env state has an unreadable np_random state ({err})") from None
        # Everything is checked: apply.
        self.stream_seed = seed
        self._first_task, self._last_task, self._task = first, last, task
        self._step_in_task, self._step, self._done = step_in_task, step, done
        self._targets = self._empty_targets() if done else self._batch(task, step_in_task)[1]
        if rng is not None:
            self._np_random = rng

    # ----------------------------------------------------------------- internals
    def _empty_targets(self) -> np.ndarray:
        return np.zeros((0, self.max_length), np.int64)

    def _obs(self, tokens: np.ndarray):
        return torch.as_tensor(tokens, device=self.device) if self.output == "torch" else tokens

    def _extra_info(self, targets, reward: float) -> dict:
        return {"tokens_scored": int(np.count_nonzero(targets != IGNORE_INDEX))}

    def _score(self, pred: np.ndarray, targets: np.ndarray) -> float:
        scored = targets != IGNORE_INDEX
        return float(np.count_nonzero((pred == targets) & scored)) / int(np.count_nonzero(scored))

    def _final_obs(self) -> np.ndarray:
        return np.full(self.observation_space.shape, PAD, np.int64)

    def _validate(self, action) -> np.ndarray:
        """The action as predicted next-token ids of shape (batch, max_length); raises before anything changes."""
        a = action_array(action, self.action_space)
        b, n, v = self.batch_size, self.max_length, VOCAB_SIZE
        if self.action_type == "labels":
            if a.shape != (b, n):
                raise ValueError(f"action must be predicted next-token ids of shape ({b}, {n}), got shape {a.shape}"
                                 + (" (logits? make the env with action_type='logits')" if a.shape == (b, n, v)
                                    else "") + "; the step was rejected and the stream did not advance")
            if a.dtype.kind not in "iu":
                raise ValueError(f"action must be integer token ids, got dtype {a.dtype}; the step was rejected and "
                                 "the stream did not advance")
            if a.size and (a.min() < 0 or a.max() >= v):
                raise ValueError(f"action token ids must be in 0..{v - 1}, got values in {a.min()}..{a.max()}; the "
                                 "step was rejected and the stream did not advance")
            return a
        if a.shape != (b, n, v):
            raise ValueError(f"action must be logits of shape ({b}, {n}, {v}), got shape {a.shape}; the step was "
                             "rejected and the stream did not advance")
        if a.dtype.kind != "f":
            raise ValueError(f"logits must be floating point, got dtype {a.dtype}; the step was rejected and the "
                             "stream did not advance")
        if not np.isfinite(a).all():
            raise ValueError("logits contain NaN or inf; the step was rejected and the stream did not advance")
        return a.argmax(axis=-1)
