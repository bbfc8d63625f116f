"""Hard Attention to the Task, HAT (Serra, Suris, Miron and Karatzoglou, ICML 2018). Task-aware.

Each hidden unit layer l has a task embedding e_l^t; its units' outputs are multiplied by the gate
``a_l^t = sigmoid(s * e_l^t)`` (both branches of a CReLU / Fourier unit, every position of a conv channel).
``s`` is annealed within a task from 1/s_max to s_max over the task's steps (the paper anneals per epoch; a stream
learner sees each task once) and is s_max whenever the agent is not training. After each task the cumulative gate
``a_l^{<=t} = max(a_l^{<=t-1}, sigmoid(s_max e_l^t))`` is kept, and while learning later tasks the gradient of every
weight w[i, j] is scaled by ``1 - min(a_l^{<=t}[i], a_{l-1}^{<=t}[j])`` (bias and norm parameters by
``1 - a_l^{<=t}[i]``), so units that earlier tasks rely on stop changing. The loss adds
``lambda * sum a^t (1 - a^{<=t-1}) / sum (1 - a^{<=t-1})`` (capacity regulariser); embedding gradients are
compensated for the annealing and embeddings clamped to [-6, 6] (the reference's tricks).

The task id comes from a task-aware env's observation (``gym.make(..., task_aware=True)`` gives ``{"x", "task_id"}``)
or from ``on_task_switch``; without either the agent raises. Each task has its own output head (``multi_head``,
the usual HAT setting when the task id is known). The optimiser state is reset at each task switch, so Adam's moments
from the previous task cannot move weights whose gradients are now masked.

Defaults from NeuMoSync Table 26: Adam, lr 1e-3, s_max 400, lambda 0.1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.base import SupervisedAgent

__all__ = ["HATAgent"]


def _apply_mask(module, inputs, output):
    # A module-level hook reading the gate from the module itself, so deep copies stay independent.
    mask = getattr(module, "hat_mask", None)
    if mask is None:
        return output
    shape = (1, -1) + (1,) * (output.dim() - 2)
    return output * mask.view(shape)


class HATAgent(SupervisedAgent):
    """Task-gated units with gradients of earlier tasks' units blocked."""

    NAME = "hat"
    DEFAULTS = dict(optimizer="adam", lr=1e-3, s_max=400.0, hat_lambda=0.1, multi_head=True, anneal_steps=None,
                    clamp_embedding=6.0)

    @classmethod
    def read_env(cls, env) -> dict:
        spec = super().read_env(env)
        u = getattr(env, "unwrapped", env)
        spt = getattr(u, "steps_per_task", None)
        spec["steps_per_task"] = int(spt(0)) if callable(spt) else None
        return spec

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.cumulative = [torch.zeros(l.num_units, device=self.device) for l in self.network.unit_layers]
        self.step_in_task = 0
        self._obs_task: int | None = None
        self._train_gates: list[torch.Tensor] | None = None
        self._train_s = float(self.hparams["s_max"])

    def build_network(self):
        net = super().build_network()
        t = max(1, int(self.env_spec["num_tasks"]))
        net.hat_embeddings = nn.ModuleList(nn.Embedding(t, l.num_units) for l in net.unit_layers)
        for emb in net.hat_embeddings:
            nn.init.normal_(emb.weight, 0.0, 1.0)
        if self.hparams["multi_head"]:
            h = net.head
            net.task_heads = nn.ModuleList(nn.Linear(h.in_features, h.out_features) for _ in range(t))
        for layer in net.unit_layers:
            layer.activation.register_forward_hook(_apply_mask)
        return net

    # ------------------------------------------------------------------ task id
    def preprocess(self, obs):
        if isinstance(obs, dict) and "task_id" in obs:
            self._obs_task = int(obs["task_id"])
        return super().preprocess(obs)

    def current_task(self) -> int:
        t = self._obs_task if self._obs_task is not None else self.task_id
        if t is None:
            raise RuntimeError("HAT needs the task id: make the env with task_aware=True or call on_task_switch(k)")
        if not 0 <= int(t) < len(self.network.hat_embeddings[0].weight):
            raise ValueError(f"task id {t} out of range for {len(self.network.hat_embeddings[0].weight)} tasks")
        return int(t)

    def on_task_switch(self, task_id) -> None:
        if self.num_updates > 0 and self.step_in_task > 0:
            self._consolidate(self.current_task())
            self.reset_optimizer()
        self.step_in_task = 0
        super().on_task_switch(task_id)
        self._obs_task = None if task_id is None else int(task_id)

    @torch.no_grad()
    def _consolidate(self, task: int) -> None:
        for i, emb in enumerate(self.network.hat_embeddings):
            gate = torch.sigmoid(self.hparams["s_max"] * emb.weight[task])
            self.cumulative[i] = torch.maximum(self.cumulative[i], gate)

    # ------------------------------------------------------------------ forward with gates
    def _s(self) -> float:
        s_max = float(self.hparams["s_max"])
        if not (self.network.training and torch.is_grad_enabled()):
            return s_max
        n = self.hparams["anneal_steps"] or self.env_spec.get("steps_per_task") or 1
        frac = min(1.0, self.step_in_task / max(1, int(n) - 1))
        return 1.0 / s_max + (s_max - 1.0 / s_max) * frac

    def gates(self, task: int, s: float) -> list[torch.Tensor]:
        idx = torch.tensor([task], device=self.device)
        return [torch.sigmoid(s * emb(idx)[0]) for emb in self.network.hat_embeddings]

    def forward(self, x):
        task, s = self.current_task(), self._s()
        gates = self.gates(task, s)
        for layer, g in zip(self.network.unit_layers, gates):
            k = getattr(layer.activation, "width_factor", 1)
            layer.activation.hat_mask = g.repeat(k) if k > 1 else g
        if self.records_statistics:
            self._train_gates, self._train_s = gates, s
        try:
            feats = self.network.body(x)
        finally:
            for layer in self.network.unit_layers:  # no graph tensors left on modules (deepcopy, state_dict)
                layer.activation.hat_mask = None
        head = self.network.task_heads[task] if self.hparams["multi_head"] else self.network.head
        return head(feats)

    def regularizer(self):
        reg = super().regularizer()
        if not self._train_gates:
            return reg
        num = sum((g * (1 - c)).sum() for g, c in zip(self._train_gates, self.cumulative))
        den = sum((1 - c).sum() for c in self.cumulative)
        return reg + self.hparams["hat_lambda"] * num / den.clamp_min(1e-12)

    # ------------------------------------------------------------------ gradient masking
    def _input_gate(self, layer) -> torch.Tensor | None:
        """Cumulative gate per input column of ``layer.incoming`` (None for the first layer)."""
        for prev, c in zip(self.network.unit_layers, self.cumulative):
            if prev.outgoing is layer.incoming:
                return self._columns(prev, c, layer.incoming.weight.shape[1])
        return None

    @staticmethod
    def _columns(layer, gate, width) -> torch.Tensor:
        col = torch.zeros(width, device=gate.device)
        out_map = layer.out_map.to(gate.device)
        col[out_map.reshape(-1)] = gate[:, None].expand_as(out_map).reshape(-1)
        return col

    @torch.no_grad()
    def before_update(self) -> None:
        super().before_update()
        if self.task_id is not None or self._obs_task is not None:
            for layer, c in zip(self.network.unit_layers, self.cumulative):
                w = layer.incoming.weight
                extra = (1,) * (w.dim() - 2)
                inp = self._input_gate(layer)
                block = c.view(-1, 1, *extra) if inp is None else torch.minimum(c.view(-1, 1, *extra),
                                                                               inp.view(1, -1, *extra))
                if w.grad is not None:
                    w.grad.mul_(1 - block)
                for p in (layer.incoming.bias, getattr(layer.norm, "weight", None), getattr(layer.norm, "bias", None)):
                    if p is not None and p.grad is not None and p.shape[0] == layer.num_units:
                        p.grad.mul_(1 - c)
            if not self.hparams["multi_head"] and self.network.unit_layers:
                last, c = self.network.unit_layers[-1], self.cumulative[-1]
                head = self.network.head
                if head.weight.grad is not None and last.outgoing is head:
                    head.weight.grad.mul_(1 - self._columns(last, c, head.weight.shape[1])[None])
        # Compensate the embeddings' gradient for the annealed slope (Serra et al.'s reference).
        s, s_max = self._train_s, float(self.hparams["s_max"])
        for emb in self.network.hat_embeddings:
            if emb.weight.grad is not None:
                e = emb.weight.data
                num = torch.cosh(torch.clamp(s * e, -50, 50)) + 1
                den = torch.cosh(e) + 1
                emb.weight.grad.mul_(s_max / s * num / den)

    def after_update(self, x, y):
        super().after_update(x, y)
        self.step_in_task += 1
        self._train_gates = None
        lim = float(self.hparams["clamp_embedding"])
        with torch.no_grad():
            for emb in self.network.hat_embeddings:
                emb.weight.clamp_(-lim, lim)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cumulative": self.cumulative, "step_in_task": self.step_in_task}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cumulative = [c.clone() for c in state.get("cumulative", self.cumulative)]
        self.step_in_task = state.get("step_in_task", 0)
