"""NeuMoSync: end-to-end neuromodulatory control for plasticity (``agents.make("neumosync", env)``).

See :mod:`agents.neumosync.agent` for the method, :mod:`agents.neumosync.controller` for the NeuroSync variants and
:mod:`agents.neumosync.layers` for the modulated layers (one stacked matmul for theta and phi).
"""

from agents.neumosync.agent import NeuMoSyncAgent, NeuMoSyncNetwork
from agents.neumosync.controller import CONTROLLERS, build_controller
from agents.neumosync.layers import COEFFICIENTS, ModulatedConv2d, ModulatedLinear, modulate_backbone

__all__ = ["NeuMoSyncAgent", "NeuMoSyncNetwork", "CONTROLLERS", "build_controller", "COEFFICIENTS",
           "ModulatedLinear", "ModulatedConv2d", "modulate_backbone"]
