"""The process-wide random streams in one place: what a checkpoint saves, what a probe must not consume.

clenv draws nothing from these itself (streams are pure functions of their seed, agents own their generators); they
are saved and restored so that user code and libraries that do draw from them resume exactly.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["global_rng_state", "set_global_rng_state", "isolated_rng"]


def global_rng_state() -> dict:
    """torch's, numpy's and ``random``'s global states (and CUDA's, when it is in use)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    """Restore what :func:`global_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def isolated_rng():
    """Run a block (a probe) without consuming the global random streams of the run around it."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
