"""SupervisedStreamEnv: a supervised continual-learning task stream as one Gymnasium episode.

Step semantics are test-then-train (prequential): the observation is a batch of inputs, the action is the agent's
prediction for it, the reward is that prediction's accuracy, and ``info["labels"]`` then reveals the batch's labels
so the agent can learn from them in ``observe``. The returned observation is the next batch.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from clenv.data import LOCATION_KWARGS
from clenv.data.augment import Augmentation
from clenv.data.sources import load_dataset
from clenv.streams import (Stream, Task, check_reset, check_stream_kwargs, make_stream, require_bool, require_int,
                           start_stream, task_rng)

__all__ = ["SupervisedStreamEnv", "INFO_KEYS", "AUGMENT_MODES", "DEFAULT_AUGMENT", "task_steps", "action_array"]

#: The keys every ``info`` dict carries, at reset and at every step.
INFO_KEYS = ("task_id", "task_switch", "labels", "labels_task_id", "accuracy", "step", "step_in_task")

#: An epoch's training images up to this size are gathered once, in the order the epoch serves them (``_epoch``):
#: cut into ready batches when nothing is applied to them, else kept as rows that each batch slices.
EPOCH_CACHE_BYTES = 64 * 2**20
#: Batches of up to this many labels are checked and scored in Python (see ``_validate``), larger ones in numpy.
PYTHON_SCORING_MAX_BATCH = 256
#: How augmentation is drawn: ``"per_task"`` gives each sample of a task one view (crop, flip, rotation) for all of
#: the task's epochs, a new one in every task; ``"per_epoch"`` draws a new view for every (task, epoch).
AUGMENT_MODES = ("per_task", "per_epoch")
#: What ``augment=True`` means (docs/design-notes.md says why).
DEFAULT_AUGMENT = "per_epoch"
_TASK_VIEW_KEY = (3000, 1)  # task_rng(seed, task, *_TASK_VIEW_KEY): the per-task views, apart from every epoch key
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}  # the same-width view of a signed label array
_CLASS_SPLIT_KW = ("classes_per_task", "samples_per_class", "disjoint", "labels")


def action_array(action, space) -> np.ndarray:
    """An env's action (array-like, or a torch tensor on any device, bfloat16 included) as a numpy array; a ragged
    nested list is a ``ValueError`` that names the shape ``space`` expects. The stream envs validate it from here."""
    if isinstance(action, torch.Tensor):
        if action.dtype == torch.bfloat16:  # numpy has no bfloat16
            action = action.float()
        action = action.detach().cpu().numpy()
    try:
        return np.asarray(action)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"action must be an array-like of shape {space.shape}, got {action!r:.80} ({err})") from None


def augment_mode(value: Any) -> str | bool:
    """``augment`` as the mode it names (:data:`AUGMENT_MODES`; ``True`` is :data:`DEFAULT_AUGMENT`) or ``False``;
    anything else is a ``TypeError`` saying what to pass."""
    if isinstance(value, str) and value in AUGMENT_MODES:
        return value
    try:
        flag = require_bool("augment", value)
    except TypeError:
        raise TypeError(f"augment must be True, False or one of {', '.join(map(repr, AUGMENT_MODES))}, got "
                        f"{value!r} ({type(value).__name__})") from None
    return DEFAULT_AUGMENT if flag else False


def task_steps(num_train: int, batch_size: int, epochs_per_task: int, steps_per_task: int | None = None) -> int:
    """Steps (batches) in one task: ``steps_per_task`` when given, else ``num_train // batch_size`` full batches per
    epoch times ``epochs_per_task`` (a last partial batch is dropped). The one rule the env and the paper tables use.
    """
    num_train = require_int("num_train", num_train, minimum=0)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    epochs_per_task = require_int("epochs_per_task", epochs_per_task, minimum=1)
    steps_per_task = require_int("steps_per_task", steps_per_task, minimum=1, optional=True)
    if steps_per_task is not None:
        return steps_per_task
    return num_train // batch_size * epochs_per_task


@dataclass(frozen=True)
class _Cursor:
    task: int
    step_in_task: int


class _Epoch(NamedTuple):
    """One epoch of one task on the host: its task, sample order and augmentation draws, and its gathered batches
    (``ready``: (images, labels) lists, one entry per step, when nothing is applied to a batch) or gathered rows
    (``rows``: (images, labels) arrays in serving order, sliced per batch); both None above ``EPOCH_CACHE_BYTES``."""
    task: Task
    order: np.ndarray
    aug: torch.Tensor | None
    ready: tuple[list, list] | None
    rows: tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class _EpochTensors:
    """One epoch's sample order on the env's device: dataset rows, labels, permutation ids and augmentation draws
    in batch order (``perm_ids`` / ``permutations`` None for a stream without permutations)."""
    rows: torch.Tensor
    labels: torch.Tensor
    perm_ids: torch.Tensor | None
    permutations: torch.Tensor | None
    aug: torch.Tensor | None


def _host(labels):
    """Labels as a host (numpy) array: a tensor is copied from its device (checkpoints only, never per step)."""
    return labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels


class SupervisedStreamEnv(gym.Env):
    """A stream of supervised tasks over one dataset.

    Args:
        dataset: a key of :data:`clenv.data.DATASETS` (``"fashion_mnist"``, ``"cifar10"``, ``"digits"``, ...).
        stream: ``"random_label"``, ``"label_shuffle"``, ``"permuted"`` or ``"class_split"``.
        num_tasks: number of tasks in the stream.
        samples_per_task: train samples drawn per task (None: the whole train split; class splits use
            ``samples_per_class``).
        epochs_per_task: passes over a task's samples; steps per task = epochs x floor(samples / batch_size).
        steps_per_task: overrides the epoch count (and is required with ``joint=True``).
        batch_size: samples per observation.
        augment: per-sample random crop, flip and rotation, drawn differently per task (Appendix B.3):
            ``"per_task"`` (one view per sample for the whole task), ``"per_epoch"`` (a new view every epoch),
            ``True`` (:data:`DEFAULT_AUGMENT`) or ``False``. The configuration records the mode.
        device: where the dataset tensor lives and batches are built.
        task_aware: add the task id to the observation (a Dict observation ``{"x", "task_id"}``).
        data_root / download / image_size: passed to the dataset loader (``download=None``, the default, fetches a
            torchvision dataset that is not on disk; False never touches the network).
        action_type: ``"labels"`` (MultiDiscrete of predicted classes) or ``"logits"`` (Box (B, C)).
        recurring_every: one fixed task recurs every n tasks (Appendix D.2).
        joint: cumulative joint training; task k samples with replacement from the union of tasks 0..k.
        test_samples_per_task: held-out samples per task served by :meth:`test_batches`.
        output: ``"numpy"`` arrays on the host (what gymnasium's env checker and vector envs want) or ``"torch"``
            tensors on ``device`` (observations and ``info["labels"]``). Default (None): numpy on the CPU, torch on
            any other device, so that a device-resident run's batches go from the stream to the agent without a
            host round trip (see :meth:`step` for the one transfer a step still makes).
        classes_per_task, samples_per_class, disjoint, labels: class-split options (see ``ClassSplitStream``).

    Every argument is checked before any data is loaded, with a ``TypeError`` / ``ValueError`` saying what to pass.
    Counts are Python or numpy integers: floats are refused even when whole (pass 3, not 3.0), and so are bools.
    Flags (``task_aware``, ``joint``, ``disjoint``, ``download``) are ``True`` / ``False`` only, and ``augment`` is
    one of those or a mode of :data:`AUGMENT_MODES`: a string such as ``"no"`` is refused rather than read as true.
    """

    metadata = {"render_modes": []}

    def __init__(self, dataset: str = "digits", stream: str = "random_label", *, num_tasks: int = 10,
                 samples_per_task: int | None = None, epochs_per_task: int = 1, steps_per_task: int | None = None,
                 batch_size: int = 16, augment: bool | str = False, device: str = "cpu", task_aware: bool = False,
                 data_root: str | None = None, download: bool | None = None, image_size: int | None = None,
                 action_type: str = "labels", recurring_every: int | None = None, joint: bool = False,
                 test_samples_per_task: int | None = 1000, output: str | None = None, **kwargs: Any):
        unknown = set(kwargs) - set(_CLASS_SPLIT_KW)
        if unknown:
            raise TypeError(f"unknown keyword argument(s) {sorted(unknown)} for SupervisedStreamEnv; valid: "
                            f"{sorted(self.valid_kwargs())}")
        if kwargs and stream != "class_split":
            raise TypeError(f"{sorted(kwargs)} only apply to stream='class_split', not {stream!r}")
        if action_type not in ("labels", "logits"):
            raise ValueError(f"action_type must be 'labels' or 'logits', got {action_type!r}")
        if output is not None and output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch' (or None: numpy on the CPU, torch on another "
                             f"device), got {output!r}")
        # Everything is checked before the dataset is loaded (which may download it).
        batch_size = require_int("batch_size", batch_size, minimum=1)
        epochs_per_task = require_int("epochs_per_task", epochs_per_task, minimum=1)
        steps_per_task = require_int("steps_per_task", steps_per_task, minimum=1, optional=True)
        image_size = require_int("image_size", image_size, minimum=1, optional=True)
        augment, task_aware = augment_mode(augment), require_bool("task_aware", task_aware)
        download = require_bool("download", download, optional=True)
        if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
            raise TypeError(f"data_root must be a path (str or os.PathLike) or None, got {data_root!r}")
        try:
            torch_device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})") from None
        if output is None:  # the configuration records what is served, so eval_env() and checkpoints see it
            output = "numpy" if torch_device.type == "cpu" else "torch"
        stream_kw = check_stream_kwargs(stream, num_tasks=num_tasks, samples_per_task=samples_per_task, joint=joint,
                                        recurring_every=recurring_every,
                                        test_samples_per_task=test_samples_per_task, **kwargs)
        num_tasks, samples_per_task, joint = stream_kw["num_tasks"], stream_kw["samples_per_task"], stream_kw["joint"]
        recurring_every, test_samples_per_task = stream_kw["recurring_every"], stream_kw["test_samples_per_task"]
        kwargs = {k: stream_kw[k] for k in kwargs}
        if joint and steps_per_task is None:
            raise ValueError("joint=True samples with replacement: give steps_per_task")

        load_kw = {"image_size": image_size} if image_size is not None else {}
        self.dataset = load_dataset(dataset, root=data_root, download=download, **load_kw)
        self.stream: Stream = make_stream(stream, dataset=self.dataset, **stream_kw)
        self.config = dict(dataset=dataset, stream=stream, num_tasks=num_tasks, samples_per_task=samples_per_task,
                           epochs_per_task=epochs_per_task, steps_per_task=steps_per_task,
                           batch_size=batch_size, augment=augment, device=str(device),
                           task_aware=task_aware, data_root=data_root, download=download,
                           image_size=image_size, action_type=action_type, recurring_every=recurring_every,
                           joint=joint, test_samples_per_task=test_samples_per_task, output=output, **kwargs)
        self.num_tasks = int(num_tasks)
        self.batch_size = int(batch_size)
        self.epochs_per_task = int(epochs_per_task)
        self.num_classes = self.stream.num_outputs
        self.device = torch_device
        self.task_aware = bool(task_aware)
        self.action_type = action_type
        self.output = output
        # Batches are built from per-epoch index tensors on the device (no host-to-device transfer per step) unless
        # the env is the host-only numpy one, whose numpy fancy indexing path is kept as it always was.
        self._resident = output == "torch" or torch_device.type != "cpu"
        self.augmentation = Augmentation.for_image_size(self.dataset.image_shape[-1]) if augment else None
        self.augment = augment  # the mode, or False
        self._steps_override = steps_per_task
        self._train_images = self.dataset.train.images.to(self.device)
        self._test_images = self.dataset.test.images.to(self.device)
        probe = self.stream.task(0, 0)
        if not probe.with_replacement and probe.num_train < self.batch_size:
            raise ValueError(f"a task has {probe.num_train} train samples, fewer than batch_size={self.batch_size}")

        shape = self.dataset.image_shape
        x_space = batch_space(spaces.Box(0, 255, shape, np.uint8), self.batch_size)
        self.observation_space = (spaces.Dict({"x": x_space, "task_id": spaces.Discrete(self.num_tasks)})
                                  if self.task_aware else x_space)
        if action_type == "labels":
            self.action_space = batch_space(spaces.Discrete(self.num_classes), self.batch_size)
        else:
            self.action_space = spaces.Box(-np.inf, np.inf, (self.batch_size, self.num_classes), np.float32)

        self.stream_seed: int | None = None
        self._cursor = _Cursor(0, 0)
        self._first_task, self._last_task = 0, self.num_tasks - 1
        self._step = 0
        self._done = True
        self._epoch_cache: tuple | None = None  # ((task, epoch), _Epoch) of the epoch being served
        self._device_epoch: tuple | None = None  # (the epoch's order array, its _EpochTensors) when resident
        self._steps_memo: dict[tuple, int] = {}

    # ----------------------------------------------------------------- introspection
    @classmethod
    def valid_kwargs(cls) -> set[str]:
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return {p for p in params if p not in ("self", "kwargs")} | set(_CLASS_SPLIT_KW)

    def steps_per_task(self, task_id: int = 0) -> int:
        """Steps (batches) in task ``task_id`` (the rule of :func:`task_steps`)."""
        key = (self.stream_seed if self.stream_seed is not None else 0, task_id)
        n = self._steps_memo.get(key)
        if n is None:  # step() asks every step: validate and compute once per (stream seed, task)
            t = self.stream.task(*key)
            n = self._steps_memo[key] = task_steps(t.num_train, self.batch_size, self.epochs_per_task,
                                                   self._steps_override)
        return n

    @property
    def total_steps(self) -> int:
        """Steps in the episode: the whole stream, or the one task a ``reset(options={"task_id": k})`` selected."""
        return sum(self.steps_per_task(k) for k in range(self._first_task, self._last_task + 1))

    def task(self, task_id: int) -> Task:
        """The definition of task ``task_id`` under the current stream seed."""
        self._require_seed()
        return self.stream.task(self.stream_seed, task_id)

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start the stream. ``options``: ``task_id`` replays only that task (an evaluation env), keeping the
        current stream seed unless ``seed`` or ``stream_seed`` is given; ``stream_seed`` sets the stream directly.
        A refused reset (``ValueError`` / ``TypeError``) changes nothing: the stream goes on where it was."""
        seed, options = check_reset(self.num_tasks, seed, options)  # before super().reset reseeds np_random
        super().reset(seed=seed)
        self._first_task, self._last_task = start_stream(self, seed, options)
        self._cursor = _Cursor(self._first_task, 0)
        self._step = 0
        self._done = False
        self._epoch_cache = self._device_epoch = None
        obs, labels = self._batch(self._cursor)
        self._labels = labels
        info = self._info(self._cursor, True, self._no_labels(), -1, 0.0)
        return self._obs(obs, self._cursor.task), info

    def step(self, action):
        """Score ``action`` (predicted labels or logits for the current batch: numpy, a list, or a torch tensor on
        any device), then serve the next batch and reveal this one's labels in ``info["labels"]``.

        With ``output="torch"`` a tensor action is checked and scored on the env's device: the one device-to-host
        transfer of the step reads the check's verdict and the number of correct predictions together (the reward
        is a Python float that the loop and ``info["accuracy"]`` need at once, so it cannot stay lazy)."""
        if self._done:
            raise RuntimeError("the stream has ended (terminated=True); call reset() to start it again")
        accuracy = self._correct(action) / self.batch_size
        labels, labels_task = self._labels, self._cursor.task
        cur = self._cursor
        if cur.step_in_task + 1 < self.steps_per_task(cur.task):
            nxt, switch = _Cursor(cur.task, cur.step_in_task + 1), False
        else:
            nxt, switch = _Cursor(cur.task + 1, 0), True
        self._step += 1
        terminated = nxt.task > self._last_task
        if terminated:
            self._done = True
            obs = np.zeros(self._x_shape, np.uint8) if self.output == "numpy" else torch.zeros(
                self._x_shape, dtype=torch.uint8, device=self.device)
            self._labels = self._no_labels()
            info = self._info(cur, False, labels, labels_task, accuracy)
            info["step_in_task"] = cur.step_in_task + 1
            return self._obs(obs, cur.task), accuracy, True, False, info
        self._cursor = nxt
        obs, self._labels = self._batch(nxt)
        return self._obs(obs, nxt.task), accuracy, False, False, self._info(nxt, switch, labels, labels_task, accuracy)

    # ----------------------------------------------------------------- evaluation helpers
    def test_batches(self, task_id: int, batch_size: int = 500, split: str = "test", max_samples: int | None = None,
                     context: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out (``split="test"``) or training samples of task ``task_id``, un-augmented, as (uint8 images,
        int64 labels) tensors on the env's device. Pixel permutations and label maps are applied. ``context=True``
        serves the task's own context on a ``joint`` stream (whose task k is the union of contexts 0..k); it is the
        same as the task otherwise."""
        if split not in ("test", "train"):
            raise ValueError(f"split must be 'test' or 'train', got {split!r}")
        batch_size = require_int("batch_size", batch_size, minimum=1)
        max_samples = require_int("max_samples", max_samples, minimum=0, optional=True)
        if context:
            self._require_seed()
            t = self.stream.context(self.stream_seed, task_id)
        else:
            t = self.task(task_id)
        idx, lab, pid = ((t.test_indices, t.test_labels, t.test_perm_ids) if split == "test"
                         else (t.train_indices, t.train_labels, t.train_perm_ids))
        if max_samples is not None:
            idx, lab, pid = idx[:max_samples], lab[:max_samples], pid[:max_samples]
        images = self._test_images if split == "test" else self._train_images
        for s in range(0, len(idx), batch_size):
            x = self._gather(images, idx[s:s + batch_size], pid[s:s + batch_size], t)
            yield x, torch.as_tensor(lab[s:s + batch_size], device=self.device)

    def eval_env(self) -> "SupervisedStreamEnv":
        """A new env with the same configuration and stream seed; ``reset(options={"task_id": k})`` replays task k.
        The dataset is shared (it is loaded once per process)."""
        self._require_seed()
        env = SupervisedStreamEnv(**self.config)
        env.reset(options={"stream_seed": self.stream_seed})
        return env

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The stream position: enough, with the same configuration, to continue mid-stream.

        Holds the configuration (checked on load), the stream seed, the cursor (task, step in task), the step count,
        the episode's first and last task, whether it has ended, the current batch's labels and the state of
        ``np_random`` (which draws the next stream seed at a seedless ``reset``). The epoch cache is derived and is
        rebuilt on load."""
        rng = self._np_random
        return {"config": dict(self.config), "stream_seed": self.stream_seed,
                "cursor": (int(self._cursor.task), int(self._cursor.step_in_task)), "step": int(self._step),
                "first_task": int(self._first_task), "last_task": int(self._last_task), "done": bool(self._done),
                "labels": np.array(_host(getattr(self, "_labels", np.zeros(0, np.int64))), copy=True),
                "np_random": None if rng is None else rng.bit_generator.state,
                "np_random_seed": getattr(self, "_np_random_seed", None)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream from :meth:`state_dict`'s position. Raises ``ValueError`` (and changes nothing) when
        the state was saved by an env with another configuration or does not match this dataset."""
        missing = {"config", "stream_seed", "cursor", "step", "first_task", "last_task", "done", "labels"} - set(state)
        if missing:
            raise ValueError(f"not a SupervisedStreamEnv state: missing {sorted(missing)}")
        ours = {k: v for k, v in self.config.items() if k not in LOCATION_KWARGS}
        theirs = {k: v for k, v in dict(state["config"]).items() if k not in LOCATION_KWARGS}
        if ours != theirs:
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k, "<unset>") != theirs.get(k, "<unset>"))
            raise ValueError("env state was saved with another configuration: "
                             + ", ".join(f"{k}={theirs.get(k, '<unset>')!r} (this env: {ours.get(k, '<unset>')!r})"
                                         for k in diff))
        cursor = _Cursor(*(int(v) for v in state["cursor"]))
        first, last = int(state["first_task"]), int(state["last_task"])
        if not 0 <= first <= cursor.task <= last < self.num_tasks:
            raise ValueError(f"env state has cursor task {cursor.task} outside tasks {first}..{last}")
        labels = np.asarray(_host(state["labels"]), dtype=np.int64)
        seed = None if state["stream_seed"] is None else int(state["stream_seed"])
        done = bool(state["done"])
        cache = None
        if not done and seed is not None:
            # Rebuild the current batch: it must give the saved labels, else the data are not the saved run's.
            prev = (self.stream_seed, self._epoch_cache)
            self.stream_seed, self._epoch_cache = seed, None
            try:
                _, check = self._batch(cursor)
                cache = self._epoch_cache
            finally:
                self.stream_seed, self._epoch_cache = prev
            if not np.array_equal(_host(check), labels):
                raise ValueError("env state does not match this dataset: the batch at the saved position has other "
                                 "labels")
        rng = None
        if state.get("np_random") is not None:
            bit_state = state["np_random"]
            rng = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
            rng.bit_generator.state = bit_state
        # Everything is checked: apply.
        self.stream_seed, self._cursor, self._step = seed, cursor, int(state["step"])
        self._first_task, self._last_task, self._done = first, last, done
        self._labels, self._epoch_cache = self._served_labels(labels), cache
        if rng is not None:
            self._np_random = rng
            self._np_random_seed = state.get("np_random_seed")

    # ----------------------------------------------------------------- internals
    @property
    def _x_shape(self):
        return (self.batch_size, *self.dataset.image_shape)

    def _require_seed(self):
        if self.stream_seed is None:
            raise RuntimeError("call reset() first: the stream seed is drawn at reset")

    def _no_labels(self):
        """The labels of no batch (at reset and after the end), of the kind the env serves."""
        if self.output == "torch":
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        return np.zeros(0, np.int64)

    def _served_labels(self, labels: np.ndarray):
        return torch.as_tensor(labels, device=self.device) if self.output == "torch" else labels

    def _obs(self, x, task_id: int):
        return {"x": x, "task_id": np.int64(task_id)} if self.task_aware else x

    def _info(self, cur: _Cursor, switch: bool, labels, labels_task: int, accuracy: float) -> dict:
        return {"task_id": int(cur.task), "task_switch": bool(switch), "labels": labels,
                "labels_task_id": int(labels_task), "accuracy": float(accuracy), "step": int(self._step),
                "step_in_task": int(cur.step_in_task)}

    def _epoch(self, task_id: int, epoch: int) -> _Epoch:
        """Sample order and augmentation draws for one epoch of one task; cached for the epoch."""
        key = (task_id, epoch)
        if self._epoch_cache is not None and self._epoch_cache[0] == key:
            return self._epoch_cache[1]
        t = self.stream.task(self.stream_seed, task_id)
        rng = task_rng(self.stream_seed, task_id, 1000 + epoch)
        per_epoch = self._steps_per_epoch(t)
        n = per_epoch * self.batch_size
        if t.with_replacement:
            order = rng.integers(t.num_train, size=n)
        elif self._steps_override is not None and n > t.num_train:
            order = np.concatenate([rng.permutation(t.num_train) for _ in range(math.ceil(n / t.num_train))])[:n]
        else:
            order = rng.permutation(t.num_train)[:n]
        aug = None
        if self.augment == "per_task":  # one view per sample of the task, whatever the epoch
            g = torch.Generator().manual_seed(int(task_rng(self.stream_seed, task_id, *_TASK_VIEW_KEY).integers(2**62)))
            aug = self.augmentation.draw(t.num_train, g)[torch.from_numpy(order)]
        elif self.augment == "per_epoch":  # a view per position in this epoch's order
            g = torch.Generator().manual_seed(int(task_rng(self.stream_seed, task_id, 2000 + epoch).integers(2**62)))
            aug = self.augmentation.draw(n, g)
        # The epoch's images and labels in serving order, gathered once instead of a gather per batch scattered over
        # the whole dataset (most of a step's cost on a 60,000-image set). With nothing to apply to a batch
        # (no augmentation, no permutation) the epoch is cut into its batches right away, each its own array, so a
        # step serves one with no array operation at all; otherwise a batch is a slice of the gathered rows. The
        # same bytes either way.
        images, ready, rows = self._train_images, None, None
        if not self._resident and images.device.type == "cpu" and n * images[0].numel() <= EPOCH_CACHE_BYTES:
            x, y = images.numpy()[t.train_indices[order]], t.train_labels[order].astype(np.int64)
            if aug is None and t.permutations is None:
                b = self.batch_size
                ready = ([x[i:i + b].copy() for i in range(0, n, b)], [y[i:i + b].copy() for i in range(0, n, b)])
            else:
                rows = (x, y)
        value = _Epoch(t, order, aug, ready, rows)
        self._epoch_cache = (key, value)
        return value

    def _on_device(self, t: Task, order: np.ndarray, aug: torch.Tensor | None) -> _EpochTensors:
        """The epoch's sample order (from :meth:`_epoch`) as tensors on the env's device, moved there once per epoch
        (a handful of host-to-device copies); every step then slices them, so no step moves anything there."""
        cached = self._device_epoch
        if cached is not None and cached[0] is order:  # the same epoch: its order array is the cache's key
            return cached[1]
        d = self.device
        permuted = t.permutations is not None
        value = _EpochTensors(rows=torch.as_tensor(t.train_indices[order], device=d),
                              labels=torch.as_tensor(t.train_labels[order].astype(np.int64), device=d),
                              perm_ids=torch.as_tensor(t.train_perm_ids[order], device=d) if permuted else None,
                              permutations=torch.as_tensor(t.permutations, device=d) if permuted else None,
                              aug=None if aug is None else aug.to(d))
        self._device_epoch = (order, value)
        return value

    def _steps_per_epoch(self, t: Task) -> int:
        # With an explicit step count (or sampling with replacement) the whole task is one "epoch".
        if self._steps_override is not None:
            return int(self._steps_override)
        return t.num_train // self.batch_size

    def _batch(self, cur: _Cursor):
        cache = self._epoch_cache  # ((task, epoch), _Epoch): mid-task its task is at hand, no stream lookup needed
        t = cache[1].task if cache is not None and cache[0][0] == cur.task else self.stream.task(self.stream_seed,
                                                                                                cur.task)
        per_epoch = self._steps_per_epoch(t)
        epoch, j = divmod(cur.step_in_task, per_epoch)
        t, order, aug, ready, rows = self._epoch(cur.task, epoch)
        if ready is not None:  # each batch is served once per epoch, so it is the caller's to keep or change
            return ready[0][j], ready[1][j]
        part = slice(j * self.batch_size, (j + 1) * self.batch_size)
        dev = self._on_device(t, order, aug) if self._resident else None
        sel = order[part]
        # Augment the image, then permute: a crop, flip or rotation of already-permuted pixels would scatter each
        # task's fixed permutation and destroy the task.
        if dev is None:
            # a copy of the slice: the batch served keeps no epoch array alive
            x = torch.from_numpy(rows[0][part].copy()) if rows is not None else self._index(
                self._train_images, t.train_indices[sel])
            if aug is not None:
                x = self.augmentation.apply(x, aug[part])
            x = self._permute(x, t.train_perm_ids[sel], t)
        else:
            x = torch.index_select(self._train_images, 0, dev.rows[part])
            if dev.aug is not None:
                x = self.augmentation.apply(x, dev.aug[part])
            x = self._permute(x, t.train_perm_ids[sel], t, None if dev.perm_ids is None else dev.perm_ids[part],
                              dev.permutations)
        if self.output == "torch":
            return x, dev.labels[part]
        return x.cpu().numpy(), rows[1][part].copy() if rows is not None else t.train_labels[sel].astype(np.int64)

    def _gather(self, images: torch.Tensor, idx: np.ndarray, perm_ids: np.ndarray, t: Task) -> torch.Tensor:
        return self._permute(self._index(images, idx), perm_ids, t)

    @staticmethod
    def _index(images: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        if images.device.type == "cpu":
            # numpy fancy indexing on a shared view is ~100x cheaper than torch advanced indexing for small batches
            return torch.from_numpy(images.numpy()[idx])
        return torch.index_select(images, 0, torch.as_tensor(idx, device=images.device))

    @staticmethod
    def _permute(x: torch.Tensor, perm_ids: np.ndarray, t: Task, ids: torch.Tensor | None = None,
                 perms: torch.Tensor | None = None) -> torch.Tensor:
        """Sample i's pixels reordered by ``t.permutations[perm_ids[i]]`` (-1: left as they are). ``ids`` /
        ``perms``: ``perm_ids`` / ``t.permutations`` already on ``x``'s device (else they are moved there)."""
        if t.permutations is not None and (perm_ids >= 0).any():  # decided on the host copy: no device sync
            if perms is None:
                perms = torch.as_tensor(t.permutations, device=x.device)
            if ids is None:
                ids = torch.as_tensor(perm_ids, device=x.device)
            flat = x.reshape(x.shape[0], -1)
            permuted = torch.gather(flat, 1, perms[ids.clamp(min=0)])
            x = torch.where((ids < 0)[:, None], flat, permuted).reshape(x.shape)
        return x

    def _correct(self, action) -> int:
        """The number of correct predictions of ``action`` for the current batch, after checking it against the
        action space (a ``ValueError`` before any state changes)."""
        if self.output == "numpy":
            pred = self._validate(action)
            if type(pred) is list:
                return sum(map(operator.eq, pred, self._labels.tolist()))
            return int(np.count_nonzero(pred == self._labels))
        if not isinstance(action, torch.Tensor):  # host data: checked on the host, compared on the device
            pred = torch.as_tensor(self._validate(action), device=self.device)
            return int((pred == self._labels).sum().item())  # the step's one device-to-host transfer
        a = action.detach().to(self.device)  # no copy when it is already there
        b, c = self.batch_size, self.num_classes
        if self.action_type == "labels":
            if tuple(a.shape) != (b,):
                raise ValueError(f"action must be predicted labels of shape ({b},), got shape {tuple(a.shape)}"
                                 + (" (logits? make the env with action_type='logits')"
                                    if tuple(a.shape) == (b, c) else ""))
            if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
                raise ValueError(f"action must be integer class labels, got dtype {a.dtype}")
            bad, pred = ((a < 0) | (a >= c)).any(), a
        else:
            if tuple(a.shape) != (b, c):
                raise ValueError(f"action must be logits of shape ({b}, {c}), got shape {tuple(a.shape)}")
            if not a.dtype.is_floating_point:
                raise ValueError(f"logits must be floating point, got dtype {a.dtype}")
            bad, pred = ~torch.isfinite(a).all(), a.argmax(1)  # argmax: the first maximum, as numpy's
        # The step's one device-to-host transfer: the check's verdict and the count, read together.
        bad, correct = torch.stack((bad.to(torch.int64), (pred == self._labels).sum())).tolist()
        if bad and self.action_type == "labels":
            raise ValueError(f"action labels must be in 0..{c - 1}, got values in {int(a.min())}..{int(a.max())}")
        if bad:
            raise ValueError("logits contain NaN or inf; the step was rejected and the stream did not advance")
        return int(correct)

    def _validate(self, action) -> np.ndarray | list[int]:
        """Check a host action against the action space; return the predicted labels (a list of ints for batches of
        up to :data:`PYTHON_SCORING_MAX_BATCH`, else an array). Raises before any state changes."""
        a = action_array(action, self.action_space)
        b, c = self.batch_size, self.num_classes
        if self.action_type == "labels":
            if a.shape != (b,):
                raise ValueError(f"action must be predicted labels of shape ({b},), got shape {a.shape}"
                                 + (" (logits? make the env with action_type='logits')" if a.shape == (b, c) else ""))
            if a.dtype.kind not in "iu":
                raise ValueError(f"action must be integer class labels, got dtype {a.dtype}")
            if b <= PYTHON_SCORING_MAX_BATCH:
                # A few labels: checked and scored as Python ints. After a training step has run, each numpy ufunc
                # call costs several microseconds to bring its code back into cache; these builtins are warm.
                pred = a.tolist()
                if min(pred) < 0 or max(pred) >= c:
                    raise ValueError(f"action labels must be in 0..{c - 1}, got values in {min(pred)}..{max(pred)}")
                return pred
            # one pass: as unsigned, a negative label is huge, so a single comparison catches both ends
            u = a.view(_UNSIGNED[a.itemsize]) if a.dtype.kind == "i" else a
            if (u >= c).any():
                raise ValueError(f"action labels must be in 0..{c - 1}, got values in {a.min()}..{a.max()}")
            return a
        if a.shape != (b, c):
            raise ValueError(f"action must be logits of shape ({b}, {c}), got shape {a.shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"logits must be floating point, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError("logits contain NaN or inf; the step was rejected and the stream did not advance")
        return a.argmax(axis=1)
