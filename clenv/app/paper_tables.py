"""The papers' reference numbers, stored as data: what ``clenv reproduce`` runs and compares against.

:data:`TABLES` holds the paper's result tables; their columns and cells name benchmarks by the keys of
:data:`clenv.protocols.BENCHMARKS` (the protocols themselves, in the library). Rows are kept as the paper prints
them ("mean (spread)" per cell, in percent) and parsed on import, so each row can be checked against the paper's
text. Every cell names a clenv metric (:mod:`clenv.metrics`, :data:`clenv.app.report.TABLES`) and every method the
agent (and hyperparameters) that runs it.

Metric choices worth knowing: Table 1's "Average Final Accuracy" and Table 4's "Acc" are the average online task
accuracy over all tasks (``avg_online_acc``): NeuMoSync's 64.74 on Random-Label CIFAR-10 is the same number as its
100% column in Tables 2 and 31. The "Average Forgetting" of Tables 3 and 23 is Appendix F's final accuracy on the
previous tasks (higher is better), ``af_neumosync``, not Chaudhry's forgetting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Method", "Cell", "PaperTable", "TABLES", "PLASTICITY_TABLE", "NGM_TABLE", "FTN_TABLES", "FTN_TABLE4",
           "NEUROLORA_TABLES", "MEMORY_TABLES", "MEMORY_COLUMNS",
           "FINAL_TASK_METRICS", "MERGE_COLUMNS", "TA_SCALES", "TIES_SCALES", "TIES_DENSITY", "table", "table_ids",
           "normalize_table_id", "parse_rows"]


@dataclass(frozen=True)
class Method:
    """A row label of a paper table and how to run it: agent name, hyperparameters beyond the paper row, and
    multiplicative env changes (Table 31 trains 4x the epochs)."""

    label: str
    agent: str
    hparams: dict[str, Any] = field(default_factory=dict)
    env_factors: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def key(self) -> str:
        """A stable name for result folders: the agent and its extra hyperparameters."""
        extra = ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}"
                         for k, v in sorted(self.hparams.items()))
        factors = ",".join(f"{k}x{v:g}" for k, v in sorted(self.env_factors.items()))
        return self.agent + "".join(f"[{s}]" for s in (extra, factors) if s)


@dataclass(frozen=True)
class Cell:
    """One number of a table: the paper's mean and its parenthesised spread, both in percent."""

    benchmark: str
    method: str
    metric: str
    mean: float
    std: float


@dataclass(frozen=True)
class PaperTable:
    id: str
    title: str
    probes: str  # "online", "adaptation", "forgetting", "stability", "masks" or "merging" (single-task runs merged)
    columns: tuple[tuple[str, str, str], ...]  # (benchmark key, metric, the paper's column header)
    methods: tuple[Method, ...]
    cells: tuple[Cell, ...]
    gamma: dict[str, int] = field(default_factory=dict)  # per-benchmark probe budget overriding Table 5
    note: str = ""
    paper: str = "NeuMoSync"  # whose numbers the cells are
    seeds: int = 3  # how many seeds the paper's means are over (NeuMoSync Appendix C.3 / F: 3; 0: not stated, NeuroLoRA)
    percent: bool = True  # cells in percent (NeuMoSync, NGM-SGD); False: as printed, fractions and MSEs (FTN)

    @property
    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(b for b, _, _ in self.columns))

    def method(self, label: str) -> Method:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(label)


# ---------------------------------------------------------------------------------------------------- methods
def _m(label, agent, note="", env_factors=None, **hp):
    return Method(label, agent, hp, dict(env_factors or {}), note)


_TRANSFER = (_m("CBP", "cbp"), _m("CReLU", "crelu"), _m("ReDo", "redo"), _m("L2Init + EWC", "l2init+ewc"),
             _m("NeuMoSync", "neumosync"))
_FORGETTING = (_m("EWC", "ewc"), _m("HAT", "hat"), _m("A-GEM", "agem"), _m("ER", "er"), _m("CBP + ER", "cbp+er"),
               _m("CReLU + ER", "crelu+er"), _m("NeuMoSync + ER", "neumosync+er"))
_ONLY = {"α_AL-Only": ("al",), "α_ARM-Only": ("arm",), "α_SM-Only": ("sm",), "α_WC-Only": ("wc",)}
_WITH_NS = tuple(_m(k, "neumosync", coefficients=v) for k, v in _ONLY.items()) + (_m("NeuMoSync", "neumosync"),)
_WITHOUT_NS = tuple(_m("w/o NeuroSync + " + k, "neumosync", controller="none", coefficients=v)
                    for k, v in _ONLY.items())
_BETA = (_m("0.999 (chosen)", "neumosync", beta=0.999), _m("0.9", "neumosync", beta=0.9),
         _m("0.99", "neumosync", beta=0.99), _m("0.9999", "neumosync", beta=0.9999))

# ---------------------------------------------------------------------------------------------------- tables
# Rows as printed in the paper (bold markup removed): label, tab, one "mean (spread)" per column.
_T1 = {
    "random_label_cifar10": """
CBP	0.54 (0.19)	2.60 (0.53)	0.77 (0.41)	2.20 (0.72)	3.03 (1.24)	1.60 (1.18)	12.13 (1.39)	14.23 (0.59)	12.30 (0.92)	38.21 (0.24)
CReLU	3.56 (0.53)	5.87 (0.72)	3.33 (1.01)	2.80 (0.53)	4.34 (0.70)	2.13 (1.15)	11.87 (1.04)	14.42 (0.72)	15.20 (1.09)	35.03 (0.25)
ReDo	0.70 (0.21)	0.04 (0.01)	0.43 (1.21)	0.93 (0.05)	0.76 (0.21)	0.90 (0.20)	11.87 (1.46)	12.19 (0.84)	11.33 (0.59)	27.14 (0.87)
L2Init + EWC	1.51 (0.05)	2.65 (1.35)	1.50 (1.10)	0.98 (0.21)	1.75 (0.36)	0.17 (0.80)	11.81 (1.47)	12.58 (0.88)	13.47 (1.05)	25.14 (0.32)
NeuMoSync	7.12 (1.33)	13.77 (1.12)	8.10 (1.36)	5.03 (1.08)	8.06 (1.20)	4.77 (0.55)	10.68 (0.73)	16.06 (0.79)	18.90 (0.58)	64.74 (1.96)
""",
    "random_label_mnist": """
CBP	0.45 (0.15)	1.02 (0.05)	0.50 (0.42)	1.33 (0.32)	1.05 (0.18)	0.70 (0.56)	10.65 (0.71)	11.68 (0.77)	10.73 (1.44)	36.41 (1.25)
CReLU	2.10 (1.15)	3.87 (1.11)	1.80 (0.67)	2.57 (1.23)	3.50 (0.66)	1.47 (0.28)	10.74 (1.49)	12.65 (1.14)	12.53 (1.06)	32.47 (0.81)
ReDo	0.12 (0.03)	0.03 (0.26)	0.33 (1.16)	0.72 (0.13)	0.11 (0.05)	0.16 (0.47)	10.74 (0.77)	10.97 (0.71)	10.10 (1.44)	27.24 (0.74)
L2Init + EWC	1.04 (0.44)	1.04 (0.16)	0.83 (0.98)	0.09 (0.05)	0.08 (0.13)	0.34 (0.06)	10.03 (0.76)	10.55 (0.75)	11.10 (1.06)	17.49 (0.12)
NeuMoSync	3.65 (0.76)	7.22 (1.08)	8.53 (1.40)	4.66 (0.90)	6.95 (0.72)	7.17 (1.50)	10.13 (1.01)	18.81 (0.59)	19.87 (0.55)	58.67 (1.42)
""",
    "shuffle_cifar10": """
CBP	0.21 (0.16)	0.87 (0.19)	0.36 (1.19)	0.67 (0.26)	0.13 (0.10)	0.31 (0.05)	37.17 (1.50)	37.72 (1.03)	38.67 (1.47)	90.14 (0.47)
CReLU	14.56 (1.36)	17.24 (0.51)	12.10 (1.22)	6.87 (1.18)	12.86 (1.04)	8.22 (0.77)	31.12 (1.14)	39.93 (0.61)	43.29 (0.93)	89.41 (0.34)
ReDo	12.02 (0.95)	13.55 (1.45)	10.44 (1.38)	2.34 (0.76)	3.10 (1.20)	1.44 (0.13)	32.17 (1.41)	33.88 (1.37)	42.71 (0.80)	77.36 (0.57)
L2Init + EWC	5.10 (1.14)	7.67 (1.11)	4.53 (0.65)	3.44 (1.26)	4.50 (1.04)	2.92 (1.28)	32.05 (1.03)	35.46 (0.50)	36.75 (0.82)	69.65 (0.24)
NeuMoSync	14.90 (0.52)	16.45 (1.43)	13.24 (1.38)	4.33 (1.33)	12.37 (0.81)	8.92 (0.56)	32.02 (1.38)	40.17 (1.45)	45.90 (0.59)	92.84 (0.36)
""",
    "permuted_mnist": """
CBP	17.65 (0.99)	14.88 (0.57)	13.71 (1.26)	14.77 (1.27)	18.32 (0.63)	17.14 (0.98)	20.50 (1.05)	38.75 (0.77)	35.29 (1.37)	69.21 (0.27)
CReLU	23.53 (0.92)	20.98 (0.71)	18.86 (1.04)	4.93 (1.23)	7.67 (0.70)	5.57 (0.81)	33.11 (1.50)	39.38 (1.15)	53.44 (0.94)	69.38 (0.31)
ReDo	25.87 (1.02)	26.33 (0.62)	20.71 (0.72)	13.87 (0.84)	14.65 (1.09)	12.43 (0.73)	12.12 (0.72)	25.50 (0.57)	36.29 (1.13)	35.71 (0.38)
L2Init + EWC	24.74 (0.73)	24.21 (1.41)	19.86 (1.36)	12.21 (0.57)	13.33 (0.74)	12.65 (1.17)	12.12 (0.71)	25.52 (0.63)	35.57 (1.44)	34.24 (0.42)
NeuMoSync	22.76 (1.07)	28.65 (0.97)	24.57 (1.28)	12.87 (1.31)	19.22 (0.69)	17.71 (0.60)	30.02 (0.93)	47.13 (0.92)	55.71 (0.97)	74.36 (1.36)
""",
    "class_split_cifar100": """
CBP	12.04 (1.23)	10.65 (1.17)	13.86 (1.48)	8.21 (0.60)	5.77 (0.90)	7.52 (0.84)	51.09 (1.36)	59.08 (0.75)	63.57 (0.69)	72.36 (0.67)
ReDo	2.76 (1.50)	2.87 (1.34)	2.46 (1.47)	0.31 (0.19)	0.21 (0.27)	0.11 (0.25)	56.20 (0.99)	58.19 (0.71)	56.06 (0.90)	72.51 (0.75)
L2Init + EWC	3.45 (0.56)	3.01 (0.88)	3.94 (1.49)	2.00 (0.77)	3.64 (1.28)	2.10 (0.96)	55.77 (0.92)	57.52 (1.46)	57.67 (1.50)	68.24 (0.31)
NeuMoSync	9.87 (1.06)	19.05 (1.22)	11.95 (0.65)	7.10 (0.80)	17.44 (1.47)	8.19 (1.08)	51.69 (1.04)	60.77 (1.25)	62.43 (0.56)	78.68 (0.91)
""",
    "class_split_tiny_imagenet": """
CBP	4.67 (1.08)	3.11 (1.34)	5.27 (1.35)	2.06 (0.66)	1.01 (0.48)	1.88 (0.58)	70.30 (0.69)	72.37 (1.10)	76.88 (1.18)	83.21 (0.57)
CReLU	1.06 (0.35)	5.43 (0.18)	3.65 (1.34)	3.64 (0.75)	4.43 (1.09)	2.54 (1.12)	69.07 (0.92)	71.74 (1.08)	72.76 (0.78)	84.27 (1.02)
ReDo	5.21 (1.43)	4.43 (0.70)	6.88 (1.22)	2.76 (0.74)	2.87 (0.90)	2.19 (1.17)	69.33 (0.80)	70.52 (0.82)	74.69 (1.25)	83.26 (1.32)
L2Init + EWC	1.04 (0.04)	1.40 (0.23)	3.54 (1.50)	0.66 (0.14)	0.06 (0.11)	0.08 (0.32)	72.48 (0.77)	71.56 (1.43)	75.77 (1.38)	82.76 (1.27)
NeuMoSync	7.30 (1.38)	6.56 (0.87)	8.23 (0.66)	2.65 (1.33)	3.57 (1.20)	3.27 (1.11)	67.96 (1.49)	70.44 (1.15)	76.08 (0.51)	86.37 (1.06)
""",
}
_T1_COLS = (("bkt_gamma_half", "BKT_γ/2"), ("bkt_gamma", "BKT_γ"), ("bkt", "BKT_mean"),
            ("fkt_gamma_half", "FKT_γ/2"), ("fkt_gamma", "FKT_γ"), ("fkt", "FKT_mean"), ("lca_0", "LCA_0"),
            ("lca_f", "LCA_F"), ("lca_b", "LCA_B"), ("avg_online_acc", "Average Final Accuracy"))

_T2 = """
ViT	47.20(1.76)	48.72(1.98)	53.61(1.56)	61.15(1.21)	60.38(1.54)
NeuMoSync (MLP)	48.47(1.15)	49.17(1.23)	49.31(1.54)	50.26(1.26)	47.51(1.32)
NeuMoSync (1D Conv)	70.04(1.07)	68.11(1.12)	67.11(1.11)	65.24(1.32)	63.34(1.82)
NeuMoSync	69.31(1.10)	68.32(1.04)	68.81(1.03)	67.33(1.46)	64.74(1.96)
"""
_W5 = (("online_acc_last10", "10%"), ("online_acc_last25", "25%"), ("online_acc_last50", "50%"),
       ("online_acc_last75", "75%"), ("online_acc_last100", "100%"))
_W4 = (_W5[0], _W5[1], _W5[2], _W5[4])

_F4 = ("permuted_mnist_forgetting", "split_cifar10", "class_split_cifar100_forgetting",
       "class_split_tiny_imagenet_forgetting")
_F4_HEAD = ("P-MNIST", "Split C10", "Split C100", "Split T-ImgNet")
_T3 = """
EWC	46.23(1.34)	18.00(0.92)	4.57(1.28)	8.41(0.73)	62.09(0.84)	94.32(1.12)	89.98(0.65)	92.40(1.27)
HAT	22.19(0.84)	58.44(1.67)	25.00 (0.91)	51.62 (1.42)	25.83(1.05)	87.05(0.78)	49.53(1.44)	78.73(0.91)
A-GEM	50.71(1.11)	20.36(0.87)	1.29(1.58)	12.88(0.93)	70.69(0.96)	95.68 (1.38)	17.27(0.72)	70.69(1.09)
ER	63.00(0.95)	61.55(1.21)	7.42(0.82)	32.18(1.36)	68.12(1.22)	91.22(0.86)	37.90(1.41)	91.60(0.67)
CBP + ER	49.83(1.12)	30.27(0.79)	4.00(1.47)	28.64(0.86)	68.69(0.94)	82.81(1.19)	53.47(0.73)	68.69(1.06)
CReLU + ER	63.39(0.97)	60.00(1.53)	1.78(0.88)	40.22(1.26)	68.87(1.11)	92.72(0.82)	68.65(1.36)	83.89(0.97)
NeuMoSync + ER	64.00 (1.05)	66.47 (0.96)	18.91(1.38)	41.00(0.99)	75.58 (0.88)	94.73(1.25)	95.68 (0.91)	95.30 (1.14)
"""
_T4_B = ("permuted_mnist", "random_label_mnist", "random_label_cifar10", "shuffle_cifar10", "class_split_cifar100",
         "class_split_tiny_imagenet")
_T4 = """
MAML	24.44(0.93)	60.39(1.23)	12.01(1.83)	20.21(1.23)	12.94(0.94)	21.56(0.99)	41.33(1.43)	92.35 (1.04)	47.12(1.11)	75.34(1.23)	64.14 (1.65)	87.96(0.93)
ANML	19.39(1.27)	47.23(1.65)	10.97(1.54)	12.34(1.76)	13.04(0.87)	14.27(0.73)	19.44(1.29)	30.41(1.32)	55.31(1.32)	80.05 (1.06)	61.19(0.76)	88.18 (1.01)
NeuMoSync	26.64 (1.63)	74.36 (1.36)	25.54 (1.31)	58.67 (1.42)	21.81 (1.06)	64.74 (1.96)	51.43 (0.83)	92.84 (0.36)	57.22 (0.85)	78.68(0.91)	62.44(1.63)	86.37(1.06)
"""
_T23 = """
EWC	46.23(1.34)	18.00(0.92)	04.57(1.28)	08.41(0.73)
HAT	22.19(0.84)	58.44(1.67)	25.00 (0.91)	51.62 (1.42)
A-GEM	50.71(1.11)	20.36(0.87)	01.29(1.58)	12.88(0.93)
ER	63.00(0.95)	61.55(1.21)	07.42(0.82)	32.18(1.36)
CBP + ER	49.83(1.12)	30.27(0.79)	04.00(1.47)	28.64(0.86)
CReLU + ER	63.39(0.97)	60.00(1.53)	01.78(0.88)	40.22(1.26)
NeuMoSync + ER	64.00 (1.05)	66.47 (0.96)	18.91(1.38)	41.00(0.99)
"""
_T24 = """
EWC	65.05(1.23)	93.50(0.94)	90.33(1.11)	90.99(0.86)
HAT	37.69(0.77)	89.20(1.45)	61.71(0.92)	81.52(1.36)
A-GEM	69.03(1.18)	93.76(0.83)	58.21(1.42)	69.03(0.91)
ER	71.35(0.95)	92.21(1.07)	75.81(0.89)	90.18(1.27)
CBP + ER	63.24(1.14)	89.25(0.93)	71.32(1.39)	63.24(0.84)
CReLU + ER	69.96(0.98)	92.07(1.31)	81.32(0.87)	84.98(1.25)
NeuMoSync + ER	75.58(1.09)	93.17(0.96)	94.35(1.22)	91.25(0.88)
"""
_T25 = """
EWC	62.09 (0.84)	94.32 (1.12)	89.98 (0.65)	92.40 (1.27)
HAT	25.83 (1.05)	87.05 (0.78)	49.53 (1.44)	78.73 (0.91)
A-GEM	70.69 (0.96)	95.68 (1.38)	17.27 (0.72)	70.69 (1.09)
ER	68.12 (1.22)	91.22 (0.86)	37.90 (1.41)	91.60 (0.67)
CBP + ER	68.69 (0.94)	82.81 (1.19)	53.47 (0.73)	68.69 (1.06)
CReLU + ER	68.87 (1.11)	92.72 (0.82)	68.65 (1.36)	83.89 (0.97)
NeuMoSync + ER	75.58 (0.88)	94.73 (1.25)	95.68 (0.91)	95.30 (1.14)
"""
_T27 = """
α_AL-Only	24.69(1.73)	23.70(1.72)	23.28(1.84)	23.38(1.74)
α_ARM-Only	18.08(1.57)	18.60(1.59)	20.02(1.57)	18.23(1.67)
α_SM-Only	11.45(1.45)	11.84(1.84)	14.53(1.53)	22.52(1.87)
α_WC-Only	11.42(1.59)	11.32(1.73)	11.12(1.65)	11.85(1.96)
NeuMoSync	69.31(1.10)	68.32(1.04)	68.81(1.03)	64.74(1.96)
"""
# The paper prints the fourth row of Table 28 as a second "α_SM-Only"; Table 27's order makes it α_WC-Only.
_T28 = """
α_AL-Only	65.07(0.24)	66.16(0.31)	65.80(0.28)	69.78(0.19)
α_ARM-Only	43.92(0.15)	43.56(0.18)	43.14(0.22)	45.22(0.16)
α_SM-Only	71.35(0.03)	70.76(0.02)	73.25(0.04)	78.11(0.25)
α_WC-Only	10.40(0.08)	11.03(0.05)	10.07(0.12)	14.41(0.33)
NeuMoSync	93.00(0.41)	92.84(0.29)	92.17(0.38)	92.84(0.36)
"""
_T29 = """
w/o NeuroSync + α_AL-Only	59.25(0.32)	60.24(0.28)	61.00(0.35)	61.04(0.21)
w/o NeuroSync + α_ARM-Only	10.07(0.11)	12.60(0.49)	11.40(0.07)	12.98(0.19)
w/o NeuroSync + α_SM-Only	10.20(0.33)	11.01(0.03)	11.00(0.4)	12.52(0.17)
w/o NeuroSync + α_WC-Only	10.67(0.80)	10.10(0.09)	11.11(0.13)	14.82(0.23)
"""
_T30 = """
w/o NeuroSync + α_AL-Only	24.02(0.18)	24.16(0.15)	24.29(0.22)	23.91(0.19)
w/o NeuroSync + α_ARM-Only	11.46(0.12)	11.48(0.08)	11.42(0.11)	11.73(0.14)
w/o NeuroSync + α_SM-Only	10.56(0.31)	11.40(0.55)	11.02(0.13)	12.52(0.17)
w/o NeuroSync + α_WC-Only	11.40(0.09)	11.41(0.07)	11.41(0.10)	11.70(0.13)
"""
_T31 = """
NeuMoSync w resetting	57.94(1.33)	58.32(1.53)	61.23(1.87)	60.13(1.43)	59.38(1.87)
NeuroSync w/o resetting	69.31(1.10)	68.32(1.04)	68.81(1.03)	67.33(1.46)	64.74(1.96)
"""
_T32 = """
0.999 (chosen)	69.31(1.10)	68.32(1.04)	68.81(1.46)	67.33(1.46)	64.74(1.96)
0.9	35.50(1.45)	33.63(1.28)	36.67(1.34)	38.96(1.82)	40.35(2.15)
0.99	36.56(1.38)	37.77(1.22)	39.67(1.41)	39.24(1.76)	40.04(2.08)
0.9999	21.90(1.02)	21.82(0.95)	25.78(1.18)	27.15(1.52)	30.43(1.89)
"""
_T33 = """
0.999 (chosen)	93.00(0.41)	92.84(0.36)	92.17(0.38)	91.56(0.29)	92.84(0.36)
0.9	83.55(0.33)	83.90(0.40)	83.39(0.31)	86.19(0.35)	87.92(0.32)
0.99	83.80(0.35)	81.45(0.39)	82.82(0.34)	85.26(0.37)	86.37(0.30)
0.9999	57.80(0.37)	56.45(0.32)	57.82(0.36)	60.26(0.41)	64.37(0.38)
"""

_NUM = re.compile(r"(-?\d+(?:\.\d+)?)\s*\(\s*(\d+(?:\.\d+)?)\s*\)")


def parse_rows(text: str, columns) -> list[Cell]:
    """Cells of a block of ``label<TAB>mean (spread)...`` rows; a row whose number of values is not the number of
    columns is an error (a copy slip)."""
    cells = []
    for line in text.strip().splitlines():
        label, _, rest = line.partition("\t")
        values = _NUM.findall(rest)
        if len(values) != len(columns) or _NUM.sub("", rest).strip():
            raise ValueError(f"row {label!r}: {len(values)} values for {len(columns)} columns: {rest!r}")
        cells += [Cell(b, label.strip(), metric, float(m), float(s)) for (b, metric, _), (m, s) in zip(columns, values)]
    return cells


def _table(id, title, probes, columns, methods, rows, gamma=None, note=""):
    if isinstance(rows, dict):  # one block per benchmark, the same columns in each
        cells = [c for b, text in rows.items() for c in parse_rows(text, [(b, m, h) for m, h in columns])]
        cols = tuple((b, m, h) for b in rows for m, h in columns)
    else:
        cols = tuple(columns)
        cells = parse_rows(rows, cols)
    return PaperTable(id, title, probes, cols, tuple(methods), tuple(cells), dict(gamma or {}), note)


def _one(bench, cols):
    return tuple((bench, m, h) for m, h in cols)


def _each(benchmarks, heads, metric):
    return tuple((b, metric, h) for b, h in zip(benchmarks, heads))


_TABLES = (
    _table("table1", "Knowledge transfer and learning speed (gamma: Table 5)",
           "adaptation", _T1_COLS, _TRANSFER, _T1),
    _table("table2", "Controller ablation on Random-Label CIFAR-10: average online accuracy over the last x% of "
           "tasks", "online", _one("random_label_cifar10", _W5),
           (_m("ViT", "base", backbone="vit"), _m("NeuMoSync (MLP)", "neumosync", controller="mlp"),
            _m("NeuMoSync (1D Conv)", "neumosync", controller="conv1d"), _m("NeuMoSync", "neumosync")), _T2),
    _table("table3", "Forgetting (Average Forgetting, App. F: final accuracy on previous tasks) and late plasticity "
           "(last 25% of tasks)", "forgetting",
           _each(_F4, _F4_HEAD, "af_neumosync") + _each(_F4, _F4_HEAD, "online_acc_last25"), _FORGETTING, _T3),
    _table("table4", "Meta-learning comparison: LCA_F and average accuracy (gamma: Table 13)", "adaptation",
           tuple(c for b in _T4_B for c in ((b, "lca_f", "LCA_F"), (b, "avg_online_acc", "Acc"))),
           (_m("MAML", "maml"), _m("ANML", "anml"), _m("NeuMoSync", "neumosync")), _T4,
           gamma=dict(permuted_mnist=78, random_label_mnist=1500, random_label_cifar10=374, shuffle_cifar10=156,
                      class_split_cifar100=78, class_split_tiny_imagenet=375)),
    _table("table23", "Average Forgetting (App. F: final accuracy on previous tasks; higher is better)",
           "forgetting", _each(_F4, _F4_HEAD, "af_neumosync"), _FORGETTING, _T23),
    _table("table24", "Average online accuracy across all tasks (forgetting protocol)", "forgetting",
           _each(_F4, _F4_HEAD, "avg_online_acc"), _FORGETTING, _T24),
    _table("table25", "Average online accuracy across the last 25% of tasks (forgetting protocol)", "forgetting",
           _each(_F4, _F4_HEAD, "online_acc_last25"), _FORGETTING, _T25),
    _table("table27", "One mechanism at a time, with NeuroSync, Random-Label CIFAR-10", "online",
           _one("random_label_cifar10", _W4), _WITH_NS, _T27),
    _table("table28", "One mechanism at a time, with NeuroSync, Shuffle CIFAR-10", "online",
           _one("shuffle_cifar10", _W4), _WITH_NS, _T28,
           note="the paper prints the 4th row as a second 'α_SM-Only'; kept here as α_WC-Only (Table 27's order)"),
    _table("table29", "One mechanism at a time, without NeuroSync (per-neuron coefficients), Shuffle CIFAR-10",
           "online", _one("shuffle_cifar10", _W4), _WITHOUT_NS, _T29),
    _table("table30", "One mechanism at a time, without NeuroSync (per-neuron coefficients), Random-Label CIFAR-10",
           "online", _one("random_label_cifar10", _W4), _WITHOUT_NS, _T30),
    _table("table31", "NeuroSync reset at every task end (4x epochs) vs not, Random-Label CIFAR-10", "online",
           _one("random_label_cifar10", _W5),
           (_m("NeuMoSync w resetting", "neumosync", env_factors={"epochs_per_task": 4}, reset_controller=True),
            _m("NeuroSync w/o resetting", "neumosync")), _T31),
    _table("table32", "Consolidation rate beta, Random-Label CIFAR-10", "online", _one("random_label_cifar10", _W5),
           _BETA, _T32),
    _table("table33", "Consolidation rate beta, Shuffle CIFAR-10", "online", _one("shuffle_cifar10", _W5), _BETA,
           _T33),
)

# The plasticity benchmarks of Setting I (Figure 2) at their full protocols, with the one number Table 1 gives for
# them without probes, "Average Final Accuracy" (the online average over all tasks, as the module docstring says;
# Shuffle CIFAR-10's 92.84 is Table 33's 100% column too). Base is Figure 2's curve, with no number in the paper.
_PLASTICITY_BENCH = ("random_label_mnist", "permuted_mnist", "shuffle_cifar10")
PLASTICITY_TABLE = PaperTable(
    "plasticity", "Setting I at the full protocol: Table 1's Average Final Accuracy (the average online task accuracy "
    "over all tasks) and the last 25% of tasks; `clenv report` draws Figure 2's per-task curves",
    "online", tuple((b, m, h) for b in _PLASTICITY_BENCH for m, h in (("avg_online_acc", "Final Accuracy"),
                                                                      ("online_acc_last25", "last 25%"))),
    (_m("Base", "base"),) + _TRANSFER,
    tuple(c for c in _TABLES[0].cells if c.metric == "avg_online_acc" and c.benchmark in _PLASTICITY_BENCH),
    note="no probes: online accuracy only; the paper gives no number for Base or for the last 25% of these tasks")

# ---------------------------------------------------------------------------------------------------- NGM-SGD
# Rodriguez-Garcia, Ghosh and Ramaswamy, arXiv 2507.14056, through shared/specs/methods.md 1.7. Cells in percent like
# every table here (avg-SG, a ratio, as 100 x ratio: 0.134 is 13.4). Split CIFAR-10's NGM-SGD row is v3 Table 1
# quoted verbatim by a third party [paper-q]; the other avg-SG cells and the MSGD / Adam spreads on Split CIFAR-10
# are a secondary summary's [2nd], as are Split mini-ImageNet's; a spread the sources do not give is NaN.
_NGM_METRICS = (("ngm_avg_acc", "avg-ACC"), ("ngm_avg_min_acc", "avg-min-ACC"), ("ngm_wc_acc", "WC-ACC"),
                ("ngm_avg_sg", "avg-SG"))
_NGM_METHODS = (_m("NGM-SGD", "ngm_sgd"), _m("MSGD", "momentum_sgd"), _m("Adam", "adam"), _m("SGD", "sgd"))
_NAN = float("nan")
_NGM_SG = {  # benchmark -> method -> (avg-SG mean, spread), [2nd] unless noted
    "ngm_split_mnist": {"NGM-SGD": (0.017, _NAN), "MSGD": (0.267, _NAN), "Adam": (0.283, _NAN), "SGD": (0.034, _NAN)},
    "ngm_split_cifar10": {"NGM-SGD": (0.134, 0.043), "MSGD": (0.425, 0.044), "Adam": (0.310, 0.088),
                          "SGD": (0.241, _NAN)},
    "ngm_rotated_mnist": {"NGM-SGD": (0.054, _NAN), "MSGD": (0.117, _NAN), "Adam": (0.092, _NAN),
                          "SGD": (0.053, _NAN)},
    "ngm_domain_cifar100": {"NGM-SGD": (0.224, _NAN), "MSGD": (0.232, _NAN), "Adam": (0.256, _NAN),
                            "SGD": (0.243, _NAN)},
    "ngm_split_mini_imagenet": {"NGM-SGD": (0.300, 0.071), "MSGD": (0.409, _NAN), "Adam": (0.384, _NAN),
                                "SGD": (0.332, _NAN)},
}
_NGM_CELLS = tuple(Cell(b, label, "ngm_avg_sg", 100 * m, 100 * sd) for b, rows in _NGM_SG.items()
                   for label, (m, sd) in rows.items()) + tuple(
    Cell(b, "NGM-SGD", metric, mean, sd) for b, rows in (
        ("ngm_split_cifar10", (("ngm_avg_acc", 90.630, 1.576), ("ngm_avg_min_acc", 79.485, 3.875),
                               ("ngm_wc_acc", 80.880, 3.349))),
        ("ngm_split_mini_imagenet", (("ngm_avg_acc", 48.312, 2.289), ("ngm_avg_min_acc", 33.165, 2.435),
                                     ("ngm_wc_acc", 36.040, 2.058)))) for metric, mean, sd in rows)
#: NGM-SGD's reference numbers (``clenv reproduce ngm``).
NGM_TABLE = PaperTable("tablengm", "NGM-SGD: the stability gap under joint training (task-1 accuracy, the scripts' block "
               "arithmetic; arXiv 2507.14056 v3 Table 1 and a secondary summary)", "stability",
               tuple((b, metric, head) for b in _NGM_SG for metric, head in _NGM_METRICS), _NGM_METHODS,
               _NGM_CELLS, note="runs with clenv.Evaluation(stability_every=1, ngm_compat=True); the paper's spreads "
               "are delta-method error bars over 5 seeds (spec 1.6), '-' where the sources give none",
               paper="NGM-SGD", seeds=5)

# ---------------------------------------------------------------------------------------------------- FTN
# Functional Task Networks (002_b6d509c9f1140765.txt), Tables 1 and 2: mean +- std over 8 seeds, mask-recovery
# protocol, as printed (fractions; MSE). Table 4 decomposes the prior tasks' loss against FixedMask's stored masks.
_FTN_METHODS = (_m("NoMask", "no_mask"), _m("FixedMask", "fixed_mask"), _m("KWTA", "kwta"),
                _m("FTN-Fast", "ftn_fast"), _m("FTN-Slow", "ftn_slow"), _m("EWC", "ftn_ewc"),
                _m("SupSup", "supsup"), _m("SupSup-Wide", "supsup_wide"))
_FTN_T1 = """
NoMask	0.666 (0.031)	0.466 (0.046)
FixedMask	0.938 (0.014)	0.000 (0.000)
KWTA	0.640 (0.062)	0.152 (0.052)
FTN-Fast	0.899 (0.037)	0.042 (0.045)
FTN-Slow	0.896 (0.025)	0.014 (0.025)
EWC	0.665 (0.031)	0.463 (0.046)
SupSup	0.645 (0.028)	0.000 (0.000)
SupSup-Wide	0.660 (0.020)	0.000 (0.000)
"""
_FTN_T2 = """
NoMask	0.312 (0.050)	0.054 (0.071)
FixedMask	0.006 (0.002)	0.000 (0.000)
KWTA	0.589 (0.316)	0.028 (0.038)
FTN-Fast	0.126 (0.057)	0.013 (0.017)
FTN-Slow	0.167 (0.075)	0.003 (0.007)
EWC	0.311 (0.050)	0.054 (0.071)
SupSup	0.206 (0.029)	0.000 (0.000)
SupSup-Wide	0.216 (0.027)	0.101 (0.123)
"""
#: Table 4: (overlap, recall) per method, classification ACC drops and regression MSE excesses.
FTN_TABLE4 = {
    "concept_shift_classification": {"NoMask": (0.430, 0.000), "EWC": (0.428, 0.000), "KWTA": (0.154, 0.131),
                                     "FTN-Fast": (0.016, 0.010), "FTN-Slow": (-0.004, 0.021)},
    "concept_shift_regression": {"NoMask": (0.461, 0.000), "EWC": (0.459, 0.000), "KWTA": (0.272, 0.267),
                                 "FTN-Fast": (0.098, 0.032), "FTN-Slow": (0.110, 0.022)},
}


def _ftn_table(id, title, bench, metric, rows):
    cols = ((bench, metric, metric.upper()), (bench, "fm", "FM"))
    return PaperTable(id, title, "masks", cols, _FTN_METHODS, tuple(parse_rows(rows, cols)),
                      note="mask-recovery protocol (clenv.Evaluation(masks=True)); FM: peak minus final on prior "
                      "tasks (for MSE: final minus lowest); the stored-mask numbers and Table 4's decomposition are "
                      "printed beside them", paper="FTN", seeds=8, percent=False)


FTN_TABLES = (
    _ftn_table("ftn_table1", "FTN Experiment 1, classification (Table 1)", "concept_shift_classification", "acc",
               _FTN_T1),
    _ftn_table("ftn_table2", "FTN Experiment 1, regression (Table 2)", "concept_shift_regression", "mse", _FTN_T2),
)

# FTN Experiment 2, Table 3 (002_b6d509c9f1140765.txt, line 129-139): per-token CE on the held-out test split, mean +-
# std over 7 seeds, STORED (each task's training mask) and RECONFIG (the mask recovered from a support batch).
_STYLE = "style_shift_text"
_FTN_T3 = """
LoRA-Naive	8.22 (0.42)	7.37 (0.50)	8.22 (0.42)	7.37 (0.50)
LoRA-Fixed	1.39 (0.09)	0.00 (0.00)	1.39 (0.09)	0.00 (0.00)
LoRA-Bank	1.49 (0.22)	0.11 (0.30)	1.42 (0.09)	0.04 (0.11)
LoRA-FTN	1.71 (0.16)	0.34 (0.11)	1.51 (0.08)	0.07 (0.03)
"""
_FTN3_COLS = ((_STYLE, "ce_stored", "STORED CE"), (_STYLE, "fm_stored", "STORED FM"), (_STYLE, "ce", "RECONFIG CE"),
              (_STYLE, "fm", "RECONFIG FM"))
FTN_TABLES += (PaperTable(
    "ftn_table3", "FTN Experiment 2, block-sequential LoRA fine-tuning on six style tasks (Table 3)", "masks",
    _FTN3_COLS, (_m("LoRA-Naive", "lora_naive"), _m("LoRA-Fixed", "lora_fixed_mask"), _m("LoRA-Bank", "lora_bank"),
                 _m("LoRA-FTN", "lora_ftn")), tuple(parse_rows(_FTN_T3, _FTN3_COLS)),
    note="per-token cross-entropy (nats) on the held-out test split; STORED: each task's training-time mask, RECONFIG: "
    "the mask recovered from the support batch without the task's identity; FM: the rise of the final CE above the "
    "lowest CE a prior task reached (positive: forgetting); the paper adapts a pretrained distilgpt2, ours the agents' "
    "base_model", paper="FTN", seeds=7, percent=False),)

# ---------------------------------------------------------------------------------------------------- NeuroLoRA
# NeuroLoRA (003_2885b6bbae2a6b4c.txt), Llama-3-8B on MMLU / ScienceQA / GSM8K, accuracies in percent, no spreads
# printed (NaN here): Table 2 (line 201-205), Table 3 (line 234-239), Table 4 (line 247-257). Only the columns that do
# not name the paper's benchmarks have a counterpart on StyleShiftText-v0: averages, BWT, relative degradations.
def _cells(bench: str, rows: dict[str, dict[str, float]]) -> tuple[Cell, ...]:
    return tuple(Cell(bench, label, metric, value, _NAN) for label, values in rows.items()
                 for metric, value in values.items())


#: The per-task columns of the sequential table: the final row of the accuracy matrix, one per task position.
FINAL_TASK_METRICS = tuple(f"final_acc_task{j}" for j in range(6))
_NL_SEQ = (_m("LoRA-Seq", "lora"), _m("EWC+LoRA", "ewc_lora"), _m("FlyLoRA-Seq", "flylora"),
           _m("NeuroLoRA-Seq", "neurolora"))
_NL_MERGE = (_m("LoRA", "lora"), _m("FlyLoRA", "flylora"), _m("NeuroLoRA", "neurolora"))
_NL_ABLATION = (_m("NeuroLoRA (full)", "neurolora"), _m("w/o L_orth (lambda=0)", "neurolora_no_orth"),
                _m("w/o Modulation Gate", "neurolora_no_gate"), _m("w/ Static Gate (m_x = const)",
                                                                    "neurolora_static_gate"),
                _m("w/ Trainable A", "neurolora_trainable_a"), _m("d_h = 32", "neurolora", gate_hidden=32),
                _m("d_h = 128", "neurolora", gate_hidden=128))
#: The merging protocol's metrics (``clenv reproduce neurolora_table2``; clenv.app.reproduce.merge_summary).
MERGE_COLUMNS = (("merge_indiv_acc", "Avg (Indiv.)"), ("merge_ta_acc", "Task Arith."), ("merge_ta_drop", "TA rel."),
                 ("merge_ties_acc", "TIES"), ("merge_ties_drop", "TIES rel."), ("merge_ta_scale", "TA λ"),
                 ("merge_ties_scale", "TIES λ"))
NEUROLORA_TABLES = (
    PaperTable("neurolora_table3", "NeuroLoRA Table 3: sequential fine-tuning over the six style tasks, final per-task "
               "accuracy, Avg and BWT", "forgetting",
               tuple((_STYLE, m, f"task {j}") for j, m in enumerate(FINAL_TASK_METRICS))
               + ((_STYLE, "acc", "Avg"), (_STYLE, "bwt", "BWT")), _NL_SEQ,
               _cells(_STYLE, {"LoRA-Seq": {"acc": 63.8, "bwt": -11.3}, "EWC+LoRA": {"acc": 66.1, "bwt": -7.5},
                               "FlyLoRA-Seq": {"acc": 69.1, "bwt": -4.3},
                               "NeuroLoRA-Seq": {"acc": 71.5, "bwt": -2.6}}),
               note="R[i, j]: per-token accuracy on task j's held-out test split after training through task i; "
               "task j columns are R[T-1, j] (the task names print below), Avg = ACC = mean R[T-1, :], BWT = mean over "
               "j < T-1 of R[T-1, j] - R[j, j]; the paper's Avg is over MMLU / SciQA / GSM8K (3 tasks, 3 epochs each)",
               paper="NeuroLoRA", seeds=0),
    PaperTable("neurolora_table2", "NeuroLoRA Table 2: adapters trained independently per task, merged by Task "
               "Arithmetic and TIES", "merging", tuple((_STYLE, m, h) for m, h in MERGE_COLUMNS), _NL_MERGE,
               _cells(_STYLE, {"LoRA": {"merge_indiv_acc": 71.5, "merge_ta_acc": 58.2, "merge_ta_drop": -18.6,
                                        "merge_ties_acc": 60.5, "merge_ties_drop": -15.4},
                               "FlyLoRA": {"merge_indiv_acc": 72.6, "merge_ta_acc": 68.9, "merge_ta_drop": -5.1,
                                           "merge_ties_acc": 69.6, "merge_ties_drop": -4.1},
                               "NeuroLoRA": {"merge_indiv_acc": 74.3, "merge_ta_acc": 71.8, "merge_ta_drop": -3.4,
                                             "merge_ties_acc": 72.3, "merge_ties_drop": -2.7}}),
               note="one single-task stream per task (tasks=(name,)), the adapters merged in a fresh agent of the same "
               "seed; accuracies: per-token accuracy on each task's held-out test split, averaged over the tasks; rel.: "
               "(merged - individual) / individual; λ: the coefficient picked on the support split (never the test "
               "split) from TA_SCALES / TIES_SCALES, TIES at density 0.2", paper="NeuroLoRA", seeds=0),
    PaperTable("neurolora_table4", "NeuroLoRA Table 4: ablations, single-task accuracy averaged over the six style "
               "tasks", "merging", ((_STYLE, "merge_indiv_acc", "single-task avg"),), _NL_ABLATION,
               _cells(_STYLE, {"NeuroLoRA (full)": {"merge_indiv_acc": 61.2},
                               "w/o L_orth (lambda=0)": {"merge_indiv_acc": 60.1},
                               "w/o Modulation Gate": {"merge_indiv_acc": 58.7},
                               "w/ Static Gate (m_x = const)": {"merge_indiv_acc": 59.4},
                               "w/ Trainable A": {"merge_indiv_acc": 57.8}, "d_h = 32": {"merge_indiv_acc": 60.6},
                               "d_h = 128": {"merge_indiv_acc": 61.1}}),
               note="the paper ablates on GSM8K alone; ours is the mean over the six tasks of an adapter trained on "
               "that task alone (Table 2's single-task runs), the Δ below is against the first row", paper="NeuroLoRA",
               seeds=0),
)
# ---------------------------------------------------------------------------------------------------- adapter memories
# 004_49f6201e6e679480.txt Table 1 (line 93-101): one method, the metrics as columns, mean +- std over 3 seeds, percent.
_AM_BENCHES = ("memory_c100_20s", "memory_c100_50s", "memory_tinet_50s", "memory_tinet_100s")
MEMORY_COLUMNS = (("faa_gt", "FAA_GT"), ("faa_til_bayespcn", "FAA_TIL(BPCN)"), ("d_til_bayespcn", "D_TIL(BPCN)"),
                  ("faa_til_hopfield", "FAA_TIL(H)"), ("d_til_hopfield", "D_TIL(H)"), ("task_acc", "MTS Task Acc."),
                  ("faa_mts_hopfield", "FAA_MTS(H)"), ("d_mts_hopfield", "D_MTS(H)"))
_AM_T1 = """
faa_gt	97.29 (0.30)	97.79 (0.20)	91.56 (0.48)	95.09 (0.40)
faa_til_bayespcn	96.50 (0.64)	97.24 (0.73)	90.46 (0.35)	93.28 (0.35)
d_til_bayespcn	0.32 (0.12)	0.62 (0.32)	1.16 (0.57)	1.71 (0.20)
faa_til_hopfield	97.12 (0.44)	97.76 (0.47)	91.82 (0.28)	94.77 (0.48)
d_til_hopfield	0.0026 (0.01)	0.04 (0.07)	-0.21 (0.10)	-0.30 (0.19)
task_acc	91.47 (0.21)	91.42 (0.28)	84.42 (0.49)	83.27 (0.18)
faa_mts_hopfield	91.34 (0.52)	94.28 (0.15)	83.14 (0.16)	88.69 (0.57)
d_mts_hopfield	5.95 (0.022)	3.50 (3.50)	8.35 (0.53)	6.47 (0.73)
"""


def _memory_cells(text: str) -> tuple[Cell, ...]:
    cells = []
    for line in text.strip().splitlines():
        metric, *values = line.split("\t")
        for bench, value in zip(_AM_BENCHES, values):
            mean, spread = value.replace(")", "").split(" (")
            cells.append(Cell(bench, "Adapter memory", metric, float(mean), float(spread)))
    return tuple(cells)


MEMORY_TABLES = (PaperTable(
    "memory_table1", "Adapter memories Table 1: TIL / MTS accuracy with adapters recalled from BayesPCN and Hopfield "
    "memories against the ground truth", "memory",
    tuple((b, m, h) for b in _AM_BENCHES for m, h in MEMORY_COLUMNS), (_m("Adapter memory", "adapter_memory"),),
    _memory_cells(_AM_T1),
    note="rank-8 LoRA on query and value plus a task head per task on a frozen ViT, written to the exact store "
    "(FAA_GT), a Modern Hopfield memory (beta 25) and BayesPCN at each task end; D = FAA_GT - FAA (recalled); MTS: "
    "a task-predictor adapter picks the key; the paper adapts an ImageNet ViT on CIFAR-100 / Tiny-ImageNet, ours "
    "the in-repo ViT pretrained on another dataset (agents/adapters/vit.py)", paper="adapter memories", seeds=3),)

#: The merging protocol's coefficient grids, each picked by the mean support-split accuracy over the tasks.
TA_SCALES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TIES_SCALES = (0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8)
TIES_DENSITY = 0.2
TABLES: dict[str, PaperTable] = {t.id: t for t in (*_TABLES, PLASTICITY_TABLE, NGM_TABLE, *FTN_TABLES,
                                                    *NEUROLORA_TABLES, *MEMORY_TABLES)}


def normalize_table_id(text: str) -> str:
    """``"1"``, ``"T1"``, ``"table1"``, ``"Table 1"`` -> ``"table1"``; a table's own id (``"ftn_table1"``,
    ``"FTN-Table1"``) is kept."""
    own = re.sub(r"[\s-]", "_", str(text).strip().lower())
    if own in TABLES:
        return own
    digits = re.sub(r"^(table|tab|t)", "", re.sub(r"[\s_-]", "", str(text).lower()))
    return f"table{digits}"


def table(table_id: str) -> PaperTable:
    key = normalize_table_id(table_id)
    if key not in TABLES:
        raise KeyError(f"no reference data for {table_id!r}; tables: {', '.join(table_ids())}")
    return TABLES[key]


def table_ids() -> list[str]:
    return list(TABLES)
