"""Wrappers for clenv streams.

:class:`TaskObservationPerturbation` turns any Box-observation clenv RL stream (anything whose ``info`` carries
``task_id`` and whose unwrapped env has a ``stream_seed``) into an input-distribution-shift stream: each task sees the
observation through its own dimension permutation or affine map, a pure function of (stream seed, task index).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from clenv.streams import require_bool, require_real

__all__ = ["TaskObservationPerturbation"]

_MODES = ("permute", "affine", "permute_affine")


class TaskObservationPerturbation(gym.Wrapper):
    """Per-task observation perturbation for a Box-observation stream.

    Args:
        env: a clenv RL stream (info has ``task_id``; ``env.unwrapped.stream_seed`` is set at reset).
        mode: ``"permute"`` (observation dimensions shuffled), ``"affine"`` (per dimension ``a * x + b`` with
            ``|a|`` log-uniform in ``[1/scale, scale]``, a random sign, and ``b`` uniform in ``[-shift, shift]``
            times the dimension's finite range, else times 1) or ``"permute_affine"`` (both).
        scale, shift: the affine map's bounds.
        noise_std: extra Gaussian observation noise (drawn from the stream's ``np_random``); with noise the declared
            bounds become infinite.
        identity_first_task: leave task 0's observations unchanged (so task 0 is the plain env).
    """

    def __init__(self, env: gym.Env, mode: str = "permute", *, scale: float = 2.0, shift: float = 0.5,
                 noise_std: float = 0.0, identity_first_task: bool = False):
        super().__init__(env)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        space = env.observation_space
        if not isinstance(space, spaces.Box):
            raise TypeError(f"TaskObservationPerturbation needs a Box observation space, got {space}")
        self.mode = mode
        self.scale = require_real("scale", scale, minimum=1.0)
        self.shift = require_real("shift", shift, minimum=0.0)
        self.noise_std = require_real("noise_std", noise_std, minimum=0.0)
        self.identity_first_task = require_bool("identity_first_task", identity_first_task)
        self._base = space
        self._dim = int(np.prod(space.shape))
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # The declared space must hold every task's observations: the union over all affine maps' images.
        low, high = space.low.reshape(-1).astype(np.float64), space.high.reshape(-1).astype(np.float64)
        if mode == "permute":
            lo = np.full(self._dim, low.min()) if self._dim else low
            hi = np.full(self._dim, high.max()) if self._dim else high
        else:
            span = np.where(np.isfinite(high - low), high - low, 1.0)
            extent = np.maximum(np.abs(low), np.abs(high)) * self.scale + self.shift * span
            if mode == "permute_affine":
                extent = np.full(self._dim, extent.max())
            lo, hi = -extent, extent
        if self.noise_std > 0:
            lo, hi = np.full(self._dim, -np.inf), np.full(self._dim, np.inf)
        self.observation_space = spaces.Box(lo.reshape(space.shape).astype(space.dtype),
                                            hi.reshape(space.shape).astype(space.dtype), dtype=space.dtype)

    def transform(self, task_id: int):
        """``(perm, a, b)`` of task ``task_id``: the observation becomes ``a * x[perm] + b`` (flattened)."""
        seed = getattr(self.env.unwrapped, "stream_seed", None)
        if seed is None:
            raise RuntimeError("call reset() first: the stream seed is drawn at reset")
        key = (int(seed), int(task_id))
        if key not in self._cache:
            n = self._dim
            perm, a, b = np.arange(n), np.ones(n), np.zeros(n)
            if not (self.identity_first_task and task_id == 0):
                rng = np.random.default_rng([int(seed) & (2**63 - 1), int(task_id), 0x0B5])
                if self.mode in ("permute", "permute_affine") and n > 1:
                    perm = rng.permutation(n)
                    while np.array_equal(perm, np.arange(n)):  # an identity "shift" would be no shift
                        perm = rng.permutation(n)
                if self.mode in ("affine", "permute_affine"):
                    low, high = self._base.low.reshape(-1)[perm], self._base.high.reshape(-1)[perm]
                    span = np.where(np.isfinite(high - low), high - low, 1.0)
                    log_s = np.log(self.scale)
                    a = np.exp(rng.uniform(-log_s, log_s, n)) * rng.choice([-1.0, 1.0], n)
                    b = rng.uniform(-self.shift, self.shift, n) * span
            self._cache[key] = (perm, a, b)
        return self._cache[key]

    def observation(self, obs, task_id: int):
        perm, a, b = self.transform(task_id)
        x = np.asarray(obs, dtype=np.float64).reshape(-1)[perm] * a + b
        if self.noise_std > 0:
            x = x + self.env.unwrapped.np_random.normal(0.0, self.noise_std, x.shape)
        x = x.reshape(self._base.shape).astype(self._base.dtype)
        return np.clip(x, self.observation_space.low, self.observation_space.high)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs, info["task_id"]), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.observation(obs, info["task_id"]), reward, terminated, truncated, info
