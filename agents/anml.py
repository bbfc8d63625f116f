"""ANML, a neuromodulated meta-learning network (Beaulieu et al., ECAI 2020), as set up in NeuMoSync Appendix C.4.

Two sub-networks with the env's backbone: a neuromodulatory network (NM) and a prediction learning network (PLN).
The NM network's output, through a sigmoid, gates the PLN's flattened features element-wise before the
classification head: ``logits = head(body(x) * sigmoid(nm(x)))``.

Meta-training (:func:`agents.common.meta.meta_train`, tasks from the stream rebuilt with another stream seed): in
the inner loop the NM network and the early PLN layers are frozen, only the late PLN layers (the last hidden layer and
the head) adapt, and the head is re-drawn for every sampled task; the outer loop updates every meta-parameter,
the NM network included. Continual phase: the meta-learned parameters are loaded, the NM network and early PLN layers
stay frozen, the head is re-initialised once, and the late layers are trained continually with Adam (lr 1e-3),
never reset.

Defaults from NeuMoSync Appendix C.4: 1,000 meta-training steps, inner SGD lr 1e-2 with 5 steps, meta-batch 4, outer
Adam lr 1e-3; lower ``meta_steps`` for quick runs.
"""

from __future__ import annotations

import contextlib
import copy

import torch

from agents.base import seeded
import torch.nn as nn

from agents.backbones import Backbone, build_backbone
from agents.common.meta import meta_train
from agents.maml import _META_CACHE, MetaEnvMixin

__all__ = ["ANMLAgent", "ANMLNetwork"]


class ANMLNetwork(nn.Module):
    """PLN gated by NM; exposes the PLN's unit layers and ``capture`` so unit-level tools still apply."""

    def __init__(self, pln: Backbone, nm: Backbone):
        super().__init__()
        self.pln = pln
        self.nm = nm
        self.unit_layers = pln.unit_layers

    @property
    def head(self) -> nn.Module:  # a property, not a second registration (functional_call and ties)
        return self.pln.head

    def features(self, x):
        return self.pln.body(x) * torch.sigmoid(self.nm(x))

    def forward(self, x):
        return self.pln.head(self.features(x))

    @contextlib.contextmanager
    def capture(self):
        with self.pln.capture() as cap:
            yield cap


class ANMLAgent(MetaEnvMixin):
    """Meta-learned neuromodulatory gating; the prediction network's late layers learn continually."""

    NAME = "anml"
    DEFAULTS = dict(optimizer="adam", lr=1e-3)

    def build_network(self):
        pln = super().build_network()
        width = pln.head.in_features
        name = self.hparams["backbone"] or self.env_spec["backbone"]
        nm = build_backbone(name, self.env_spec["input_shape"], width, **self.backbone_options())
        return ANMLNetwork(pln, nm)

    def late_parameter_names(self) -> set[str]:
        """Names of the parameters that adapt: the PLN's last hidden layer and its head."""
        net = self.network
        late_modules = [net.pln.head]
        if net.pln.unit_layers:
            last = net.pln.unit_layers[-1]
            late_modules += [last.incoming] + ([last.norm] if last.norm is not None else [])
        ids = {id(p) for m in late_modules for p in m.parameters()}
        return {n for n, p in net.named_parameters() if id(p) in ids}

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        key = self._cache_key()
        head_names = {"pln.head." + n for n, _ in self.network.pln.head.named_parameters()}
        if key not in _META_CACHE:
            gen = torch.Generator(device=self.device).manual_seed(int(self.hparams["seed"]) + 5_000_011)

            def reinit(name, p):
                # The head's init distribution, drawn fresh for each sampled task.
                fresh = torch.empty_like(p)
                bound = 1.0 / max(1, self.network.pln.head.in_features) ** 0.5
                return fresh.uniform_(-bound, bound, generator=gen)

            self.meta_history = meta_train(self.network, self.task_sampler(), adapt=self.late_parameter_names(),
                                           reinit=reinit, reinit_names=head_names, **self.meta_kwargs())
            _META_CACHE[key] = {"init": copy.deepcopy(self.network.state_dict()), "history": self.meta_history}
        self.network.load_state_dict(_META_CACHE[key]["init"])
        self.meta_history = list(_META_CACHE[key]["history"])
        with seeded(int(self.hparams["seed"]) + 6_000_007):
            self.network.pln.head.reset_parameters()  # the classifier is re-initialised once
        late = self.late_parameter_names()
        for n, p in self.network.named_parameters():
            p.requires_grad_(n in late)
        self.reset_optimizer()
