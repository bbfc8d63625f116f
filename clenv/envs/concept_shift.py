"""ConceptShiftEnv: the synthetic concept-shift benchmark of Functional Task Networks (Experiment 1).

A 2-D input ``x ~ U[-1, 1]^2`` goes through a fixed random encoder to a 24-D latent ``z``; task ``t`` reads the
disjoint block ``z[8t : 8t + 8]`` through a hidden mask ``h_t`` (a random subset of the block's coordinates with random
signs) and a sinusoid at frequency 8 gives the target::

    u_t = sum_i h_t,i * z[8t + i] / sqrt(|h_t|),     s_t = sin(frequency * u_t)
    classification: y = 1[s_t > 0]  (2 classes)       regression: y = s_t

Every task sees the same inputs and asks for another function of them: strict concept shift. The observation is the
latent batch (float32, ``(batch, 24)``): the encoder is part of the data, the model sees what it produces. Everything
is a pure function of (stream seed, task, step): batch ``j`` of task ``t`` is drawn from its own generator, and each
task has a fixed held-out ``test`` split, a ``support`` split (the labelled batches a mask-routed agent recovers its
mask from at evaluation) and a ``train`` split (samples of the training distribution for probes).

Step semantics are the supervised envs' (test-then-train): the action is the prediction for the observed batch (labels
or logits for classification; one real prediction per sample for regression), the reward is its accuracy
(classification) or its negative mean squared error (regression; ``info["mse"]`` holds the MSE and
``info["accuracy"]``, a key every stream has, the reward), and ``info["labels"]`` then reveals the targets.
The paper's encoder, hidden masks and input range are not specified beyond this; ours are documented here and in
docs/ftn.md.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from clenv.envs.step_stream import StepCountedStreamEnv
from clenv.envs.supervised import action_array
from clenv.streams import require_bool, require_int, require_real, task_rng

__all__ = ["ConceptShiftEnv", "SPLITS"]

#: The fixed per-task sample sets of :meth:`ConceptShiftEnv.test_batches`, with the generator key of each.
SPLITS = {"test": 1, "support": 2, "train": 3}
_STREAM_KEY = 2**31 + 7  # the encoder's generator: one per stream seed
_BATCH_KEY = 10          # train batch j of task t: task_rng(seed, t, _BATCH_KEY, j)


class ConceptShiftEnv(StepCountedStreamEnv):
    """Three tasks on the same inputs with incompatible targets (FTN, Experiment 1).

    Args:
        task: ``"classification"`` (2 classes, cross-entropy) or ``"regression"`` (MSE).
        num_tasks: tasks in the stream; each reads its own block of ``block_dim`` latent coordinates, so
            ``num_tasks * block_dim`` is the latent width (3 x 8 = 24).
        steps_per_task: batches per task (the paper: 1,000 steps, one epoch of fresh data).
        batch_size: samples per observation (256).
        block_dim: latent coordinates per task (8).
        frequency: of the sinusoid (8).
        input_dim: of the raw input (2).
        test_samples_per_task: size of each task's fixed test, support and train splits.
        action_type: classification only: ``"labels"`` (predicted classes) or ``"logits"``.
        device: where observations are built (``"cpu"``, ``"cuda"``).
        output: ``"numpy"`` observations or ``"torch"`` tensors on ``device``.
    """

    metadata = {"render_modes": []}
    SPLITS = SPLITS

    def __init__(self, task: str = "classification", num_tasks: int = 3, steps_per_task: int = 1000,
                 batch_size: int = 256, block_dim: int = 8, frequency: float = 8.0, input_dim: int = 2,
                 test_samples_per_task: int = 1024, action_type: str = "labels", device: str = "cpu",
                 output: str = "numpy"):
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if action_type not in ("labels", "logits"):
            raise ValueError(f"action_type must be 'labels' or 'logits', got {action_type!r}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        self.num_tasks = require_int("num_tasks", num_tasks, minimum=1)
        self._steps = require_int("steps_per_task", steps_per_task, minimum=1)
        self.batch_size = require_int("batch_size", batch_size, minimum=1)
        self.block_dim = require_int("block_dim", block_dim, minimum=1)
        self.input_dim = require_int("input_dim", input_dim, minimum=1)
        self.test_samples = require_int("test_samples_per_task", test_samples_per_task, minimum=1)
        self.frequency = require_real("frequency", frequency, minimum=0.0)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r} ({err})") from None
        self.task_type = task
        self.action_type = "predictions" if task == "regression" else action_type
        self.output = output
        self.task_aware = False
        self.latent_dim = self.num_tasks * self.block_dim
        self.num_classes = 2 if task == "classification" else 1
        self.config = dict(task=task, num_tasks=self.num_tasks, steps_per_task=self._steps,
                           batch_size=self.batch_size, block_dim=self.block_dim, frequency=self.frequency,
                           input_dim=self.input_dim, test_samples_per_task=self.test_samples,
                           action_type=action_type, device=str(device), output=output)
        self.observation_space = batch_space(spaces.Box(-1.0, 1.0, (self.latent_dim,), np.float32),
                                             self.batch_size)
        if self.action_type == "labels":
            self.action_space = batch_space(spaces.Discrete(2), self.batch_size)
        elif self.action_type == "logits":
            self.action_space = spaces.Box(-np.inf, np.inf, (self.batch_size, 2), np.float32)
        else:
            self.action_space = spaces.Box(-np.inf, np.inf, (self.batch_size,), np.float32)
        self._memo: dict = {}
        self._start_cursor()

    # ----------------------------------------------------------------- the data, a pure function of the seed
    def encoder(self) -> tuple[np.ndarray, np.ndarray]:
        """The stream's fixed encoder ``z = tanh(x @ A + c)``: ``A`` (input_dim, latent_dim) with N(0, 2) entries
        (so that ``tanh`` bends the 2-D input into a curved sheet) and ``c ~ U[-1, 1]``."""
        self._require_seed()
        key = ("encoder", self.stream_seed)
        if key not in self._memo:
            rng = task_rng(self.stream_seed, _STREAM_KEY)
            a = rng.normal(0.0, math.sqrt(2.0), (self.input_dim, self.latent_dim)).astype(np.float32)
            c = rng.uniform(-1.0, 1.0, self.latent_dim).astype(np.float32)
            self._memo[key] = (a, c)
        return self._memo[key]

    def hidden_mask(self, task_id: int) -> np.ndarray:
        """Task ``task_id``'s read-out of the latent: zero outside its block, inside a random non-empty subset of the
        block's coordinates with random signs, scaled to unit norm."""
        self._require_seed()
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        rng = task_rng(self.stream_seed, task_id, 0)
        keep = rng.random(self.block_dim) < 0.5
        keep[rng.integers(self.block_dim)] = True
        h = np.zeros(self.latent_dim, np.float32)
        h[task_id * self.block_dim:(task_id + 1) * self.block_dim] = keep * rng.choice([-1.0, 1.0], self.block_dim)
        return h / np.sqrt(keep.sum())

    def sample(self, task_id: int, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` fresh (latent, target) pairs of task ``task_id`` from ``rng``."""
        a, c = self.encoder()
        x = rng.uniform(-1.0, 1.0, (n, self.input_dim)).astype(np.float32)
        z = np.tanh(x @ a + c).astype(np.float32)
        s = np.sin(self.frequency * (z @ self.hidden_mask(task_id))).astype(np.float32)
        y = (s > 0).astype(np.int64) if self.task_type == "classification" else s
        return z, y

    def _split(self, task_id: int, split: str):
        key = (split, self.stream_seed, task_id)
        if key not in self._memo:
            self._memo[key] = self.sample(task_id, task_rng(self.stream_seed, task_id, SPLITS[split]),
                                          self.test_samples)
        return self._memo[key]

    def _batch(self, task_id: int, j: int):
        return self.sample(task_id, task_rng(self.stream_seed, task_id, _BATCH_KEY, j), self.batch_size)

    def _score(self, pred: np.ndarray, targets: np.ndarray) -> float:
        if self.task_type == "classification":
            return float(np.count_nonzero(pred == targets)) / self.batch_size
        return -float(np.mean((pred.astype(np.float64) - targets) ** 2))

    def _final_obs(self) -> np.ndarray:
        return np.zeros(self.observation_space.shape, np.float32)

    # ----------------------------------------------------------------- evaluation helpers
    def test_batches(self, task_id: int, batch_size: int = 512, split: str = "test", max_samples: int | None = None,
                     context: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Task ``task_id``'s fixed ``test``, ``support`` or ``train`` samples as (float32 latents, targets) tensors on
        the env's device; targets are int64 classes or float32 regression targets. ``context`` is accepted for the
        probes' sake (this stream is never joint)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        task_id = require_int("task_id", task_id, minimum=0, maximum=self.num_tasks - 1)
        batch_size = require_int("batch_size", batch_size, minimum=1)
        max_samples = require_int("max_samples", max_samples, minimum=0, optional=True)
        require_bool("context", context)
        self._require_seed()
        z, y = self._split(task_id, split)
        if max_samples is not None:
            z, y = z[:max_samples], y[:max_samples]
        for s in range(0, len(z), batch_size):
            yield (torch.as_tensor(z[s:s + batch_size], device=self.device),
                   torch.as_tensor(y[s:s + batch_size], device=self.device))

    def eval_env(self) -> "ConceptShiftEnv":
        """A new env with the same configuration and stream seed."""
        self._require_seed()
        env = ConceptShiftEnv(**self.config)
        env.reset(options={"stream_seed": self.stream_seed})
        return env

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = self._np_random
        return {"config": dict(self.config), "stream_seed": self.stream_seed, "task": self._task,
                "step_in_task": self._step_in_task, "step": self._step, "first_task": self._first_task,
                "last_task": self._last_task, "done": self._done,
                "np_random": None if rng is None else rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`; a state of another configuration is refused and nothing changes."""
        missing = {"config", "stream_seed", "task", "step_in_task", "step", "first_task", "last_task", "done"} - set(
            state)
        if missing:
            raise ValueError(f"not a ConceptShiftEnv state: missing {sorted(missing)}")
        theirs = {k: v for k, v in dict(state["config"]).items() if k != "device"}
        ours = {k: v for k, v in self.config.items() if k != "device"}
        if theirs != ours:
            raise ValueError(f"env state was saved with another configuration: {theirs} (this env: {ours})")
        first, last, task = int(state["first_task"]), int(state["last_task"]), int(state["task"])
        if not 0 <= first <= task <= last < self.num_tasks:
            raise ValueError(f"env state has task {task} outside tasks {first}..{last}")
        self.stream_seed = None if state["stream_seed"] is None else int(state["stream_seed"])
        self._first_task, self._last_task, self._task = first, last, task
        self._step_in_task, self._step, self._done = int(state["step_in_task"]), int(state["step"]), bool(state["done"])
        self._targets = self._empty_targets() if self._done else self._batch(task, self._step_in_task)[1]
        if state.get("np_random") is not None:
            bit_state = state["np_random"]
            rng = np.random.Generator(getattr(np.random, bit_state["bit_generator"])())
            rng.bit_generator.state = bit_state
            self._np_random = rng

    # ----------------------------------------------------------------- internals
    def _empty_targets(self) -> np.ndarray:
        return np.zeros(0, np.int64 if self.task_type == "classification" else np.float32)

    def _obs(self, z: np.ndarray):
        return torch.as_tensor(z, device=self.device) if self.output == "torch" else z

    def _extra_info(self, targets, reward: float) -> dict:
        # "accuracy" is the reward, -MSE, on regression; "mse" says it plainly (0 at reset)
        return {"mse": -float(reward)} if self.task_type == "regression" else {}

    def _validate(self, action) -> np.ndarray:
        """The action as predictions (labels or real values); raises before anything changes."""
        a = action_array(action, self.action_space)
        b = self.batch_size
        if self.action_type == "predictions":
            if a.shape == (b, 1):
                a = a[:, 0]
            if a.shape != (b,):
                raise ValueError(f"action must be one prediction per sample, shape ({b},), got shape {a.shape}")
            if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
                raise ValueError("predictions must be finite real numbers; the step was rejected and the stream did "
                                 "not advance")
            return a
        if self.action_type == "labels":
            if a.shape != (b,) or a.dtype.kind not in "iu":
                raise ValueError(f"action must be integer labels of shape ({b},), got {a.dtype} of shape {a.shape}"
                                 + (" (logits? make the env with action_type='logits')" if a.shape == (b, 2) else ""))
            if a.min(initial=0) < 0 or a.max(initial=0) > 1:
                raise ValueError(f"action labels must be 0 or 1, got values in {a.min()}..{a.max()}")
            return a
        if a.shape != (b, 2) or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise ValueError(f"action must be finite float logits of shape ({b}, 2), got {a.dtype} of shape {a.shape}")
        return a.argmax(axis=1)

