"""What a task is: a pure function of (stream seed, task index) -> :class:`Task`.

A stream never holds mutable state that the order of calls could change: ``stream.task(seed, k)`` returns the same
task whether or not tasks 0..k-1 were asked for first. That is what lets an evaluation env replay task k exactly.

Kinds (``STREAMS``): ``random_label``, ``label_shuffle``, ``permuted``, ``class_split``, and for the NGM-SGD
protocols ``rotated`` (fixed rotation angles per task), ``ordered_split`` (class pairs in the dataset's order) and
``superclass_domain`` (CIFAR-100's 20 superclasses as labels, other fine classes per task). Modifiers that apply to any
kind: ``recurring_every`` (NeuMoSync Appendix D.2: one fixed task recurs every n tasks, the others are fresh) and
``joint`` (cumulative joint training: task k is the union of tasks 0..k, sampled with replacement).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["Task", "Stream", "STREAMS", "make_stream", "task_rng", "start_stream", "check_reset",
           "check_stream_kwargs", "require_int", "require_bool", "require_real", "rotation_map",
           "CIFAR100_COARSE"]


# ---------------------------------------------------------------------------------------------------- validation
# One rule for every count, index and seed a user gives: a Python or numpy integer. Floats are refused even when
# whole (3.0), because a float that reached an integer parameter is usually a bug upstream (a division, a parsed
# "2.5"), and bools are refused because True is not a count. Flags are Python or numpy bools only: the string
# "no" is truthy, and silently reading it as True is what this rule exists to stop.

def require_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
                optional: bool = False) -> int | None:
    """``value`` as a Python int, or a ``TypeError`` / ``ValueError`` that says what was expected.

    Accepts ``int`` and numpy integers (not bools, not floats, not even whole ones such as 3.0); ``optional`` also
    accepts None. ``minimum`` / ``maximum`` bound it (inclusive)."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        hint = ""
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            hint = f"; pass {int(value)}, not {value!r}"
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            hint = f"; pass the number {int(value)}, not the string {value!r}"
        expected = "an integer" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}){hint}")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        span = (f"in {minimum}..{maximum}" if minimum is not None and maximum is not None
                else f">= {minimum}" if minimum is not None else f"<= {maximum}")
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


def require_bool(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` as a Python bool, or a ``TypeError``: only ``True`` / ``False`` (and numpy bools) are flags."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    expected = "True or False" + (" (or None)" if optional else "")
    raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__}); pass {expected}, not a "
                    f"string or a number")


def require_real(name: str, value: Any, *, minimum: float | None = None) -> float:
    """``value`` as a finite Python float (ints and numpy numbers accepted, bools and strings not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


#: (minimum, optional) of every integer stream field; checked by the stream and, before any data is loaded, by envs.
_INT_FIELDS = {"num_tasks": (1, False), "samples_per_task": (1, True), "test_samples_per_task": (1, True),
               "recurring_every": (2, True), "classes_per_task": (1, False), "samples_per_class": (1, True)}
_BOOL_FIELDS = ("joint", "disjoint")


def _check_fields(values: dict) -> dict:
    out = dict(values)
    for name, value in values.items():
        if name in _INT_FIELDS:
            minimum, optional = _INT_FIELDS[name]
            out[name] = require_int(name, value, minimum=minimum, optional=optional)
        elif name in _BOOL_FIELDS:
            out[name] = require_bool(name, value)
    return out


def task_rng(seed: int, *keys: int) -> np.random.Generator:
    """The generator for one (stream seed, keys...) tuple; independent of any other tuple."""
    return np.random.default_rng([int(seed) & (2**63 - 1), *map(int, keys)])


def check_reset(num_tasks: int, seed: Any, options: Any) -> tuple[int | None, dict[str, int]]:
    """Validate a stream env's ``reset(seed=, options=)`` without touching the env; return ``(seed, options)`` as
    Python ints. Envs call this before ``gymnasium.Env.reset`` reseeds anything, so a refused reset changes nothing.

    ``seed``: None or an integer >= 0 (gymnasium's rule; numpy integers too). ``options``: None or a dict with
    ``task_id`` (an integer in 0..num_tasks-1) and/or ``stream_seed`` (an integer)."""
    seed = require_int("reset seed", seed, minimum=0, optional=True)
    if options is None:
        return seed, {}
    if not isinstance(options, dict):
        raise TypeError(f"reset options must be a dict (or None), got {options!r} ({type(options).__name__})")
    bad = set(options) - {"task_id", "stream_seed"}
    if bad:
        raise ValueError(f"unknown reset option(s) {sorted(bad, key=repr)}; expected 'task_id' and/or 'stream_seed'")
    out = {}
    if "stream_seed" in options:
        out["stream_seed"] = require_int("reset option stream_seed", options["stream_seed"])
    if "task_id" in options:
        out["task_id"] = require_int("reset option task_id", options["task_id"], minimum=0, maximum=num_tasks - 1)
    return seed, out


def start_stream(env, seed: int | None, options: dict | None) -> tuple[int, int]:
    """Apply a stream env's ``reset`` options (shared by the supervised and RL streams) and return the episode's
    (first task, last task).

    ``stream_seed`` sets the stream; ``task_id`` selects one task (an evaluation env replaying it) and keeps the
    current stream seed unless a ``seed`` is given; otherwise a new stream seed is drawn from ``env.np_random``.
    Everything is validated (:func:`check_reset`) before ``env`` is changed.
    """
    seed, options = check_reset(env.num_tasks, seed, options)
    if "stream_seed" in options:
        env.stream_seed = options["stream_seed"]
    elif seed is not None or env.stream_seed is None or "task_id" not in options:
        env.stream_seed = int(env.np_random.integers(2**62))
    if "task_id" not in options:
        return 0, env.num_tasks - 1
    k = options["task_id"]
    return k, k


@dataclass(frozen=True)
class Task:
    """One task: which samples of each split, with which labels and which pixel permutation.

    ``perm_ids[i]`` indexes ``permutations`` for sample i (-1: no permutation). ``classes`` lists the dataset classes
    the task draws from (for class splits), else all.
    """

    index: int
    train_indices: np.ndarray
    train_labels: np.ndarray
    test_indices: np.ndarray
    test_labels: np.ndarray
    train_perm_ids: np.ndarray
    test_perm_ids: np.ndarray
    permutations: np.ndarray | None = None
    classes: tuple[int, ...] = ()
    with_replacement: bool = False

    @property
    def num_train(self) -> int:
        return int(self.train_indices.shape[0])


def _no_perm(n: int) -> np.ndarray:
    return np.full(n, -1, dtype=np.int64)


@dataclass(frozen=True)
class Stream:
    """Base class: subclasses define :meth:`_base_task`; modifiers are applied here."""

    num_train: int
    num_test: int
    num_classes: int
    num_tasks: int
    samples_per_task: int | None = None  # None: the whole train split
    test_samples_per_task: int | None = 1000
    recurring_every: int | None = None
    joint: bool = False
    train_labels_all: np.ndarray | None = field(default=None, repr=False, compare=False, hash=False)
    test_labels_all: np.ndarray | None = field(default=None, repr=False, compare=False, hash=False)

    kind = "base"

    def __post_init__(self):
        for name in ("num_train", "num_test", "num_classes"):
            object.__setattr__(self, name, require_int(name, getattr(self, name), minimum=0))
        fields = {k: getattr(self, k) for k in (*_INT_FIELDS, *_BOOL_FIELDS) if hasattr(self, k)}
        for name, value in _check_fields(fields).items():
            object.__setattr__(self, name, value)
        if self.samples_per_task is not None and not 1 <= self.samples_per_task <= self.num_train:
            raise ValueError(f"samples_per_task must be in 1..{self.num_train} (the train split's size), "
                             f"got {self.samples_per_task}")
        object.__setattr__(self, "_tasks", {})  # memo of base tasks per (seed, index); pure, so safe to keep

    @property
    def num_outputs(self) -> int:
        """Width of the output layer an agent needs."""
        return self.num_classes

    def base_index(self, k: int) -> int:
        """Which underlying task task k is: with ``recurring_every=n``, tasks 0, n, 2n, ... are base task 0 and
        the others are fresh base tasks 1, 2, ... in order."""
        n = self.recurring_every
        if n is None:
            return k
        return 0 if k % n == 0 else k - k // n

    def task(self, seed: int, k: int) -> Task:
        k = require_int("task index", k)
        if not 0 <= k < self.num_tasks:
            raise IndexError(f"task index {k} out of range 0..{self.num_tasks - 1}")
        key = ("task", int(seed), k)
        if key not in self._tasks:
            if not self.joint:
                t = self.context(seed, k)
            else:
                t = _union(k, [self._cached_base(int(seed), self.base_index(j)) for j in range(k + 1)])
            self._remember(key, t)
        return self._tasks[key]

    def context(self, seed: int, k: int) -> Task:
        """Task k on its own: what ``task`` is without ``joint``; with it, the k-th context that task k adds to the
        union (its own samples and held-out set)."""
        k = require_int("task index", k)
        if not 0 <= k < self.num_tasks:
            raise IndexError(f"task index {k} out of range 0..{self.num_tasks - 1}")
        t = self._cached_base(int(seed), self.base_index(k))
        return Task(k, t.train_indices, t.train_labels, t.test_indices, t.test_labels, t.train_perm_ids,
                    t.test_perm_ids, t.permutations, t.classes)

    def _remember(self, key, value) -> None:
        if len(self._tasks) > 4096:
            self._tasks.clear()
        self._tasks[key] = value

    def _cached_base(self, seed: int, b: int) -> Task:
        key = ("base", seed, b)
        if key not in self._tasks:
            self._remember(key, self._base_task(seed, b))
        return self._tasks[key]

    def _base_task(self, seed: int, b: int) -> Task:  # pragma: no cover - abstract
        raise NotImplementedError

    # helpers for subclasses
    def _sample(self, rng, pool_size: int, n: int | None) -> np.ndarray:
        if n is None or n >= pool_size:
            return rng.permutation(pool_size)
        return np.sort(rng.choice(pool_size, size=n, replace=False))


def _union(k: int, parts: list[Task]) -> Task:
    perms, offsets, total = [], [], 0
    for t in parts:
        offsets.append(total)
        if t.permutations is not None:
            perms.append(t.permutations)
            total += t.permutations.shape[0]

    def shift(ids, off):
        return np.where(ids >= 0, ids + off, -1)

    cat = np.concatenate
    return Task(
        k,
        cat([t.train_indices for t in parts]), cat([t.train_labels for t in parts]),
        cat([t.test_indices for t in parts]), cat([t.test_labels for t in parts]),
        cat([shift(t.train_perm_ids, o) for t, o in zip(parts, offsets)]),
        cat([shift(t.test_perm_ids, o) for t, o in zip(parts, offsets)]),
        np.concatenate(perms) if perms else None,
        tuple(sorted(set().union(*[t.classes for t in parts]))),
        with_replacement=True,
    )


@dataclass(frozen=True)
class RandomLabelStream(Stream):
    """Random-label memorisation: each task draws ``samples_per_task`` images and labels uniformly at random."""

    kind = "random_label"

    def _base_task(self, seed, b):
        rng = task_rng(seed, b)
        tr = self._sample(rng, self.num_train, self.samples_per_task)
        te = self._sample(rng, self.num_test, self.test_samples_per_task)
        return Task(b, tr, rng.integers(self.num_classes, size=tr.size), te,
                    rng.integers(self.num_classes, size=te.size), _no_perm(tr.size), _no_perm(te.size),
                    classes=tuple(range(self.num_classes)))


@dataclass(frozen=True)
class LabelShuffleStream(Stream):
    """Label shuffle: one random permutation of the class labels per task; consecutive maps always differ."""

    kind = "label_shuffle"

    def label_map(self, seed: int, b: int) -> np.ndarray:
        return _label_map(seed, b, self.num_classes)

    def _base_task(self, seed, b):
        rng = task_rng(seed, b, 1)
        tr = self._sample(rng, self.num_train, self.samples_per_task)
        te = self._sample(rng, self.num_test, self.test_samples_per_task)
        m = self.label_map(seed, b)
        return Task(b, tr, m[self.train_labels_all[tr]], te, m[self.test_labels_all[te]], _no_perm(tr.size),
                    _no_perm(te.size), classes=tuple(range(self.num_classes)))


@lru_cache(maxsize=65536)
def _label_map_cached(seed: int, b: int, c: int) -> bytes:
    rng = task_rng(seed, b, 0)
    m = rng.permutation(c)
    if b > 0 and c > 1:
        prev = np.frombuffer(_label_map_cached(seed, b - 1, c), dtype=np.int64)
        while np.array_equal(m, prev):
            m = rng.permutation(c)
    return m.astype(np.int64).tobytes()


def _label_map(seed: int, b: int, c: int) -> np.ndarray:
    # Built in task order so that each map is compared with its predecessor; memoised, so O(1) after the first call.
    for j in range(max(0, b - 512), b):
        _label_map_cached(seed, j, c)
    return np.frombuffer(_label_map_cached(seed, b, c), dtype=np.int64).copy()


@dataclass(frozen=True)
class PermutedStream(Stream):
    """Pixel permutation: one fixed random permutation of the pixel order per task; labels unchanged."""

    num_pixels: int = 0
    kind = "permuted"

    def _base_task(self, seed, b):
        rng = task_rng(seed, b, 2)
        tr = self._sample(rng, self.num_train, self.samples_per_task)
        te = self._sample(rng, self.num_test, self.test_samples_per_task)
        perm = rng.permutation(self.num_pixels)[None]
        return Task(b, tr, self.train_labels_all[tr], te, self.test_labels_all[te], np.zeros(tr.size, np.int64),
                    np.zeros(te.size, np.int64), perm, classes=tuple(range(self.num_classes)))


@dataclass(frozen=True)
class ClassSplitStream(Stream):
    """Class split: each task takes ``classes_per_task`` classes. ``disjoint=True`` partitions one seeded class order
    (Class-Split CIFAR-100, Tiny-ImageNet); ``False`` draws classes afresh per task (Split ImageNet: 500 tasks of 5
    of 1,000 classes). ``samples_per_class`` caps the train samples per class. Labels are the dataset's own
    (``labels="global"``, one shared head) or 0..c-1 within the task (``"local"``)."""

    classes_per_task: int = 2
    samples_per_class: int | None = None
    disjoint: bool = True
    labels: str = "global"
    kind = "class_split"

    def __post_init__(self):
        super().__post_init__()
        if self.labels not in ("global", "local"):
            raise ValueError(f"labels must be 'global' or 'local', got {self.labels!r}")
        if not 1 <= self.classes_per_task <= self.num_classes:
            raise ValueError(f"classes_per_task must be in 1..{self.num_classes}, got {self.classes_per_task}")
        if self.disjoint and self.num_tasks * self.classes_per_task > self.num_classes:
            raise ValueError(
                f"{self.num_tasks} disjoint tasks of {self.classes_per_task} classes need "
                f"{self.num_tasks * self.classes_per_task} classes; the dataset has {self.num_classes}. "
                f"Lower num_tasks or pass disjoint=False to draw classes per task.")

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.labels == "global" else self.classes_per_task

    def task_classes(self, seed: int, b: int) -> np.ndarray:
        c = self.classes_per_task
        if self.disjoint:
            order = task_rng(seed, 2**31).permutation(self.num_classes)  # one class order for the whole stream
            return order[b * c:(b + 1) * c]
        return task_rng(seed, b, 3).choice(self.num_classes, size=c, replace=False)

    def _base_task(self, seed, b):
        rng = task_rng(seed, b, 4)
        cls = self.task_classes(seed, b)

        def pick(labels_all, per_class):
            idx = []
            for c in cls:
                pool = np.flatnonzero(labels_all == c)
                if per_class is not None and per_class < pool.size:
                    pool = np.sort(rng.choice(pool, size=per_class, replace=False))
                idx.append(pool)
            idx = np.sort(np.concatenate(idx))
            lab = labels_all[idx]
            if self.labels == "local":
                lookup = np.full(self.num_classes, -1, dtype=np.int64)
                lookup[cls] = np.arange(cls.size)
                lab = lookup[lab]
            return idx, lab

        tr, trl = pick(self.train_labels_all, self.samples_per_class)
        te, tel = pick(self.test_labels_all, None)
        return Task(b, tr, trl, te, tel, _no_perm(tr.size), _no_perm(te.size), classes=tuple(int(c) for c in cls))


def rotation_map(image_shape: tuple[int, ...], degrees: float) -> np.ndarray:
    """The pixel gather that rotates an image of ``image_shape`` (C, H, W) counter-clockwise by ``degrees`` about
    its centre (torchvision's ``rotate`` convention) with nearest-neighbour sampling: flat output pixel p takes flat
    input pixel ``map[p]``. A destination whose source falls outside the frame takes the image's top-left pixel of
    the same channel, which stands in for the zero fill of torchvision's ``rotate`` (the corner of an MNIST or
    Fashion-MNIST digit image is background). Multiples of 90 degrees are exact (``np.rot90``)."""
    c, h, w = (int(v) for v in image_shape)
    theta = math.radians(float(degrees) % 360.0)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    dy, dx = rows - cy, cols - cx
    cos, sin = math.cos(theta), math.sin(theta)
    if float(degrees) % 90.0 == 0.0:  # exact signs for the right angles (cos / sin are 0, +-1 up to rounding)
        cos, sin = round(cos), round(sin)
    src_c = np.rint(cx + cos * dx - sin * dy).astype(np.int64)
    src_r = np.rint(cy + sin * dx + cos * dy).astype(np.int64)
    inside = (src_r >= 0) & (src_r < h) & (src_c >= 0) & (src_c < w)
    flat = np.where(inside, src_r * w + src_c, 0).reshape(-1)
    return (np.arange(c)[:, None] * (h * w) + flat[None]).reshape(-1).astype(np.int64)


@dataclass(frozen=True)
class RotatedStream(Stream):
    """Rotated domains (the Rotated MNIST of NGM-SGD, arXiv 2507.14056: 0, 80 and 160 degrees): task b shows the
    images rotated by ``b * angle_step`` degrees (counter-clockwise; :func:`rotation_map`), labels unchanged. Each
    task draws ``samples_per_task`` train images (None: the whole split) and ``test_samples_per_task`` test images.
    """

    image_shape: tuple[int, ...] = (1, 28, 28)
    angle_step: float = 80.0
    kind = "rotated"

    def angle(self, b: int) -> float:
        """Degrees of base task ``b``."""
        return float(b) * float(self.angle_step) % 360.0

    def _base_task(self, seed, b):
        rng = task_rng(seed, b, 5)
        tr = self._sample(rng, self.num_train, self.samples_per_task)
        te = self._sample(rng, self.num_test, self.test_samples_per_task)
        perm = rotation_map(self.image_shape, self.angle(b))[None]
        return Task(b, tr, self.train_labels_all[tr], te, self.test_labels_all[te], np.zeros(tr.size, np.int64),
                    np.zeros(te.size, np.int64), perm, classes=tuple(range(self.num_classes)))


@dataclass(frozen=True)
class OrderedSplitStream(Stream):
    """Class split in the dataset's own class order (the NGM-SGD scripts' Split MNIST / CIFAR-10: {0, 1}, {2, 3},
    ...): task b takes classes ``b*c .. b*c + c - 1`` with ``c = num_classes // num_tasks``, every train and test
    sample of them, labels the dataset's (one shared head). ``class_split`` draws a seeded class order instead."""

    kind = "ordered_split"

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes and self.num_tasks > self.num_classes:
            raise ValueError(f"ordered_split needs at least one class per task: {self.num_tasks} tasks, "
                             f"{self.num_classes} classes")
        if self.samples_per_task is not None:
            raise ValueError("ordered_split takes every sample of its classes: leave samples_per_task None")

    def task_width(self) -> int:
        """Classes per task: ``num_classes // num_tasks`` (a remainder of classes is left out)."""
        return self.num_classes // self.num_tasks

    def task_classes(self, seed: int, b: int) -> np.ndarray:
        c = self.task_width()
        return np.arange(b * c, (b + 1) * c)

    def _base_task(self, seed, b):
        cls = self.task_classes(seed, b)
        tr = np.flatnonzero(np.isin(self.train_labels_all, cls))
        te = np.flatnonzero(np.isin(self.test_labels_all, cls))
        return Task(b, tr, self.train_labels_all[tr].astype(np.int64), te, self.test_labels_all[te].astype(np.int64),
                    _no_perm(tr.size), _no_perm(te.size), classes=tuple(int(c) for c in cls))


#: CIFAR-100's superclass (coarse label, 0..19) of each fine class 0..99, as the dataset's ``coarse_labels`` give
#: them (e.g. fine 0 "apple" -> 4 "fruit_and_vegetables", fine 4 "beaver" -> 0 "aquatic_mammals").
CIFAR100_COARSE = (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3,
                   15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0,
                   17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2,
                   4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)


@dataclass(frozen=True)
class SuperclassDomainStream(Stream):
    """Domain-incremental CIFAR-100 (the Domain CIFAR-100 of NGM-SGD, arXiv 2507.14056): the label is the
    superclass (20 outputs) and each task shows other fine classes of every superclass. The five fine classes of
    each superclass are put in a seeded order and split into ``num_tasks`` consecutive groups (3 tasks: 2, 2 and 1
    fine classes per superclass); task b takes group b, every train and test sample of it."""

    kind = "superclass_domain"

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes and self.num_classes != len(CIFAR100_COARSE):
            raise ValueError(f"superclass_domain needs CIFAR-100's 100 fine classes, got a dataset with "
                             f"{self.num_classes} classes")
        if self.num_tasks > 5:
            raise ValueError(f"superclass_domain has at most 5 tasks (5 fine classes per superclass), got "
                             f"{self.num_tasks}")
        if self.samples_per_task is not None:
            raise ValueError("superclass_domain takes every sample of its classes: leave samples_per_task None")

    @property
    def num_outputs(self) -> int:
        return 20

    def task_classes(self, seed: int, b: int) -> np.ndarray:
        """The fine classes of task ``b`` (one group of every superclass)."""
        coarse = np.asarray(CIFAR100_COARSE)
        rng = task_rng(seed, 2**31 + 1)  # one order per stream
        out = []
        for c in range(20):
            fine = rng.permutation(np.flatnonzero(coarse == c))
            out.append(np.array_split(fine, self.num_tasks)[b])
        return np.sort(np.concatenate(out))

    def _base_task(self, seed, b):
        cls = self.task_classes(seed, b)
        coarse = np.asarray(CIFAR100_COARSE, dtype=np.int64)
        tr = np.flatnonzero(np.isin(self.train_labels_all, cls))
        te = np.flatnonzero(np.isin(self.test_labels_all, cls))
        return Task(b, tr, coarse[self.train_labels_all[tr]], te, coarse[self.test_labels_all[te]],
                    _no_perm(tr.size), _no_perm(te.size), classes=tuple(range(20)))


STREAMS: dict[str, type[Stream]] = {
    "random_label": RandomLabelStream,
    "label_shuffle": LabelShuffleStream,
    "permuted": PermutedStream,
    "class_split": ClassSplitStream,
    "rotated": RotatedStream,
    "ordered_split": OrderedSplitStream,
    "superclass_domain": SuperclassDomainStream,
}


_COMMON_KW = ("num_tasks", "samples_per_task", "test_samples_per_task", "recurring_every", "joint")
_CLASS_SPLIT_KW = ("classes_per_task", "samples_per_class", "disjoint", "labels")


def check_stream_kwargs(kind: str, **kwargs) -> dict:
    """Validate the dataset-independent stream options of ``kind`` (types and ranges) and return them normalised
    (Python ints and bools). Envs call this before loading any data; :func:`make_stream` calls it too."""
    if kind not in STREAMS:
        raise ValueError(f"unknown stream kind {kind!r}; expected one of {sorted(STREAMS)}")
    allowed = set(_COMMON_KW) | (set(_CLASS_SPLIT_KW) if kind == "class_split" else set())
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown stream option(s) {sorted(unknown)} for stream {kind!r}; valid: {sorted(allowed)}")
    if kind == "class_split" and kwargs.get("samples_per_task") is not None:
        raise ValueError("class_split takes samples_per_class, not samples_per_task")
    out = _check_fields(kwargs)
    if "labels" in out and out["labels"] not in ("global", "local"):
        raise ValueError(f"labels must be 'global' or 'local', got {out['labels']!r}")
    return out


def make_stream(kind: str, *, dataset, **kwargs) -> Stream:
    """Build a stream of ``kind`` over a loaded :class:`~clenv.data.sources.Dataset`."""
    kwargs = check_stream_kwargs(kind, **kwargs)
    cls = STREAMS[kind]
    extra = {}
    if cls is PermutedStream:
        extra["num_pixels"] = int(np.prod(dataset.image_shape))
    elif cls is RotatedStream:
        extra["image_shape"] = tuple(int(v) for v in dataset.image_shape)
    return cls(num_train=len(dataset.train), num_test=len(dataset.test), num_classes=dataset.num_classes,
               train_labels_all=dataset.train.labels.numpy(), test_labels_all=dataset.test.labels.numpy(),
               **extra, **kwargs)
