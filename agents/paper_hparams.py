"""Each method's hyperparameters per benchmark, as the NeuMoSync paper tuned them (Appendix C.3 Tables 7-12,
Table 20, Appendix C.4 for MAML / ANML, Table 26 for the forgetting experiments of Appendix F).

``agents.make(name, env)`` applies the row of ``env``'s benchmark over the class ``DEFAULTS``; explicit
hyperparameters win over both, and ``agent.hparam_source`` says where the values came from. The benchmark keys are
those of :data:`clenv.protocols.BENCHMARKS`; an env maps to one through its registry row (``EnvDef.benchmark``: the
Fashion-MNIST and digits ids use the MNIST rows of their family, e.g. ``RandomLabelFashionMNIST-v0`` -> Table 7,
and the families without an MNIST table use the CIFAR-10 one, ``ShuffleFashionMNIST-v0`` -> Table 9).

The tables' symbols, in our names: lambda of L2 / L2Init -> ``l2_lambda`` / ``l2init_lambda``; EWC Gamma (and
Table 26's EWC lambda) -> ``ewc_lambda``; CBP r -> ``replacement_rate``; ReDo s -> ``reset_period`` (steps) and rho
-> ``dormant_threshold``; Hare & Tortoise s -> ``reset_period`` (steps) and beta -> ``ema_beta``; NeuMoSync e (the
NeuroSync embedding size, the controller's feed-forward width) -> ``d_ff``; HAT lambda -> ``hat_lambda``.

Step-denominated values (``reset_period``) are tuned for the paper's per-task budget (Table 5: samples per task /
batch size x epochs). On an env with a different budget (a scaled-down protocol, the 8x8 digits) they are rescaled
by the ratio of steps per task, so "ReDo every two tasks" stays every two tasks; ``rescale_steps=False`` keeps the
printed numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clenv.protocols import paper_steps_per_task
from clenv.registry import ENV_TABLE, protocol

__all__ = ["PAPER_HPARAMS", "ENV_BENCHMARK", "FALLBACK", "STEP_HPARAMS", "PaperRow", "lookup", "paper_hparams",
           "benchmark_for_env"]

#: Hyperparameters counted in training steps: rescaled with the per-task step budget.
STEP_HPARAMS = ("reset_period",)


def _opt(opt: str, lr: float, **extra) -> dict[str, Any]:
    return dict(optimizer=opt, lr=lr, **extra)


def _family(table: str, rows: dict[str, dict[str, Any]], hare_tortoise: tuple[int, float]) -> dict:
    """One benchmark's rows, each cited; Hare & Tortoise gets C.3's AdamW lr 1e-3 ("optimal across all tasks")."""
    src = f"NeuMoSync {table}"
    out = {name: (src, values) for name, values in rows.items()}
    s, beta = hare_tortoise
    out["hare_tortoise"] = (f"{src} (AdamW lr 1e-3: Appendix C.3)",
                            dict(optimizer="adamw", lr=1e-3, reset_period=s, ema_beta=beta))
    return out


# Appendix C.4: 1,000 meta-training steps, inner SGD lr 1e-2 x 5 steps, meta-batch 4, outer Adam lr 1e-3; MAML's
# continual phase runs its inner learner, ANML's trains with Adam lr 1e-3. The same on every benchmark.
_META = dict(meta_steps=1000, inner_steps=5, inner_lr=1e-2, meta_batch=4, meta_lr=1e-3)
_C4 = {"maml": ("NeuMoSync Appendix C.4", dict(_META, optimizer="sgd", lr=1e-2)),
       "anml": ("NeuMoSync Appendix C.4", dict(_META, optimizer="adam", lr=1e-3))}

_T7 = _family("Table 7", {
    "base": _opt("sgd", 1e-2), "scratch": _opt("sgd", 1e-2), "prelu": _opt("sgd", 1e-2),
    "deepf": _opt("sgd", 1e-2), "crelu": _opt("adam", 1e-3),
    "l2": _opt("sgd", 1e-2, l2_lambda=1e-3), "l2init": _opt("sgd", 1e-2, l2init_lambda=1e-3),
    "redo": _opt("adam", 1e-3, reset_period=30_000, dormant_threshold=0.1),
    "cbp": _opt("adam", 1e-3, replacement_rate=1e-3), "ewc": _opt("sgd", 1e-2, ewc_lambda=10.0),
    "l2init+ewc": _opt("sgd", 1e-2, ewc_lambda=10.0, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-2),
    "neumosync": _opt("adam", 1e-3, d_ff=128)}, (4000, 0.999))

_T8 = _family("Table 8", {
    "base": _opt("adam", 1e-3), "scratch": _opt("adam", 1e-3), "prelu": _opt("sgd", 1e-2),
    "deepf": _opt("sgd", 1e-2), "crelu": _opt("adam", 1e-3),
    "l2": _opt("sgd", 1e-2, l2_lambda=1e-3), "l2init": _opt("sgd", 1e-2, l2init_lambda=1e-3),
    "redo": _opt("sgd", 1e-2, reset_period=625, dormant_threshold=0.0),
    "cbp": _opt("adam", 1e-3, replacement_rate=1e-3), "ewc": _opt("sgd", 1e-2, ewc_lambda=1.0),
    "l2init+ewc": _opt("sgd", 1e-2, ewc_lambda=1e-1, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-3),
    "neumosync": _opt("adam", 1e-3, d_ff=128)}, (4000, 0.999))

_T9_ROWS = {
    "base": _opt("adam", 1e-3), "scratch": _opt("sgd", 1e-2), "prelu": _opt("sgd", 1e-2),
    "deepf": _opt("sgd", 1e-2), "crelu": _opt("adam", 1e-3),
    "l2": _opt("sgd", 1e-2, l2_lambda=1e-3), "l2init": _opt("sgd", 1e-2, l2init_lambda=1e-3),
    "redo": _opt("sgd", 1e-2, reset_period=20_000, dormant_threshold=0.1),
    "cbp": _opt("adam", 1e-3, replacement_rate=1e-3), "ewc": _opt("sgd", 1e-2, ewc_lambda=10.0),
    "l2init+ewc": _opt("sgd", 1e-2, ewc_lambda=10.0, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-3),
    "neumosync": _opt("adam", 1e-3, d_ff=512)}
_T9 = _family("Table 9", _T9_ROWS, (4000, 0.995))

_T10 = _family("Table 10", {
    "base": _opt("sgd", 1e-2), "scratch": _opt("sgd", 1e-2), "prelu": _opt("sgd", 1e-2),
    "deepf": _opt("sgd", 1e-2), "crelu": _opt("adam", 1e-3),
    "l2": _opt("sgd", 1e-2, l2_lambda=1e-3), "l2init": _opt("sgd", 1e-2, l2init_lambda=1e-3),
    "redo": _opt("adam", 1e-3, reset_period=30_000, dormant_threshold=0.1),
    "cbp": _opt("adam", 1e-3, replacement_rate=1e-3), "ewc": _opt("sgd", 1e-2, ewc_lambda=1.0),
    "l2init+ewc": _opt("sgd", 1e-2, ewc_lambda=1e-1, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-2),
    "neumosync": _opt("adam", 1e-3, d_ff=512)}, (6000, 0.999))

_T11 = _family("Table 11", {
    "base": _opt("adam", 1e-3), "scratch": _opt("adam", 1e-3), "prelu": _opt("adam", 1e-3),
    "deepf": _opt("adam", 1e-3), "crelu": _opt("adam", 1e-5),
    "l2": _opt("adam", 1e-3, l2_lambda=1e-4), "l2init": _opt("adam", 1e-3, l2init_lambda=1e-5),
    "redo": _opt("adam", 1e-3, reset_period=1560, dormant_threshold=0.0),
    "cbp": _opt("sgd", 1e-2, replacement_rate=1e-3), "ewc": _opt("sgd", 1e-2, ewc_lambda=1.0),
    "l2init+ewc": _opt("sgd", 1e-2, ewc_lambda=10.0, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-2),
    "neumosync": _opt("adam", 1e-3, d_ff=64)}, (3000, 0.999))

_T12 = _family("Table 12", {
    "base": _opt("adam", 1e-3), "scratch": _opt("adam", 1e-3), "prelu": _opt("sgd", 1e-2),
    "deepf": _opt("adam", 1e-3), "crelu": _opt("sgd", 1e-2),
    "l2": _opt("adam", 1e-3, l2_lambda=1e-3), "l2init": _opt("adam", 1e-3, l2init_lambda=1e-3),
    "redo": _opt("sgd", 1e-2, reset_period=120, dormant_threshold=0.0),
    "cbp": _opt("sgd", 1e-2, replacement_rate=1e-4), "ewc": _opt("adam", 1e-3, ewc_lambda=1e-2),
    "l2init+ewc": _opt("adam", 1e-3, ewc_lambda=1e-2, l2init_lambda=1e-3), "layernorm": _opt("sgd", 1e-2),
    "neumosync": _opt("adam", 1e-3, d_ff=128)}, (4000, 0.999))

# Table 20 (ResNet-18 Shuffle Mini-ImageNet, ResNet-50 Split ImageNet): "the same hyperparameters as in the Shuffle
# CIFAR10 benchmark", with optimizer and lr tuned again. (Its ViT row is the base agent with backbone="vit".)
_T20_OPT = {"base": _opt("adam", 1e-3), "cbp": _opt("sgd", 1e-2), "crelu": _opt("adam", 1e-3),
            "neumosync": _opt("adam", 1e-3), "prelu": _opt("adam", 1e-3), "redo": _opt("sgd", 1e-2)}
_T20 = {**_T9, **{name: ("NeuMoSync Table 20 (other knobs: Table 9)", {**_T9_ROWS[name], **values})
                  for name, values in _T20_OPT.items()}}


def _t26(ewc: tuple, hat: tuple, agem: tuple) -> dict:
    src = "NeuMoSync Table 26"
    return {"ewc": (src, _opt(ewc[0], ewc[1], ewc_lambda=ewc[2])),
            "hat": (src, _opt(hat[0], hat[1], s_max=hat[2], hat_lambda=hat[3])),
            "agem": (src, _opt(*agem))}


#: benchmark key (clenv.protocols.BENCHMARKS) -> agent name -> (source, hyperparameters).
PAPER_HPARAMS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "random_label_mnist": {**_T7, **_C4},
    "permuted_mnist": {**_T8, **_C4},
    "shuffle_cifar10": {**_T9, **_C4},
    "random_label_cifar10": {**_T10, **_C4},
    "class_split_cifar100": {**_T11, **_C4},
    "class_split_tiny_imagenet": {**_T12, **_C4},
    "shuffle_mini_imagenet": dict(_T20),
    "split_imagenet": dict(_T20),
    # Appendix F, tuned for Average Forgetting (Table 26: EWC, HAT, A-GEM).
    "permuted_mnist_forgetting": _t26(("adam", 1e-3, 10.0), ("adam", 1e-3, 400.0, 0.1), ("sgd", 1e-2)),
    "split_cifar10": _t26(("adam", 1e-3, 1.0), ("adam", 1e-3, 400.0, 0.1), ("sgd", 1e-2)),
    "class_split_cifar100_forgetting": _t26(("sgd", 1e-2, 10.0), ("adam", 1e-3, 400.0, 1.0), ("adam", 1e-3)),
    "class_split_tiny_imagenet_forgetting": _t26(("adam", 1e-3, 10.0), ("adam", 1e-3, 400.0, 0.1),
                                                 ("adam", 1e-3)),
}

# NGM-SGD (arXiv 2507.14056), spec 1.4: eta per benchmark (gamma 0.9, g0 1 everywhere). On the ResNet benchmarks
# the scripts train NGM-SGD's backbone with momentum 0.9 and its gain-modulated head with momentum 0. The baselines
# (sgd, momentum_sgd, adam) keep their class DEFAULTS, the same on every benchmark.
_NGM_SRC = "NGM-SGD scripts (spec 1.4)"
_NGM_2ND = "NGM-SGD (spec 1.4; eta second-hand)"
_NGM_RESNET = dict(momentum=0.9, head_momentum=0.0)
PAPER_HPARAMS.update({
    "ngm_split_mnist": {"ngm_sgd": (_NGM_SRC, dict(eta=0.4))},
    "ngm_split_cifar10": {"ngm_sgd": (_NGM_SRC, dict(eta=0.2, **_NGM_RESNET))},
    "ngm_rotated_mnist": {"ngm_sgd": (_NGM_2ND, dict(eta=0.5))},
    "ngm_domain_cifar100": {"ngm_sgd": (_NGM_2ND, dict(eta=0.1, **_NGM_RESNET))},
    "ngm_split_mini_imagenet": {"ngm_sgd": (_NGM_2ND, dict(eta=0.1, **_NGM_RESNET))},
    "ngm_permuted_mnist": {},  # eta NOT FOUND (spec 1.4): the class DEFAULTS apply
    # FTN (002_b6d509c9f1140765.txt): one setting for every method, Experiment 1's, which the agents' DEFAULTS hold.
    "concept_shift_classification": {},
    "concept_shift_regression": {},
    # FTN Experiment 2 and the NeuroLoRA tables on the style stream: the adapter agents' DEFAULTS are the papers'.
    "style_shift_text": {},
    # Adapter memories (004_49f6201e6e679480.txt Appendix A.2): adapter_memory's DEFAULTS are the paper's settings.
    "memory_c100_20s": {}, "memory_c100_50s": {}, "memory_tinet_50s": {}, "memory_tinet_100s": {},
})
for _family_rows in [PAPER_HPARAMS[k] for k in ("ngm_split_mnist", "ngm_split_cifar10", "ngm_rotated_mnist",
                                                "ngm_domain_cifar100", "ngm_split_mini_imagenet")]:
    # The ablations run with NGM-SGD's row of the benchmark.
    for _name in ("ngm_entropy_lr", "ngm_fixed_gain"):
        _family_rows[_name] = _family_rows["ngm_sgd"]

#: A method without a Table 26 row (ER, CBP, CReLU, NeuMoSync in the "+ ER" compositions) takes its row from the
#: plasticity table of the same dataset, where there is one.
FALLBACK = {"permuted_mnist_forgetting": "permuted_mnist",
            "class_split_cifar100_forgetting": "class_split_cifar100",
            "class_split_tiny_imagenet_forgetting": "class_split_tiny_imagenet"}

#: env id -> benchmark key, read from the registry's rows (``EnvDef.benchmark``). Ids without one (continual RL,
#: unregistered envs) keep the class DEFAULTS.
ENV_BENCHMARK = {d.id: d.benchmark for d in ENV_TABLE if d.benchmark}


@dataclass(frozen=True)
class PaperRow:
    """What :func:`lookup` found: the values to apply, where they came from, the benchmark (None: no row)."""

    hparams: dict[str, Any]
    source: str
    benchmark: str | None


def benchmark_for_env(env) -> str | None:
    """The benchmark key of an env (or env id); None when the paper has no tuned row for it."""
    if isinstance(env, dict):  # an agent's env_spec: no id
        return None
    row = protocol(env)
    return row.benchmark if row is not None else None


def _rows_for(name: str, family: str) -> tuple[str, dict[str, Any]] | None:
    table = PAPER_HPARAMS[family]
    parts = name.split("+")
    for key, row in table.items():  # a composed row of its own ("L2Init + EWC"), in any order
        if sorted(key.split("+")) == sorted(parts):
            return row
    found = [(p, table[p]) for p in parts if p in table]
    if not found:
        return None
    merged: dict[str, Any] = {}
    for _, (_, values) in reversed(found):  # the first-named method wins, as in agents.compose
        merged.update(values)
    sources = list(dict.fromkeys(src for _, (src, _) in found))
    return "; ".join(sources), merged


def _env_steps_per_task(env) -> int | None:
    u = getattr(env, "unwrapped", env)
    fn = getattr(u, "steps_per_task", None)
    if not callable(fn):
        return None
    try:
        return int(fn(0))
    except Exception:  # noqa: BLE001 - an env that cannot say: no rescaling
        return None


def lookup(agent_name: str, env, benchmark: str | None = None, *, rescale_steps: bool = True) -> PaperRow:
    """The paper's hyperparameters for ``agent_name`` on ``env``.

    ``benchmark``: a key of :data:`PAPER_HPARAMS` (e.g. ``"random_label_cifar10"`` to run that benchmark's rows on
    a Fashion-MNIST stand-in); None infers it from the env id. A ``+``-joined name uses the table's own row for the
    composition when it has one, else merges its parts' rows (first-named wins). No row: empty hparams and source
    ``"class DEFAULTS"``.
    """
    name = "+".join(p.strip().lower() for p in agent_name.split("+"))
    family = benchmark if benchmark is not None else benchmark_for_env(env)
    if family is not None and family not in PAPER_HPARAMS:
        raise ValueError(f"unknown paper benchmark {family!r}; known: {', '.join(PAPER_HPARAMS)}")
    if family is None:
        return PaperRow({}, "class DEFAULTS", None)
    row = _rows_for(name, family)
    if row is None and family in FALLBACK:
        row = _rows_for(name, FALLBACK[family])
        if row is not None:
            row = (f"{row[0]} (Table 26 has no row for {name})", row[1])
    if row is None:
        return PaperRow({}, "class DEFAULTS", family)
    source, values = row[0], dict(row[1])
    steps = [k for k in STEP_HPARAMS if k in values]
    if rescale_steps and steps:
        ours, paper = _env_steps_per_task(env), paper_steps_per_task(FALLBACK.get(family, family))
        if ours and paper and ours != paper:
            for k in steps:
                values[k] = max(1, int(round(values[k] * ours / paper)))
            source += (f"; {', '.join(steps)} rescaled x{ours / paper:.4g} "
                       f"({ours} steps per task, paper {paper})")
    return PaperRow(values, source, family)


def paper_hparams(agent_name: str, env, benchmark: str | None = None, *, rescale_steps: bool = True) -> dict:
    """The paper row's hyperparameters for ``agent_name`` on ``env`` (empty when the paper has none); see
    :func:`lookup`."""
    return lookup(agent_name, env, benchmark, rescale_steps=rescale_steps).hparams
