"""Adapter agents on a frozen causal language model (002_b6d509c9f1140765.txt, Section 2 "Adapting FTN to LoRA",
Experiment 2, Appendices D and E): plain LoRA, LoRA-Naive, LoRA-FixedMask, LoRA-FTN and LoRA-Bank.

:class:`AdapterAgent` freezes a causal LM and injects the LoRA layers of :mod:`agents.adapters.layer` on its
``target_modules`` (default ``("c_attn",)``: each block's QKV projection, as the paper wraps it); the adapters are the
only trained parameters. It is a :class:`agents.base.SupervisedAgent` on a language stream (``env.task_type ==
"language"``, e.g. ``StyleShiftText-v0``): ``preprocess`` keeps the int64 tokens, ``forward`` gives (B, L, V)
logits, ``task_loss`` is the per-token cross-entropy over the positions whose label is not -100, ``to_action`` the
argmax token per position (or the logits for ``action_type="logits"``); the training step is the base's ``learn``.
Adam without weight decay, its moments reset at every task boundary (Remark 2.2, restated for LoRA in Appendix D:
carried moments move inactive components). An agent refuses a stream that is not a language one at construction.

The base model: by default (``base_model="pretrained"``) the in-repository pretrained byte-level GPT-2 of
:mod:`agents.adapters.base_lm` (2 layers, 128 wide, pretrained on the English of CPython's ``pydoc_data`` with a
copy task in the stream's layout; **not** the paper's ``distilgpt2``), loaded from its cache or trained once when the
cache is empty; ``base_seed`` picks which pretraining seed (the base is the same for every agent seed, as a
downloaded model would be). ``base_model="random"`` (or None) is a small randomly initialised Hugging Face GPT-2,
``GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=<env num_classes>, n_positions=<env max_length>)`` with
dropout off (``base_n_layer``, ``base_n_embd``, ``base_n_head`` change it), built under the agent's seed: the
adapters then do all the learning (the tests use it). To use your own module, pass ``base_model`` (a
``"package.module:factory"`` string, a callable, or an ``nn.Module`` that is deep-copied for each agent; a factory is
called as ``factory(env_spec)`` under the agent's seed) or override :meth:`AdapterAgent.build_base_model`. The
module must be a causal LM: its forward takes int64 tokens (B, L) and returns logits (B, L, V) (or an object with
``.logits``, as Hugging Face models do), V the env's ``num_classes``, and position i's logits depend on tokens 0..i
only. Training and support batches are cut after their last scored position (``trim_unscored``), which changes no
scored logit of a causal LM and skips about 30% of the style stream's padded positions.

The agents (Appendix E's settings are the defaults; ``alpha`` None means alpha = rank, a scaling of 1, which the
paper does not state):

- ``lora`` (:class:`LoRAAgent`): plain LoRA of rank 8, no mask: sequential fine-tuning.
- ``lora_naive`` (:class:`LoRANaiveAgent`): the pool of H = 576 rank-4 components with the all-ones mask, i.e. one
  shared LoRA of rank H r = 2,304 (the pool's parameterisation, initialisation and alpha / r scaling, with every
  component on; not a separate plain-LoRA layer).
- ``lora_fixed_mask`` (:class:`LoRAFixedMaskAgent`): task t trains through its pre-assigned disjoint block of k = 72
  components, ``[t k, (t + 1) k)``; recovery picks the stored block of lowest support loss. With the Adam reset and
  no weight decay it forgets exactly nothing (Theorem D.1).
- ``lora_ftn`` (:class:`LoRAFTNAgent`): H = 576 on a 24 x 24 grid, r = 4, k = 72, Adam 5e-4; every training batch's
  mask is found by the SmoothKWTA configurer (:class:`agents.common.masks.SmoothKWTAConfigurer`: S = 15 Adam steps
  at eta_m = 0.5 on the LM loss with the relaxed mask set on every adapted layer, one mask shared across layers, a
  3 x 3 kernel, T = 15, top-k); the stored mask is the task's last training batch's; recovery cold-starts the
  configurer on the support batch, without the task's identity.
- ``lora_bank`` (:class:`LoRABankAgent`): H = 8 components of rank 288 (the same per-task and total capacity as
  LoRA-FTN), B drawn from N(0, ``init_b_std`` = 0.01) (a small Gaussian, the value ours) to break the symmetry;
  routing is the argmin of the loss over the 8 one-hot masks, on each training batch (training) and on the support
  batch (recovery).

The pool agents share the mask-routed machinery of :class:`agents.common.routing.MaskRoutedAgent` with FTN (stored
masks, ``using_mask``, lowest-support-loss recovery), so :class:`clenv.probes.MaskRecovery` measures them under both
protocols. A mask is set on the LoRA layers only for the duration of one forward pass (:meth:`AdapterAgent.
forward_with_mask`) and cleared after it, so no relaxed mask (which carries the configurer's graph) is ever left on
the layers: clones and checkpoints deep-copy clean layers.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.adapters.layer import inject_adapters, set_component_mask
from agents.base import SupervisedAgent
from agents.common.masks import SmoothKWTAConfigurer, fixed_block
from agents.common.routing import MaskRoutedAgent

__all__ = ["AdapterAgent", "LoRAAgent", "LoRAFTNAgent", "LoRANaiveAgent", "LoRAFixedMaskAgent", "LoRABankAgent",
           "default_base_model"]

#: The pool agents' routing rules (the ``mask`` hyperparameter).
MASK_KINDS = ("smooth_kwta", "fixed", "ones", "one_hot")


def default_base_model(vocab_size: int, max_length: int, *, n_layer: int = 2, n_embd: int = 64,
                       n_head: int = 4) -> nn.Module:
    """A randomly initialised Hugging Face ``GPT2LMHeadModel`` (dropout off, no key-value cache, no special token
    ids: the stream's tokens are its own), drawn from torch's global generator (seed it, e.g. with
    :func:`agents.base.seeded`)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:  # pragma: no cover - the adapters extra
        raise ImportError("the default base model of the adapter agents is a Hugging Face GPT-2: "
                          "pip install 'clenv[adapters]' (or pass base_model=...)") from exc
    config = GPT2Config(n_layer=int(n_layer), n_embd=int(n_embd), n_head=int(n_head), vocab_size=int(vocab_size),
                        n_positions=int(max_length), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        use_cache=False, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def _load_factory(spec: str):
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"base_model as a string is 'package.module:factory', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load base_model {spec!r}: {type(err).__name__}: {err}") from None


class AdapterAgent(SupervisedAgent):
    """A frozen causal LM with LoRA adapters on ``target_modules``, trained on a language stream (see the module
    docstring).

    Hyperparameters beyond :class:`~agents.base.SupervisedAgent`'s: ``base_model`` (``"pretrained"``, the default;
    ``"random"``; see :meth:`build_base_model`), ``base_seed`` (the pretrained base's seed), ``base_n_layer``,
    ``base_n_embd``, ``base_n_head`` (the random GPT-2's size), ``trim_unscored``,
    ``target_modules``, ``rank`` (r, per component), ``alpha`` (None: alpha = rank), ``adapter_dropout``,
    ``components`` (H), ``init_b_std`` (0: LoRA's B = 0), ``reset_optimizer_on_switch`` (Remark 2.2).

    ``mask`` is the component mask every forward pass routes through (None: every component on; the pool agents
    set it). ``adapters`` lists the LoRA layers in module order.
    """

    NAME = "adapter"
    DEFAULTS = dict(base_model="pretrained", base_seed=0, base_n_layer=2, base_n_embd=64, base_n_head=4,
                    target_modules=("c_attn",), rank=8, alpha=None, adapter_dropout=0.0, components=1,
                    init_b_std=0.0, optimizer="adam", lr=5e-4, weight_decay=0.0, reset_optimizer_on_switch=True,
                    trim_unscored=True)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        self.mask: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def read_env(cls, env) -> dict:
        spec = super().read_env(env)
        if spec["task_type"] != "language":
            u = getattr(env, "unwrapped", env)
            env_id = getattr(getattr(u, "spec", None), "id", None) or type(u).__name__
            raise ValueError(f"{cls.NAME} needs a language stream (env.task_type == 'language'), got "
                             f"task_type={spec['task_type']!r} from {env_id}: the adapter agents run a causal LM on "
                             f"token streams such as StyleShiftText-v0")
        u = getattr(env, "unwrapped", env)
        spec["max_length"] = int(getattr(u, "max_length", spec["input_shape"][-1]))
        return spec

    def build_base_model(self) -> nn.Module:
        """The causal LM the adapters go on (frozen by the agent afterwards), built under the agent's seed: the
        ``base_model`` hyperparameter: ``"pretrained"`` (:func:`agents.adapters.base_lm.pretrained_base_lm` of
        ``base_seed``), ``"random"`` / None (:func:`default_base_model` for the env's vocabulary and length), a
        ``"package.module:factory"`` string or a callable (called as ``factory(env_spec)``), or a module
        (deep-copied). Override it in a subclass for another default."""
        spec = self.hparams["base_model"]
        if spec == "pretrained":
            return self._pretrained_base()
        if spec is None or spec == "random":
            h = self.hparams
            return default_base_model(self.num_outputs, self.env_spec["max_length"], n_layer=h["base_n_layer"],
                                      n_embd=h["base_n_embd"], n_head=h["base_n_head"])
        if isinstance(spec, nn.Module):
            return copy.deepcopy(spec)
        factory = _load_factory(spec) if isinstance(spec, str) else spec
        if not callable(factory):
            raise TypeError(f"base_model must be None, a module, a callable or 'package.module:factory', "
                            f"got {type(spec).__name__}")
        model = factory(dict(self.env_spec))
        if not isinstance(model, nn.Module):
            raise TypeError(f"base_model's factory returned {type(model).__name__}, not a torch.nn.Module")
        return model

    def _pretrained_base(self) -> nn.Module:
        from agents.adapters.base_lm import DEFAULT_CONFIG, pretrained_base_lm
        from clenv.envs.style_shift import VOCAB_SIZE

        vocab, length = self.num_outputs, self.env_spec["max_length"]
        if vocab != VOCAB_SIZE or length > DEFAULT_CONFIG["n_positions"]:
            raise ValueError(f"the pretrained base LM reads the style stream's byte tokens ({VOCAB_SIZE} ids, at most "
                             f"{DEFAULT_CONFIG['n_positions']} positions); this env has {vocab} ids and "
                             f"max_length {length}: pass base_model='random' or your own base_model")
        return pretrained_base_lm({"seed": int(self.hparams["base_seed"])})

    def build_network(self) -> nn.Module:
        model = self.build_base_model().to(self.device)
        model.requires_grad_(False)
        # the adapters' initialisation and dropout masks: a generator of the agent's (saved in its state)
        seed = int(self.hparams["seed"]) + 1_000_003
        self.adapter_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.adapters = list(self.adapt(model).values())
        return model

    def adapt(self, model: nn.Module) -> dict[str, nn.Module]:
        """Put the adapter layers on ``model``'s ``target_modules`` (in place) and return them by module name, in
        module order: LoRA layers here; another adapter family overrides this alone, drawing from
        ``self.adapter_generator``."""
        h = self.hparams
        rank = int(h["rank"])
        return inject_adapters(model, self.target_patterns, rank=rank, alpha=float(rank if h["alpha"] is None
                                                                                     else h["alpha"]),
                               dropout=float(h["adapter_dropout"]), components=int(h["components"]),
                               init_b_std=float(h["init_b_std"]), generator=self.adapter_generator)

    @property
    def target_patterns(self) -> str | tuple[str, ...]:
        targets = self.hparams["target_modules"]
        return targets if isinstance(targets, str) else tuple(targets)

    # ------------------------------------------------------------------ data and the model
    def preprocess(self, obs) -> torch.Tensor:
        """Token batch (numpy or torch, (B, L)) -> int64 tensor on the agent's device."""
        x = obs["x"] if isinstance(obs, dict) else obs
        return torch.as_tensor(x, device=self.device).to(torch.int64)

    def trimmed(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None):
        """``(x, y, logits)`` cut after the last position any row scores (``trim_unscored``): with a causal base the
        scored positions' logits are the same, and the padding after them costs nothing."""
        if not self.hparams["trim_unscored"] or y.ndim != 2:
            return x, y, logits
        scored = torch.nonzero((y != -100).any(0))
        keep = int(scored[-1]) + 1 if len(scored) else 1
        if keep >= x.shape[1]:
            return x, y, logits
        return x[:, :keep], y[:, :keep], None if logits is None else logits[:, :keep]

    def training_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = super().training_batch(x, y)
        xb, yb, _ = self.trimmed(xb, yb)  # the hooks after the step (EWC's batch memory) still see the full batch
        return xb, yb

    def forward_with_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, L, V) of tokens ``x`` with ``mask`` (shape (H,), binary or relaxed; None: all on) set on
        every adapted layer for this pass only: the layers hold no mask before or after it (the autograd graph of
        the pass keeps what it used)."""
        if mask is None:
            out = self.network(x)
        else:
            set_component_mask(self.adapters, mask)
            try:
                out = self.network(x)
            finally:
                set_component_mask(self.adapters, None)
        return getattr(out, "logits", out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_mask(x, self.mask)

    def task_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-token cross-entropy (mean over the positions whose label is not -100)."""
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1), ignore_index=-100)

    def targets(self, labels) -> torch.Tensor:
        return torch.as_tensor(labels, device=self.device).to(torch.int64)

    def to_action(self, logits: torch.Tensor):
        pred = logits.detach()
        if self.env_spec["action_type"] == "logits":
            return pred.float().cpu().numpy()
        return pred.argmax(-1).cpu().numpy()

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.hparams["reset_optimizer_on_switch"] and self.num_updates > 0:
            self.reset_optimizer()  # Remark 2.2 / Appendix D: no Adam moment crosses a boundary

    @property
    def adapter_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters_to_optimize())


class LoRAAgent(AdapterAgent):
    """Plain LoRA (Hu et al., 2022) of rank 8 on every ``c_attn``, no mask: sequential fine-tuning."""

    NAME = "lora"
    DEFAULTS = dict(rank=8, components=1)


class LoRAFTNAgent(MaskRoutedAgent, AdapterAgent):
    """A pool of H rank-r LoRA components per adapted layer, routed by one binary mask shared across layers
    (Section 2 eq. (1), Appendix D eq. (2)); ``mask`` chooses how it is found:

    - ``"smooth_kwta"`` (LoRA-FTN): the SmoothKWTA configurer on each training batch (train) / on the support batch,
      cold-started (recovery);
    - ``"fixed"`` (LoRA-FixedMask): task t's block ``[t k, (t + 1) k)``; recovery: the stored block of lowest
      support loss;
    - ``"ones"`` (LoRA-Naive): every component;
    - ``"one_hot"`` (LoRA-Bank): the one-hot mask of lowest loss on the training batch / the support batch.

    Hyperparameters beyond :class:`AdapterAgent`'s: ``k`` (winners), ``mask``, ``kernel`` (s), ``smoothing_steps``
    (T), ``mask_steps`` (S), ``mask_lr`` (eta_m). Appendix E's values are the defaults.
    """

    NAME = "lora_ftn"
    DEFAULTS = dict(components=576, rank=4, k=72, mask="smooth_kwta", kernel=3, smoothing_steps=15, mask_steps=15,
                    mask_lr=0.5, init_b_std=0.0, optimizer="adam", lr=5e-4, weight_decay=0.0)

    def __init__(self, env, **hparams):
        super().__init__(env, **hparams)
        h = self.hparams
        H, k = int(h["components"]), int(h["k"])
        if h["mask"] not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, got {h['mask']!r}")
        if h["mask"] in ("smooth_kwta", "fixed") and not 1 <= k <= H:
            raise ValueError(f"k must be in 1..components={H}, got {k}")
        side = math.isqrt(H)
        self.mask_grid = side if side * side == H else None  # MaskRecovery records it (tiling plots)
        self.configurer = None
        if h["mask"] == "smooth_kwta":
            self.configurer = SmoothKWTAConfigurer(H, k, kernel=int(h["kernel"]),
                                                   smoothing_steps=int(h["smoothing_steps"]),
                                                   steps=int(h["mask_steps"]), lr=float(h["mask_lr"]))

    @property
    def num_components(self) -> int:
        return int(self.hparams["components"])

    def initial_mask(self) -> torch.Tensor:
        H, kind = self.num_components, self.hparams["mask"]
        if kind == "fixed":
            return fixed_block(0, H, int(self.hparams["k"]), self.device)
        if kind == "one_hot":
            return self.one_hot(0)
        return torch.ones(H, device=self.device)

    def one_hot(self, j: int) -> torch.Tensor:
        mask = torch.zeros(self.num_components, device=self.device)
        mask[int(j)] = 1.0
        return mask

    # ------------------------------------------------------------------ the training step
    def learn(self, x, y, logits=None):
        mask = self.training_mask(*self.trimmed(x, y)[:2])
        if self.mask is None or not torch.equal(mask, self.mask):
            logits = None  # act()'s pass routed through another mask: train on a fresh forward
        self.mask = mask
        self.store_mask(mask)
        return super().learn(x, y, logits)

    def training_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The binary mask the batch ``(x, y)`` trains through (the configurer and the one-hot scores run as
        auxiliary forwards in the network's current mode and change no parameter)."""
        kind = self.hparams["mask"]
        if kind == "ones":
            return torch.ones(self.num_components, device=self.device)
        if kind == "fixed":
            return fixed_block(self.task_index, self.num_components, int(self.hparams["k"]), self.device)
        with self.auxiliary_forward():
            if kind == "one_hot":
                return self.best_one_hot(x, y)
            return self.configurer(lambda m: self.task_loss(self.forward_with_mask(x, m), y), self.device)

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)  # MaskRoutedAgent records the task; AdapterAgent resets Adam
        if self.hparams["mask"] == "fixed":
            self.mask = fixed_block(self.task_index, self.num_components, int(self.hparams["k"]), self.device)

    # ------------------------------------------------------------------ mask recovery
    @torch.no_grad()
    def best_one_hot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The one-hot mask of lowest loss on ``(x, y)`` in the network's current mode (ties: the lowest index)."""
        losses = torch.stack([self.task_loss(self.forward_with_mask(x, self.one_hot(j)), y).float()
                              for j in range(self.num_components)])
        return self.one_hot(int(torch.argmin(losses)))

    @contextlib.contextmanager
    def evaluating(self):
        """Evaluation mode, auxiliary forwards (no statistic changes) for the block; the mode is restored after."""
        was = self.network.training
        self.network.eval()
        try:
            with self.auxiliary_forward():
                yield
        finally:
            self.network.train(was)

    @torch.no_grad()
    def support_loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        x, y, _ = self.trimmed(x, y)
        with self.evaluating():
            return float(self.task_loss(self.forward_with_mask(x, mask.to(self.device, torch.float32)), y))

    def recover_mask(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A mask for a labelled support batch without its task's identity: the configurer cold-started on it
        (``smooth_kwta``), the stored mask of lowest support loss (``fixed``), the one-hot of lowest support loss
        (``one_hot``), every component (``ones``). No parameter changes."""
        kind = self.hparams["mask"]
        if kind == "ones":
            return torch.ones(self.num_components, device=self.device)
        if kind == "fixed":
            return self.best_stored_mask(x, y)
        x, y, _ = self.trimmed(x, y)
        with self.evaluating():
            if kind == "one_hot":
                return self.best_one_hot(x, y)
            return self.configurer(lambda m: self.task_loss(self.forward_with_mask(x, m), y), self.device)


class LoRANaiveAgent(LoRAFTNAgent):
    """LoRA-Naive: the H = 576 rank-4 pool with the all-ones mask, one shared LoRA of rank H r = 2,304."""

    NAME = "lora_naive"
    DEFAULTS = dict(mask="ones")


class LoRAFixedMaskAgent(LoRAFTNAgent):
    """LoRA-FixedMask: task t's pre-assigned disjoint block of k = 72 components (the structural oracle); recovery:
    the stored block of lowest support loss. With the Adam reset and no weight decay, FM = 0 exactly (Theorem D.1)."""

    NAME = "lora_fixed_mask"
    DEFAULTS = dict(mask="fixed")


class LoRABankAgent(LoRAFTNAgent):
    """LoRA-Bank: H = 8 LoRAs of rank 288 with B ~ N(0, 0.01^2), routed by the argmin of the loss over the one-hot
    masks (training batch / support batch)."""

    NAME = "lora_bank"
    DEFAULTS = dict(mask="one_hot", components=8, rank=288, k=1, init_b_std=0.01)
