"""Plasticity interventions as per-gradient-step hooks on any torch optimiser (no RL library imported here).

:func:`attach_interventions` finds every :class:`agents.backbones.Backbone` inside a module and registers
``optimizer.register_step_post_hook``: after every optimiser step each intervention runs with the backbones and the
optimiser at hand (so a unit reset can also zero Adam's moments). tianshou's ``PlasticityOptimizerFactory``
(:mod:`agents.rl.hooks`) and the Stable-Baselines3 ``InterventionCallback`` (:mod:`agents.rl.sb3_agents`) both wire
the same objects through it.

Interventions read unit activity from the last forward pass that built a graph in train mode (the loss forward of
the gradient step just taken); target-network and no-grad forwards are ignored.

- :class:`ReDoHook` (Sokar et al. 2023): every ``every`` steps reset units whose normalised activity
  ``s_i = mean|h_i| / mean_j mean|h_j|`` is at most ``tau`` (the score of :mod:`agents.redo`).
- :class:`CBPHook` (Dohare et al. 2024): the generate-and-test of :mod:`agents.cbp`, with the removed units' mean
  contribution moved into the next layer's bias.
- :class:`ShrinkPerturbHook` (Ash & Adams 2020): every ``every`` steps ``theta <- shrink * theta + noise * eps``.

The mechanisms are the supervised agents' own (one implementation each); unit resets go through
:func:`agents.common.units.reinit_units` (fresh incoming weights, zero outgoing weights, zeroed optimiser moments of
exactly those slices).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from agents.backbones import Backbone, UnitLayer

__all__ = ["Intervention", "ReDoHook", "CBPHook", "ShrinkPerturbHook", "make_intervention", "attach_interventions",
           "INTERVENTIONS"]


class Intervention:
    """One per-gradient-step intervention. ``attach`` is called once per created optimiser; ``after_step`` after
    every optimiser step. ``stats`` accumulates what it did (e.g. units reset), for logging."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.stats: dict[str, float] = {}
        self.layers: list[UnitLayer] = []
        self.backbones: list[Backbone] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.num_steps = 0
        self._last: dict[int, torch.Tensor] = {}

    def attach(self, backbones: list[Backbone], optimizer: torch.optim.Optimizer) -> None:
        self.backbones = list(backbones)
        self.layers = [layer for b in self.backbones for layer in b.unit_layers]
        self.optimizer = optimizer
        for i, layer in enumerate(self.layers):
            layer.activation.register_forward_hook(self._recorder(i))

    def _recorder(self, i: int):
        def hook(module, inputs, output):
            if module.training and output.requires_grad:
                self._last[i] = output.detach()
        return hook

    def activity(self, i: int) -> torch.Tensor | None:
        """Per-sample, per-unit |h| (B, units) of layer ``i`` from the last recorded training forward pass."""
        h = self._last.get(i)
        return None if h is None else self.layers[i].unit_activity(h)

    def after_step(self) -> None:
        self.num_steps += 1
        self.step()

    def step(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What changes during a run and decides later steps (the generator is saved by the agent's base)."""
        return {"num_steps": self.num_steps, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.num_steps, self.stats = int(state["num_steps"]), dict(state["stats"])

    def _reset(self, i: int, idx: torch.Tensor) -> int:
        from agents.common.units import reinit_units

        n = reinit_units(self.layers[i], idx, self.optimizer, generator=self.generator)
        self.stats["units_reset"] = self.stats.get("units_reset", 0) + n
        return n


class ReDoHook(Intervention):
    """Recycle dormant units: every ``every`` gradient steps, reset units whose ReDo score
    (:func:`agents.redo.dormant_scores`) is at most ``tau``."""

    def __init__(self, tau: float = 0.1, every: int = 1000, seed: int = 0):
        super().__init__(seed)
        if tau < 0 or int(every) < 1:
            raise ValueError(f"ReDo needs tau >= 0 and every >= 1, got tau={tau}, every={every}")
        self.tau, self.every = float(tau), int(every)
        self.stats = {"redo_calls": 0, "units_reset": 0}

    def dormant(self, i: int) -> torch.Tensor:
        """Indices of the dormant units of layer ``i`` (empty before any forward pass)."""
        from agents.redo import dormant_scores

        h = self._last.get(i)
        if h is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(dormant_scores(self.layers[i], h) <= self.tau).flatten()

    def step(self) -> None:
        if self.num_steps % self.every:
            return
        self.stats["redo_calls"] = self.stats.get("redo_calls", 0) + 1
        for i in range(len(self.layers)):
            self._reset(i, self.dormant(i))


class CBPHook(Intervention):
    """Continual backpropagation (:class:`agents.cbp.GenerateAndTest`, the MLP algorithm with the removed units'
    mean contribution moved into the next layer's bias) after every gradient step."""

    def __init__(self, replacement_rate: float = 1e-4, decay: float = 0.99, maturity: int = 100, seed: int = 0):
        super().__init__(seed)
        self.settings = dict(replacement_rate=replacement_rate, decay_rate=decay, maturity_threshold=maturity)
        if not 0 <= replacement_rate <= 1 or not 0 <= decay < 1 or int(maturity) < 0:
            raise ValueError("CBP needs 0 <= replacement_rate <= 1, 0 <= decay < 1, maturity >= 0")
        self.stats = {"units_reset": 0}
        self.gnt = None

    def attach(self, backbones, optimizer):
        from agents.cbp import GenerateAndTest

        super().attach(backbones, optimizer)
        self.gnt = GenerateAndTest(self.layers, absorb_mean=True, generator=self.generator, **self.settings)

    @property
    def age(self) -> list[torch.Tensor]:
        return [st["age"] for st in self.gnt.states]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "gnt": None if self.gnt is None else self.gnt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.gnt is not None and state.get("gnt") is not None:
            self.gnt.load_state_dict(state["gnt"])

    def step(self) -> None:
        replaced = self.gnt.step([self._last.get(i) for i in range(len(self.layers))], self.optimizer)
        self.stats["units_reset"] += sum(int(idx.numel()) for idx in replaced.values())


class ShrinkPerturbHook(Intervention):
    """Every ``every`` gradient steps: ``theta <- shrink * theta + noise * N(0, 1)`` on every backbone parameter."""

    def __init__(self, shrink: float = 0.999, noise: float = 1e-4, every: int = 1, seed: int = 0):
        super().__init__(seed)
        if not 0 < shrink <= 1 or noise < 0 or int(every) < 1:
            raise ValueError("Shrink & Perturb needs 0 < shrink <= 1, noise >= 0, every >= 1")
        self.shrink, self.noise, self.every = float(shrink), float(noise), int(every)
        self.stats = {"shrink_perturb_calls": 0}

    @torch.no_grad()
    def step(self) -> None:
        if self.num_steps % self.every:
            return
        for b in self.backbones:
            for p in b.parameters():
                p.mul_(self.shrink)
                if self.noise > 0:
                    eps = torch.randn(p.shape, generator=self.generator).to(p.device)
                    p.add_(self.noise * eps)
        self.stats["shrink_perturb_calls"] = self.stats.get("shrink_perturb_calls", 0) + 1


INTERVENTIONS = {"redo": ReDoHook, "cbp": CBPHook, "shrink_perturb": ShrinkPerturbHook}


def make_intervention(name: str, seed: int = 0, **kwargs) -> Intervention:
    """``"redo"``, ``"cbp"`` or ``"shrink_perturb"`` with its keyword arguments."""
    if name not in INTERVENTIONS:
        raise ValueError(f"unknown intervention {name!r}; expected one of {sorted(INTERVENTIONS)}")
    return INTERVENTIONS[name](seed=seed, **kwargs)


def attach_interventions(interventions: list[Intervention], module: nn.Module, optimizer: torch.optim.Optimizer):
    """Attach ``interventions`` to every :class:`agents.backbones.Backbone` inside ``module`` and run them after
    every ``optimizer.step()`` (a torch step post-hook): the one wiring tianshou's optimiser factory and the
    Stable-Baselines3 callbacks (:mod:`agents.rl.sb3_agents`) share. ``module`` must not contain a target network,
    whose units the interventions would then reset too. Returns the hook handle."""
    backbones = [m for m in module.modules() if isinstance(m, Backbone)]
    if not backbones:
        raise ValueError(f"no agents.backbones.Backbone inside {type(module).__name__}: the interventions read and "
                         "reset the units a Backbone describes")
    for iv in interventions:
        iv.attach(backbones, optimizer)

    def post_hook(opt, args, kwargs):
        for iv in interventions:
            iv.after_step()

    return optimizer.register_step_post_hook(post_hook)
