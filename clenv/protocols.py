"""The paper vocabulary: each benchmark of the papers as a runnable protocol, the probe budget gamma and its
rules, and the one steps-per-task rule.

The registry (:data:`clenv.registry.ENV_TABLE`) holds each env id's protocol defaults (Table 5), its backbone, its
gamma and the key of the benchmark whose tuned hyperparameters apply to it (``EnvDef.benchmark``); this module holds
the benchmarks themselves (:data:`BENCHMARKS`: paper env, Fashion-MNIST stand-in, the setting's changes). The
registry, ``agents.make``'s hyperparameter lookup (``agents.paper_hparams``), ``clenv reproduce`` and the probes all
read these two tables; the paper's reported numbers (``clenv.app.paper_tables``) refer to benchmarks by key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from clenv.registry import protocol

__all__ = ["Benchmark", "BENCHMARKS", "benchmark", "protocol_kwargs", "steps_per_task", "paper_steps_per_task",
           "default_gamma", "scaled_gamma", "probe_gamma", "GAMMA_SHARE"]

#: The papers' rule for a protocol without a tabulated gamma: the probe budget is 20% of a task's steps.
GAMMA_SHARE = 0.2


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as a runnable protocol.

    ``env_kwargs`` change the paper env's registered protocol (every key a ``gym.make`` kwarg); ``stand_in`` is the
    Fashion-MNIST id that runs the same protocol when the paper's dataset is missing, with ``stand_in_kwargs`` on top
    (e.g. classes drawn per task, as Fashion-MNIST has 10 classes). ``agent_kwargs`` go to every agent (the
    backbone of the setting). The probe budget gamma is the paper env's registry row's (Table 5)."""

    key: str
    name: str
    paper_env: str
    stand_in: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    stand_in_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


_FORGET = "NeuMoSync Appendix F: 10 / 5 / 20 / 10 tasks, batch 64, the wide CNN (256-128-64-32 filters, 2 x 256 FC)"
_BENCH = (
    Benchmark("random_label_mnist", "Random-Label MNIST", "RandomLabelMNIST-v0", "RandomLabelFashionMNIST-v0"),
    Benchmark("random_label_cifar10", "Random-Label CIFAR-10", "RandomLabelCIFAR10-v0", "RandomLabelFashionMNIST-v0"),
    Benchmark("shuffle_cifar10", "Shuffle CIFAR-10", "ShuffleCIFAR10-v0", "ShuffleFashionMNIST-v0"),
    Benchmark("permuted_mnist", "Permuted MNIST", "PermutedMNIST-v0", "PermutedFashionMNIST-v0"),
    Benchmark("class_split_cifar100", "Class Split CIFAR-100", "ClassSplitCIFAR100-v0", "SplitFashionMNIST-v0",
              stand_in_kwargs=dict(disjoint=False)),
    Benchmark("class_split_tiny_imagenet", "Class Split T-ImageNet", "ClassSplitTinyImageNet-v0",
              "SplitFashionMNIST-v0", stand_in_kwargs=dict(disjoint=False)),
    Benchmark("permuted_mnist_forgetting", "Permuted MNIST (forgetting)", "PermutedMNIST-v0",
              "PermutedFashionMNIST-v0", env_kwargs=dict(num_tasks=10), agent_kwargs=dict(backbone="cnn_wide"),
              note=_FORGET),
    Benchmark("split_cifar10", "Class-split CIFAR-10 (forgetting)", "SplitCIFAR10-v0", "SplitFashionMNIST-v0",
              agent_kwargs=dict(backbone="cnn_wide"), note=_FORGET),
    Benchmark("class_split_cifar100_forgetting", "Class-split CIFAR-100 (forgetting)", "ClassSplitCIFAR100-v0",
              "SplitFashionMNIST-v0", env_kwargs=dict(num_tasks=20, batch_size=64),
              stand_in_kwargs=dict(disjoint=False), agent_kwargs=dict(backbone="cnn_wide"), note=_FORGET),
    Benchmark("class_split_tiny_imagenet_forgetting", "Class-split T-ImageNet (forgetting)",
              "ClassSplitTinyImageNet-v0", "SplitFashionMNIST-v0", env_kwargs=dict(num_tasks=10, batch_size=64),
              stand_in_kwargs=dict(disjoint=False), agent_kwargs=dict(backbone="cnn_wide"),
              note=_FORGET + "; the classes per task are not given there, so the registry's 2 are kept"),
)
_NGM = ("NGM-SGD (arXiv 2507.14056) stability-gap protocol, shared/specs/methods.md 1.4: joint training, sampling "
        "with replacement from the union of the contexts so far")
_BENCH += (
    Benchmark("ngm_split_mnist", "Split MNIST (joint)", "JointSplitMNIST-v0", "JointSplitFashionMNIST-v0", note=_NGM),
    Benchmark("ngm_split_cifar10", "Split CIFAR-10 (joint)", "JointSplitCIFAR10-v0", "JointSplitFashionMNIST-v0",
              note=_NGM + "; the stand-in keeps the Fashion-MNIST protocol (MLP, batch 128, 5 x 200)"),
    Benchmark("ngm_rotated_mnist", "Rotated MNIST (joint)", "JointRotatedMNIST-v0", "JointRotatedFashionMNIST-v0",
              note=_NGM),
    Benchmark("ngm_permuted_mnist", "Permuted MNIST (joint)", "JointPermutedMNIST-v0", "JointPermutedMNIST-v0",
              note=_NGM + "; no Fashion-MNIST stand-in registered"),
    Benchmark("ngm_domain_cifar100", "Domain CIFAR-100 (joint)", "JointDomainCIFAR100-v0",
              "JointRotatedFashionMNIST-v0", note=_NGM + "; the stand-in is the other domain-incremental protocol"),
    Benchmark("ngm_split_mini_imagenet", "Split mini-ImageNet (joint)", "JointSplitMiniImageNet-v0",
              "JointSplitFashionMNIST-v0", note=_NGM + "; 400 iterations per context are our choice (the sources "
              "give none); the stand-in keeps the Fashion-MNIST protocol"),
)
_FTN = ("Functional Task Networks (002_b6d509c9f1140765.txt) Experiment 1: synthetic, generated from the seed; the "
        "agents' DEFAULTS are the paper's settings")
_BENCH += (
    Benchmark("concept_shift_classification", "Concept shift (classification)", "ConceptShiftClassification-v0",
              "ConceptShiftClassification-v0", note=_FTN),
    Benchmark("concept_shift_regression", "Concept shift (regression)", "ConceptShiftRegression-v0",
              "ConceptShiftRegression-v0", note=_FTN),
)
_BENCH += (
    Benchmark("style_shift_text", "Style shift (text)", "StyleShiftText-v0", "StyleShiftText-v0",
              note="FTN (002_b6d509c9f1140765.txt) Experiment 2: six style transformations of one corpus, generated "
              "from the seed; the adapter agents' DEFAULTS are the paper's settings"),
)
_AM = ("adapter memories (004_49f6201e6e679480.txt): 3 epochs per task, task-local labels; the stand-ins are the "
       "only disjoint 2-class splits of the data here (5 tasks)")
_AM_FASHION = dict(num_tasks=5, classes_per_task=2)
_AM_DIGITS = dict(num_tasks=5, classes_per_task=2, batch_size=16, image_size=None)
_BENCH += (
    Benchmark("memory_c100_20s", "C100-20S", "SplitCIFAR100-20S-v0", "SplitFashionMNIST-5S-v0",
              stand_in_kwargs=_AM_FASHION, note=_AM),
    Benchmark("memory_c100_50s", "C100-50S", "SplitCIFAR100-50S-v0", "SplitFashionMNIST-5S-v0",
              stand_in_kwargs=_AM_FASHION, note=_AM + "; the same stand-in runs as C100-20S's (reused)"),
    Benchmark("memory_tinet_50s", "TINet-50S", "SplitTinyImageNet-50S-v0", "SplitDigits-5S-v0",
              stand_in_kwargs=_AM_DIGITS, note=_AM),
    Benchmark("memory_tinet_100s", "TINet-100S", "SplitTinyImageNet-100S-v0", "SplitDigits-5S-v0",
              stand_in_kwargs=_AM_DIGITS, note=_AM + "; the same stand-in runs as TINet-50S's (reused)"),
)
BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in _BENCH}


def benchmark(name: str) -> Benchmark:
    """A benchmark by key or by name, case and punctuation ignored ("Random-Label MNIST", "random_label_mnist")."""
    want = re.sub(r"[^a-z0-9]", "", name.lower())
    for b in _BENCH:
        if want in (re.sub(r"[^a-z0-9]", "", b.key), re.sub(r"[^a-z0-9]", "", b.name.lower())):
            return b
    raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def protocol_kwargs(key: str) -> dict[str, Any]:
    """The paper's protocol of benchmark ``key`` as ``gym.make`` kwargs of its paper env (registry defaults plus
    the setting's changes)."""
    b = BENCHMARKS[key]
    return {**protocol(b.paper_env).kwargs, **b.env_kwargs}


def steps_per_task(kwargs: dict[str, Any]) -> int | None:
    """Steps per task of a protocol given as env kwargs, by the env's own rule
    (:func:`clenv.envs.supervised.task_steps`); None when the kwargs do not fix the samples per task (a whole
    dataset)."""
    from clenv.envs.supervised import task_steps

    samples = kwargs.get("samples_per_task")
    if samples is None and kwargs.get("classes_per_task") and kwargs.get("samples_per_class"):
        samples = int(kwargs["classes_per_task"]) * int(kwargs["samples_per_class"])
    if not samples and not kwargs.get("steps_per_task"):
        return None
    return task_steps(int(samples or 0), int(kwargs.get("batch_size", 16)), int(kwargs.get("epochs_per_task", 1)),
                      kwargs.get("steps_per_task"))


def paper_steps_per_task(key: str) -> int | None:
    """Steps per task of benchmark ``key`` under the paper's protocol (Table 5), or None."""
    return steps_per_task(protocol_kwargs(key)) if key in BENCHMARKS else None


def default_gamma(steps: int, minimum: int = 1) -> int:
    """The probe budget for a task of ``steps`` steps without a tabulated gamma: :data:`GAMMA_SHARE` of them, in
    [``minimum``, ``steps``]."""
    return min(int(steps), max(int(minimum), int(round(GAMMA_SHARE * int(steps)))))


def scaled_gamma(paper_gamma: int, paper_steps: int, steps: int, minimum: int = 1) -> int:
    """A tabulated gamma kept at the same share of a task when the task has ``steps`` steps instead of the paper's
    ``paper_steps``, in [``minimum``, ``steps``]."""
    return min(int(steps), max(int(minimum), int(round(paper_gamma * steps / paper_steps))))


def probe_gamma(env) -> tuple[int, str]:
    """The fast-adaptation budget gamma for ``env`` and where it came from.

    Table 5's gamma (the registry row's) applies when the env keeps its registered per-task budget (samples per
    task / class, epochs, steps, batch size); otherwise the papers' rule, :func:`default_gamma`."""
    u = getattr(env, "unwrapped", env)
    row = protocol(env)
    config = getattr(u, "config", {}) or {}
    budget_keys = ("samples_per_task", "samples_per_class", "epochs_per_task", "steps_per_task", "batch_size")
    if row is not None and row.gamma and all(config.get(k) == row.kwargs.get(k) for k in budget_keys
                                             if k in row.kwargs):
        return int(row.gamma), "table5"
    steps = u.steps_per_task(0) if hasattr(u, "steps_per_task") else None
    if steps is None:
        raise ValueError("cannot choose gamma: the env has no protocol row and no steps_per_task(); pass gamma=")
    return default_gamma(steps), f"{GAMMA_SHARE:.0%} of steps per task"
