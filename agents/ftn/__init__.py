"""Functional Task Networks (002_b6d509c9f1140765.txt): the per-neuron MLP grid (:mod:`agents.ftn.network`) and its
agents (:mod:`agents.ftn.agent`); the mask configurer is shared machinery (:mod:`agents.common.masks`)."""

from agents.ftn.agent import (FixedMaskAgent, FTNAgent, FTNEWCAgent, FTNFastAgent, FTNSlowAgent, KWTAAgent,
                              NoMaskAgent, SupSupAgent, SupSupWideAgent)
from agents.ftn.network import FTNNetwork

__all__ = ["FTNNetwork", "FTNAgent", "FTNSlowAgent", "FTNFastAgent", "KWTAAgent", "FixedMaskAgent", "NoMaskAgent",
           "FTNEWCAgent", "SupSupAgent", "SupSupWideAgent"]
