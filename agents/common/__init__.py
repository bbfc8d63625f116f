"""Pieces shared by several agents, written once: unit reinitialisation (CBP, ReDo, NeuMoSync), diagonal Fisher
estimation (EWC), the reservoir replay buffer (ER, A-GEM) and the meta-learning task sampler (MAML, ANML)."""

from agents.common.fisher import diagonal_fisher
from agents.common.replay import ReservoirBuffer
from agents.common.units import fresh_incoming, reinit_units, unit_columns, zero_optimizer_slices

__all__ = ["diagonal_fisher", "ReservoirBuffer", "reinit_units", "fresh_incoming", "unit_columns",
           "zero_optimizer_slices"]
