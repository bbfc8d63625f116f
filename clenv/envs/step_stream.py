"""The skeleton the synthetic streams share: tasks of a fixed number of steps, test-then-train steps, fixed splits.

A subclass sets ``num_tasks``, ``_steps`` (steps per task) and ``SPLITS``, and provides ``_batch(task, j) ->
(observation, targets)``, ``_validate(action) -> predictions``, ``_score(predictions, targets) -> reward``,
``_empty_targets()``, ``_final_obs()`` (the observation after the last step) and ``_obs(x)``; ``_extra_info(targets,
reward)`` adds its own info keys. Cursor, reset, step and the info contract of the supervised envs live here once.
"""

from __future__ import annotations

import gymnasium as gym

from clenv.streams import check_reset, start_stream

__all__ = ["StepCountedStreamEnv"]


class StepCountedStreamEnv(gym.Env):
    """Base of :class:`~clenv.envs.concept_shift.ConceptShiftEnv` and :class:`~clenv.envs.style_shift.
    StyleShiftTextEnv`."""

    SPLITS: dict[str, int] = {}

    def _start_cursor(self) -> None:
        self.stream_seed: int | None = None
        self._first_task, self._last_task = 0, self.num_tasks - 1
        self._task, self._step_in_task, self._step, self._done = 0, 0, 0, True
        self._targets = self._empty_targets()

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.SPLITS)

    def steps_per_task(self, task_id: int = 0) -> int:
        return self._steps

    @property
    def total_steps(self) -> int:
        """Steps in the episode: the whole stream, or the one task a ``reset(options={"task_id": k})`` selected."""
        return self._steps * (self._last_task - self._first_task + 1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start the stream (``options``: ``task_id`` replays one task, ``stream_seed`` sets the stream; as the
        supervised envs). A refused reset changes nothing."""
        seed, options = check_reset(self.num_tasks, seed, options)
        super().reset(seed=seed)
        self._first_task, self._last_task = start_stream(self, seed, options)
        self._task, self._step_in_task, self._step, self._done = self._first_task, 0, 0, False
        obs, self._targets = self._batch(self._task, 0)
        return self._obs(obs), self._info(True, self._empty_targets(), -1, 0.0)

    def step(self, action):
        if self._done:
            raise RuntimeError("the stream has ended (terminated=True); call reset() to start it again")
        pred = self._validate(action)
        targets, targets_task = self._targets, self._task
        reward = self._score(pred, targets)
        self._step += 1
        switch = self._step_in_task + 1 >= self._steps
        if switch and self._task == self._last_task:
            self._done = True
            self._step_in_task += 1
            self._targets = self._empty_targets()
            return self._obs(self._final_obs()), reward, True, False, self._info(False, targets, targets_task, reward)
        if switch:
            self._task, self._step_in_task = self._task + 1, 0
        else:
            self._step_in_task += 1
        obs, self._targets = self._batch(self._task, self._step_in_task)
        return self._obs(obs), reward, False, False, self._info(switch, targets, targets_task, reward)

    def _require_seed(self):
        if self.stream_seed is None:
            raise RuntimeError("call reset() first: the stream seed is drawn at reset")

    def _info(self, switch: bool, targets, targets_task: int, reward: float) -> dict:
        return {"task_id": int(self._task), "task_switch": bool(switch), "labels": targets,
                "labels_task_id": int(targets_task), "accuracy": float(reward), "step": int(self._step),
                "step_in_task": int(self._step_in_task), **self._extra_info(targets, reward)}

    def _extra_info(self, targets, reward: float) -> dict:
        return {}
