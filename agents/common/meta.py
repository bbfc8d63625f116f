"""Meta-training on a stream's task distribution (MAML, ANML; NeuMoSync Section 3.8 and Appendix C.4).

:class:`TaskSampler` rebuilds the agent's stream from its configuration under a *different* stream seed, so the
meta-training tasks are drawn from the same distribution as the evaluation stream (same dataset, same kind of label
map / permutation / class split) but are not its tasks. A task's samples are its un-augmented training samples.

:func:`meta_train` runs the episodic loop of MAML (Finn et al. 2017): per outer step, ``meta_batch`` tasks; per
task ``inner_steps`` SGD steps (lr ``inner_lr``) on support batches of ``batch_size``, taken functionally so the
query loss after adaptation backpropagates into the initial parameters (second order unless ``first_order``); the
outer optimiser is Adam (lr ``meta_lr``). ``adapt`` restricts the inner loop to some parameters (ANML adapts only its
late prediction layers) and ``reinit`` re-draws some of them for every sampled task (ANML's classifier head).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from clenv.data.scaling import to_unit_float

__all__ = ["TaskSampler", "meta_train", "meta_stream_seed"]


def meta_stream_seed(seed: int) -> int:
    """The meta-training stream seed for agent seed ``seed``: far from the small seeds runs use for the stream."""
    return 2**40 + 7919 * int(seed)


class TaskSampler:
    """Samples (support, query) data of tasks from a stream rebuilt with another stream seed."""

    def __init__(self, env_config: dict, stream_seed: int, device, max_samples: int | None = None):
        from clenv.envs.supervised import SupervisedStreamEnv

        cfg = dict(env_config)
        cfg.update(task_aware=False, output="numpy")
        self.env = SupervisedStreamEnv(**cfg)
        self.env.reset(options={"stream_seed": int(stream_seed)})
        self.num_tasks = self.env.num_tasks
        self.device = torch.device(device)
        self.max_samples = max_samples
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def task_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All (up to ``max_samples``) training samples of meta-task ``k``: float inputs in [0, 1], labels."""
        if k not in self._cache:
            if len(self._cache) >= 16:
                self._cache.pop(next(iter(self._cache)))
            xs, ys = zip(*self.env.test_batches(k, batch_size=1000, split="train", max_samples=self.max_samples))
            x = to_unit_float(torch.cat(xs), self.device)
            self._cache[k] = (x, torch.cat(ys).to(self.device).long())
        return self._cache[k]

    def sample(self, rng: np.random.Generator, inner_steps: int, batch_size: int, query_size: int):
        """A random task's support batches (list of ``inner_steps`` (x, y)) and query batch."""
        x, y = self.task_data(int(rng.integers(self.num_tasks)))
        n = len(x)
        support = []
        for _ in range(inner_steps):
            idx = torch.as_tensor(rng.choice(n, size=min(batch_size, n), replace=False), device=x.device)
            support.append((x[idx], y[idx]))
        q = torch.as_tensor(rng.choice(n, size=min(query_size, n), replace=False), device=x.device)
        return support, (x[q], y[q])


def meta_train(net: nn.Module, sampler: TaskSampler, *, steps: int, inner_steps: int, inner_lr: float,
               meta_batch: int, meta_lr: float, batch_size: int, query_size: int, first_order: bool = False,
               adapt: set[str] | None = None, reinit: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
               reinit_names: set[str] = frozenset(), seed: int = 0, forward=None) -> list[float]:
    """Meta-train ``net``'s parameters in place; returns the mean query loss of every outer step."""
    rng = np.random.default_rng(seed)
    params = {n: p for n, p in net.named_parameters() if p.requires_grad}
    adapt = set(params) if adapt is None else set(adapt)
    outer = torch.optim.Adam(params.values(), lr=meta_lr)
    fwd = forward or (lambda p, x: functional_call(net, p, (x,)))
    history = []
    net.train()
    for _ in range(int(steps)):
        outer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(int(meta_batch)):
            support, (xq, yq) = sampler.sample(rng, int(inner_steps), int(batch_size), int(query_size))
            fast = dict(params)
            for n in reinit_names:  # a fresh draw per task, outside the meta-gradient
                fast[n] = reinit(n, params[n]).requires_grad_(True)
            for xs, ys in support:
                loss = F.cross_entropy(fwd(fast, xs), ys)
                names = [n for n in fast if n in adapt]
                grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order,
                                            allow_unused=True)
                for n, g in zip(names, grads):
                    if g is not None:
                        fast[n] = fast[n] - inner_lr * (g.detach() if first_order else g)
            q_loss = F.cross_entropy(fwd(fast, xq), yq) / meta_batch
            q_loss.backward()
            total += float(q_loss.detach())
        outer.step()
        history.append(total)
    return history
