"""Task adapters stored in associative memories and recalled to switch tasks (004_49f6201e6e679480.txt, Sections 3-4,
Algorithms 1-4, Appendix A.2).

:class:`AdapterMemoryAgent` (``agents.make("adapter_memory", env)``) freezes a ViT (:mod:`agents.adapters.vit`:
pretrained here on another dataset; ``base_model="random"`` for a randomly initialised one) and trains, for every
task of a class-split stream, one adapter: rank-8 LoRA on every block's ``query`` and ``value`` projections
(:mod:`agents.adapters.layer`, the same layer every adapter agent uses) and the task's own classification head
(:class:`TaskHead`). The paper's settings are the defaults: 3 epochs per task (the stream's ``epochs_per_task``),
AdamW with weight decay 0.1 and a learning rate decaying from 0.005 to 0.0001 within each task (cosine; the paper
says "decay" without the shape), a fresh adapter (new random A, B = 0, a new head) and a fresh optimiser per task.

**Writes.** When a task ends (at the next task's switch, or when :meth:`AdapterMemoryAgent.commit_task` is called;
the :class:`clenv.probes.AdapterRecall` probe calls it for the last task), the task's adapter vector
(:func:`~agents.adapters.memory.layout.adapter_vector`: the LoRA A and B of every adapted layer in module order, then
the head's weight and bias) is written to every memory in ``memories``: ``"exact"`` (the ground truth, "adapters from
disk"), ``"hopfield"`` (beta 25) and ``"bayespcn"`` (4 layers, one particle, GELU), each as (key, the rest) with the
key the vector's first 10% (:func:`~agents.adapters.memory.layout.write_adapter`). The paper's value holds the q / v
adapters only; ours holds the head too, because the task-incremental protocol needs a head per task and the head is
as task-specific as the adapters (it sits last, so the key is made of adapter entries as in the paper). The agent
keeps each task's key (what the task-incremental protocol is given).

**Reads** (what the probe measures): :meth:`~AdapterMemoryAgent.recalled_adapter` (key (+) memory.read(key)) and
:meth:`~AdapterMemoryAgent.using_adapter`, which installs a vector for the duration of a block and puts the
trained one back. The multi-task-switching protocol adds a task predictor (:meth:`~AdapterMemoryAgent.
fit_task_predictor`): another rank-8 q / v adapter with a head over the tasks, trained on the union of the tasks'
training data for 10 epochs with AdamW from 0.002 decaying to 0.0001 (the paper's meta-task), then
:meth:`~AdapterMemoryAgent.predict_task`.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn as nn

from agents.adapters.layer import adapted_layers, inject_adapters
from agents.adapters.memory.bayespcn import BayesPCNMemory
from agents.adapters.memory.exact import ExactMemory
from agents.adapters.memory.hopfield import HopfieldMemory
from agents.adapters.memory.layout import (adapter_layout, adapter_vector, install_adapter_vector, read_adapter,
                                           write_adapter)
from agents.base import SupervisedAgent, _optimizer, seeded
from agents.common.schedules import schedule_factor

__all__ = ["AdapterMemoryAgent", "TaskHead", "MEMORY_KINDS", "build_memory"]

#: The memories an agent can write to, by name.
MEMORY_KINDS = ("exact", "hopfield", "bayespcn")


def build_memory(kind: str, *, beta: float = 25.0, seed: int = 0):
    """A fresh memory of ``kind`` (:data:`MEMORY_KINDS`) with the paper's settings."""
    if kind == "exact":
        return ExactMemory()
    if kind == "hopfield":
        return HopfieldMemory(beta=beta)
    if kind == "bayespcn":
        return BayesPCNMemory(seed=seed)
    raise ValueError(f"unknown memory {kind!r}; expected one of {MEMORY_KINDS}")


class TaskHead(nn.Module):
    """A task's classification head: a Linear on the base's features, stored with the task's adapter. It declares
    ``MERGE_SPACE = "parameters"``, so the adapter layout (:mod:`agents.adapters.memory.layout`) and the merging code
    treat its weight and bias as adapter state."""

    MERGE_SPACE = "parameters"

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def reset(self, generator: torch.Generator | None) -> None:
        """``nn.Linear``'s initialisation, drawn from ``generator``."""
        bound = 1.0 / math.sqrt(self.linear.in_features)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.linear.weight, a=math.sqrt(5), generator=generator)
            self.linear.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class AdapterMemoryAgent(SupervisedAgent):
    """One LoRA adapter (+ head) per task on a frozen ViT, written to associative memories at each task's end (see
    the module docstring).

    Hyperparameters beyond :class:`~agents.base.SupervisedAgent`'s: ``base_model`` (``"pretrained"``: the cached
    :func:`agents.adapters.vit.pretrained_vit` of the stream's dataset, trained once when missing; ``"random"``; or an
    ``nn.Module`` with ``features(x)`` and a ``dim`` attribute, deep-copied), ``base_seed`` (the pretraining seed),
    ``base_dim``, ``base_depth``, ``base_heads``, ``base_mlp_dim`` (the ViT's size), ``target_modules``, ``rank``,
    ``alpha`` (None: alpha = rank), ``memories`` (a subset of
    :data:`MEMORY_KINDS`), ``beta`` (Hopfield), ``predictor_epochs``, ``predictor_lr``, ``predictor_lr_end``,
    ``predictor_batch_size`` (the task predictor's training).
    The within-task decay is the base agent's ``lr_schedule="cosine"`` with ``lr_schedule_scope="task"`` down to
    ``lr_final``.
    """

    NAME = "adapter_memory"
    DEFAULTS = dict(base_model="pretrained", base_seed=0, base_dim=64, base_depth=4, base_heads=4, base_mlp_dim=128,
                    target_modules=("query", "value"), rank=8, alpha=None, optimizer="adamw", lr=5e-3,
                    lr_schedule="cosine", lr_final=1e-4, lr_schedule_scope="task", weight_decay=0.1, memories=MEMORY_KINDS, beta=25.0, predictor_epochs=10, predictor_lr=2e-3,
                    predictor_lr_end=1e-4, predictor_batch_size=64)

    def __init__(self, env, **hparams):
        memories = tuple(hparams.get("memories", MEMORY_KINDS))
        unknown = [m for m in memories if m not in MEMORY_KINDS]
        if unknown or not memories or "exact" not in memories:
            raise ValueError(f"memories must be a subset of {MEMORY_KINDS} that holds 'exact' (the ground truth the "
                             f"recall is measured against), got {memories!r}")
        hparams["memories"] = memories
        super().__init__(env, **hparams)
        seed = int(self.hparams["seed"])
        self.memories = {m: build_memory(m, beta=float(self.hparams["beta"]), seed=seed) for m in memories}
        self.keys: dict[int, torch.Tensor] = {}
        self.stored_tasks: list[int] = []
        self.layout = adapter_layout(self.network)
        self.predictor: nn.Module | None = None
        self.predictor_tasks: list[int] = []
        self._committed = True  # nothing trained yet

    # ------------------------------------------------------------------ construction
    @classmethod
    def read_env(cls, env) -> dict:
        spec = super().read_env(env)
        u = getattr(env, "unwrapped", env)
        if spec["task_type"] != "classification" or spec["action_type"] != "labels" or len(spec["input_shape"]) != 3:
            raise ValueError(f"{cls.NAME} needs an image classification stream with label actions (a class split "
                             f"such as SplitFashionMNIST-5S-v0), got task_type={spec['task_type']!r}, "
                             f"action_type={spec['action_type']!r}, input shape {spec['input_shape']}")
        spec["dataset"] = str((getattr(u, "config", None) or {}).get("dataset", ""))
        return spec

    def build_base(self) -> nn.Module:
        h, spec = self.hparams, self.env_spec
        base = h["base_model"]
        size = dict(dim=h["base_dim"], depth=h["base_depth"], heads=h["base_heads"], mlp_dim=h["base_mlp_dim"])
        if base == "pretrained":
            from agents.adapters.vit import pretrained_vit

            return pretrained_vit(spec["dataset"], spec["input_shape"], {**size, "seed": int(h["base_seed"])})
        if base in ("random", None):
            from agents.adapters.vit import CompactViT

            return CompactViT(spec["input_shape"], 1, **size)
        if isinstance(base, nn.Module):
            return copy.deepcopy(base)
        raise ValueError(f"base_model must be 'pretrained', 'random' or an nn.Module with features(x) and dim, got "
                         f"{base!r}")

    def _adapt(self, base: nn.Module, outputs: int, generator: torch.Generator) -> nn.Module:
        """``base`` (frozen) with LoRA on ``target_modules`` and a fresh :class:`TaskHead` of ``outputs`` classes."""
        h = self.hparams
        for name in ("features", "dim"):
            if not hasattr(base, name):
                raise TypeError(f"the base model needs features(x) and dim (as agents.adapters.vit.CompactViT has); "
                                f"{type(base).__name__} lacks {name!r}")
        base.requires_grad_(False)
        base.head = TaskHead(int(base.dim), int(outputs))
        base.head.reset(generator)
        alpha = float(h["alpha"] if h["alpha"] is not None else h["rank"])
        inject_adapters(base, h["target_modules"], rank=int(h["rank"]), alpha=alpha, generator=generator)
        base.head.requires_grad_(True)
        return base

    def build_network(self) -> nn.Module:
        self.adapter_generator = torch.Generator().manual_seed(int(self.hparams["seed"]))
        base = self.build_base()
        return self._adapt(base, self.num_outputs, self.adapter_generator)

    # ------------------------------------------------------------------ training
    def reset_adapter(self, network: nn.Module | None = None, generator: torch.Generator | None = None) -> None:
        """A fresh adapter: every LoRA layer's A redrawn (peft's initialisation) and B = 0, a new head (drawn from
        ``generator``, default the agent's adapter generator)."""
        net = self.network if network is None else network
        g = self.adapter_generator if generator is None else generator
        with torch.no_grad():
            for layer in adapted_layers(net).values():
                nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5), generator=g)
                layer.lora_B.zero_()
        net.head.reset(g)

    def on_task_switch(self, task_id) -> None:
        if task_id is None:
            raise ValueError(f"{self.NAME} keys each task's adapter by its task id, but the stream hides task ids "
                             f"(task_id None at a switch); run it on a stream that reports them")
        self.commit_task()
        super().on_task_switch(task_id)
        if self.num_updates or self.stored_tasks:
            self.reset_adapter()
        self.reset_optimizer()
        self._committed = False

    # ------------------------------------------------------------------ memories
    def commit_task(self) -> bool:
        """Write the adapter of the task being trained to every memory, once (later calls until the next task do
        nothing). Returns whether it wrote."""
        if self._committed or self.task_id is None:
            return False
        vector = adapter_vector(self.network)
        for memory in self.memories.values():
            key = write_adapter(memory, vector)
        self.keys[int(self.task_id)] = key
        self.stored_tasks.append(int(self.task_id))
        self._committed = True
        return True

    @property
    def memory_names(self) -> tuple[str, ...]:
        return tuple(self.memories)

    def _key_of(self, task: int) -> torch.Tensor:
        if int(task) not in self.keys:
            raise KeyError(f"task {task} has no adapter in the memories (written: {sorted(self.keys)}); a task is "
                           f"written when it ends (commit_task() writes the running one)")
        return self.keys[int(task)]

    def recalled_adapter(self, task: int, memory: str = "exact") -> torch.Tensor:
        """The adapter vector ``memory`` recalls from task ``task``'s key: key (+) read(key)."""
        if memory not in self.memories:
            raise KeyError(f"no memory {memory!r}; this agent writes to {self.memory_names}")
        return read_adapter(self.memories[memory], self._key_of(task))

    def recall_error(self, task: int, memory: str) -> float:
        """||theta_t - recalled theta_t||_2 against the exact store's copy."""
        exact = self.recalled_adapter(task, "exact").double()
        return float((self.recalled_adapter(task, memory).double() - exact).norm())

    def memory_bytes(self, memory: str) -> int:
        return int(self.memories[memory].memory_size_bytes())

    @property
    def adapter_bytes(self) -> int:
        """What storing every written adapter as it is costs (the exact store's size)."""
        return int(self.memories["exact"].written_bytes)

    @contextlib.contextmanager
    def using_adapter(self, vector: torch.Tensor):
        """Install ``vector`` (an adapter vector of this agent's layout) for the duration of the block, then put back
        the adapter that was installed. A vector of another length or layout installs nothing (ValueError)."""
        saved = adapter_vector(self.network)
        install_adapter_vector(self.network, vector, self.layout)
        try:
            yield
        finally:
            install_adapter_vector(self.network, saved, self.layout)

    # ------------------------------------------------------------------ multi-task switching
    def fit_task_predictor(self, data: dict[int, list[tuple[torch.Tensor, torch.Tensor]]], *,
                           progress: bool = False) -> dict:
        """Train the task predictor on the union of ``data`` (task id -> (x, y) uint8 batches of its training split;
        the labels are ignored, the task id is the target): a fresh q / v adapter of the same rank on the same frozen
        base, a head over the tasks, ``predictor_epochs`` epochs of AdamW (weight decay as the agent's) with the
        learning rate decaying from ``predictor_lr`` to ``predictor_lr_end``. Returns a record (steps, final loss)."""
        h = self.hparams
        tasks = sorted(int(t) for t in data)
        if len(tasks) < 2:
            raise ValueError(f"a task predictor needs data of at least 2 tasks, got {tasks}")
        xs = torch.cat([self.preprocess(x) for t in tasks for x, _ in data[t]])
        ys = torch.cat([torch.full((sum(len(x) for x, _ in data[t]),), i, dtype=torch.int64)
                        for i, t in enumerate(tasks)]).to(self.device)
        g = torch.Generator().manual_seed(int(h["seed"]) + 7919)
        net = copy.deepcopy(self.network)
        for layer in adapted_layers(net).values():
            layer.generator = None  # no dropout to draw; and the agent's generators stay the ones it was built with
        # the predictor's own head over the tasks and a fresh adapter (its LoRA layers are the copies')
        with seeded(int(h["seed"]) + 7919):
            net.head = TaskHead(net.head.linear.in_features, len(tasks)).to(self.device)
        self.reset_adapter(net, g)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = _optimizer("adamw", params, float(h["predictor_lr"]), 0.0, float(h["weight_decay"]), h["betas"])
        batch = int(h["predictor_batch_size"])
        per_epoch = math.ceil(len(xs) / batch)
        total = per_epoch * int(h["predictor_epochs"])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="task predictor", unit="step", leave=False)
        net.train()
        step, loss = 0, torch.tensor(float("nan"))
        for _ in range(int(h["predictor_epochs"])):
            order = torch.randperm(len(xs), generator=g).to(self.device)
            for i in range(per_epoch):
                idx = order[i * batch:(i + 1) * batch]
                lr = float(h["predictor_lr"]) * schedule_factor(
                    "cosine", step, total, final=float(h["predictor_lr_end"]) / float(h["predictor_lr"]))
                for group in opt.param_groups:
                    group["lr"] = lr
                loss = nn.functional.cross_entropy(net(xs[idx]), ys[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        net.eval()
        self.predictor, self.predictor_tasks = net, tasks
        return {"steps": step, "final_loss": float(loss.detach())}

    @torch.no_grad()
    def predict_task(self, x: torch.Tensor) -> torch.Tensor:
        """The task id the predictor assigns to each preprocessed input (int64, on the agent's device)."""
        if self.predictor is None:
            raise RuntimeError("no task predictor yet: fit_task_predictor(data) first")
        ids = torch.as_tensor(self.predictor_tasks, device=self.device)
        return ids[self.predictor(x).argmax(1)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "memories": copy.deepcopy(self.memories),
                "keys": {t: k.clone() for t, k in self.keys.items()}, "stored_tasks": list(self.stored_tasks),
                "committed": self._committed,
                "predictor": copy.deepcopy(self.predictor), "predictor_tasks": list(self.predictor_tasks)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memories = copy.deepcopy(state["memories"])
        self.keys = {int(t): k.clone() for t, k in state["keys"].items()}
        self.stored_tasks = [int(t) for t in state["stored_tasks"]]
        self._committed = bool(state["committed"])
        self.predictor = copy.deepcopy(state["predictor"])
        self.predictor_tasks = list(state["predictor_tasks"])
