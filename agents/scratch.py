"""Scratch: the base learner reinitialised (network and optimiser) at every task switch.

The reference point for plasticity in NeuMoSync (Table 1, "Scratch"): it has full plasticity by construction and no
transfer between tasks.
"""

from __future__ import annotations

import torch

from agents.base import SupervisedAgent, seeded


class ScratchAgent(SupervisedAgent):
    NAME = "scratch"

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.num_updates == 0:
            return  # already fresh at the first task
        # A different, seeded initialisation per task: same seed and task order give the same networks.
        with seeded(int(self.hparams["seed"]) * 100003 + self.num_updates):
            self.network = self.build_network().to(self.device)
        self.reset_optimizer()
