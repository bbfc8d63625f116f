"""End-of-task metrics on the accuracy matrix R.

``R[i, j]`` is the held-out accuracy on task j after training finished on task i (0-based, T x T; entries that were
not measured are NaN). ``b[j]`` is the accuracy of the randomly initialised model on task j (for FWT).

Definitions (shared/specs/methods.md section 7.1, NeuMoSync Appendix F, FTN Tables 1-3):

- ACC = (1/T) sum_j R[T-1, j]                                    (GEM)
- AF_chaudhry = (1/(T-1)) sum_{j<T-1} (max_{j<=l<T-1} R[l, j] - R[T-1, j])   (RWalk; lower is better; the max runs
  over the checkpoints from the one where task j was learned to the one before the last, as every reference
  implementation computes it (the RWalk and A-GEM code); checkpoints taken before task j was trained measure an
  untrained task and are not forgetting)
- AF_neumosync = (1/(T-1)) sum_{j<T-1} R[T-1, j]                 (NeuMoSync App. F "average forgetting": the final
  accuracy on previous tasks; higher is better; a different quantity under the same name, hence two names)
- BWT = (1/(T-1)) sum_{j<T-1} (R[T-1, j] - R[j, j])              (Lopez-Paz & Ranzato)
- FWT = (1/(T-1)) sum_{j>=1} (R[j-1, j] - b[j])
- FM (FTN): for a score where higher is better (accuracy), the mean over previous tasks of the drop from the best
  score reached after the task was learned (checkpoints j..T-2) to the final score; for a loss (regression MSE,
  cross-entropy), the mean rise of the final loss above the lowest loss reached at those checkpoints. Positive means
  forgetting in both cases.
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_accuracy", "accuracy_curve", "af_chaudhry", "af_neumosync", "bwt", "fwt", "forgetting_measure",
           "forgetting_metrics"]


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"the accuracy matrix must be square (T x T), got shape {R.shape}")
    if R.shape[0] < 1:
        raise ValueError("the accuracy matrix is empty")
    return R


def average_accuracy(R) -> float:
    """ACC: mean accuracy over all tasks after the last task."""
    R = _matrix(R)
    return float(R[-1].mean())


def accuracy_curve(R) -> np.ndarray:
    """A_k = (1/(k+1)) sum_{j<=k} R[k, j] for every k: the average accuracy on the tasks seen so far."""
    R = _matrix(R)
    return np.array([R[k, :k + 1].mean() for k in range(R.shape[0])])


def af_chaudhry(R) -> float:
    """Average forgetting after the last task (Chaudhry et al. 2018, RWalk): the mean over tasks j < T-1 of
    max_{j<=l<T-1} R[l, j] - R[T-1, j], the drop from the best accuracy reached once task j was learned. NaN with a
    single task. For accuracies it equals :func:`forgetting_measure`."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return float("nan")
    best = np.array([np.nanmax(R[j:T - 1, j]) for j in range(T - 1)])
    return float(np.mean(best - R[T - 1, :T - 1]))


def af_neumosync(R) -> float:
    """NeuMoSync Appendix F's AF: mean final accuracy on the tasks before the last one (higher is better)."""
    R = _matrix(R)
    T = R.shape[0]
    return float(R[T - 1, :T - 1].mean()) if T >= 2 else float("nan")


def bwt(R) -> float:
    """Backward transfer: mean over j < T-1 of R[T-1, j] - R[j, j] (negative: forgetting)."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return float("nan")
    j = np.arange(T - 1)
    return float(np.mean(R[T - 1, j] - R[j, j]))


def fwt(R, random_init) -> float:
    """Forward transfer: mean over j >= 1 of R[j-1, j] - b[j], with b the random-init accuracies."""
    R = _matrix(R)
    b = np.asarray(random_init, dtype=np.float64)
    T = R.shape[0]
    if b.shape != (T,):
        raise ValueError(f"random_init must have one accuracy per task ({T},), got shape {b.shape}")
    if T < 2:
        return float("nan")
    j = np.arange(1, T)
    return float(np.mean(R[j - 1, j] - b[j]))


def forgetting_measure(R, higher_is_better: bool = True) -> float:
    """FTN's FM: mean over tasks j < T-1 of (best score at checkpoints j..T-2) - (final score) for accuracies, or
    (final loss) - (lowest loss at checkpoints j..T-2) for losses. Positive means forgetting."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return float("nan")
    drops = []
    for j in range(T - 1):
        history = R[j:T - 1, j]
        if higher_is_better:
            drops.append(np.nanmax(history) - R[T - 1, j])
        else:
            drops.append(R[T - 1, j] - np.nanmin(history))
    return float(np.mean(drops))


def forgetting_metrics(R, random_init=None, higher_is_better: bool = True) -> dict[str, float]:
    """All of the above in one flat dict: ``acc``, ``af_chaudhry``, ``af_neumosync``, ``bwt``, ``fwt`` (only with
    ``random_init``), ``fm``."""
    out = {"acc": average_accuracy(R), "af_chaudhry": af_chaudhry(R), "af_neumosync": af_neumosync(R),
           "bwt": bwt(R), "fm": forgetting_measure(R, higher_is_better)}
    if random_init is not None:
        out["fwt"] = fwt(R, random_init)
    return out
