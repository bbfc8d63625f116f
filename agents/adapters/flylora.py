"""FlyLoRA and NeuroLoRA: rank-wise mixtures of experts over a frozen sparse random down-projection.

FlyLoRA (Zou, Zang, Xu, Zhu and Ji, NeurIPS 2025; shared/specs/methods.md section 5.1, read from the authors' code,
github.com/gfyddha/FlyLoRA) treats LoRA's rank-r update as r rank-1 experts, expert j being column j of B. The
down-projection A is a frozen sparse random matrix that doubles as the router: per token only the k experts with the
largest projections fire. NeuroLoRA (003_2885b6bbae2a6b4c.txt, Sections 3-4, Table 4, Appendix B) rescales the
projection with a small learned context gate before the selection (eq. 3-6) and adds a contrastive orthogonality
loss between the active and the inactive experts' columns of B (eq. 7-8).

The layer (:class:`FlyLoRALayer`) around a frozen base W, per token x::

    h  = A dropout(x)                      A (r x in): frozen, sparse, random (a buffer)
    m  = gate(dropout(x))                  none: 1; static: a learned vector; context: eq. (3)
    h' = h * m                             eq. (4)
    I  = top-k_j ( |h'_j| + d_j )          eq. (5), plus FlyLoRA's load-balancing bias d
    y  = W x + (alpha / r) B (h' * 1_I)    eq. (6); B (out x r) trainable, starting at 0

Choices (the reasons, where the sources differ or are silent):

- **A.** ``a_init="gaussian"`` (default) is the authors' code: each row has p = round(density * in) non-zeros at
  random positions (FlyLoRA's ``in // (r // k)`` when density = k / r), values N(0, (1/r)^2). ``"ternary"`` is the
  NeuroLoRA paper's description, i.i.d. entries in {0, +1, -1} with probabilities {1 - rho, rho/2, rho/2}. The
  Gaussian one is the default because it is what FlyLoRA's reported experiments ran, it gives every expert exactly p
  inputs, and its 1/r scale is what FlyLoRA's alpha = 2r was tuned with; a ternary A is r times larger at equal
  density (entries of magnitude 1), so it wants a smaller alpha or lr.
- **The routing score** is ``|h'| + d``. The authors' minimal class ranks ``|h + d|``, under which a positive d_j
  lowers the score of a negative h_j, so the balancing rule pushes the wrong way for half the tokens; their PEFT code
  ranks the signed ``h + d``, which is not the magnitude routing both papers describe. ``|h'| + d`` is DeepSeek's
  loss-free balancing form (the bias added to the affinity): monotone in d, and with d = 0 exactly eq. (5).
- **The bias d** is updated by the sign rule of the PEFT code, ``d_j += u sign(mean(c) - c_j)`` with ``c_j`` the
  number of token positions routed to expert j in the pass (padding included: the layer does not see the labels),
  and only by a training forward: train mode, gradients on, not inside the agent's ``auxiliary_forward`` (the spec's
  pitfall 1: the PEFT code updates it in evaluation and generation too). ``u`` (``bias_u``) is 1e-3, FlyLoRA's MMLU
  script's value (their layer default is 1e-2).
- **The context gate starts as the identity exactly.** The paper initialises gamma = 1, beta = 0 and says m ~ 1,
  but sigmoid(.) is about 0.5 there, so its NeuroLoRA starts at half FlyLoRA's update and with selections that
  differ. Here W2 = 0 (so the sigmoid is exactly 0.5 for every input), gamma = 2 and beta = 0: m = 1 exactly and
  NeuroLoRA's first forward is FlyLoRA's bit for bit (W1 is drawn; the first step moves W2, gamma and beta). The
  gate's range is then (beta, 2 gamma + beta) = (0, 2) at initialisation: it can suppress an expert fully and at
  most double it. The static-gate ablation is a learned vector that starts at 1.
- **The orthogonality loss** (eq. 7) of a layer is the mean over the token positions of its last training forward of
  ``1 / (k (r - k)) sum_{i active, j inactive} cos^2(B_i, B_j)``, computed from the Gram matrix of B's normalised
  columns and the active-set indicator (no loop over tokens); a zero column has cosine 0 with everything, so the loss
  is 0 with no NaN at B = 0. An agent averages it over its adapted layers.
- **Merging**: a FlyLoRA layer is not a fixed matrix (the routing is per token), so it cannot be merged into the base
  weight; adapters of one family are merged in parameter space (``MERGE_SPACE = "parameters"``: B, the gate and d
  averaged, A shared because every agent of one seed draws the same A).

The agents (:class:`FlyLoRAAgent` and its NeuroLoRA subclasses) are :class:`~agents.adapters.agent.AdapterAgent`\\ s:
the same frozen causal LM, ``target_modules`` (``c_attn`` by default), per-token cross-entropy and Adam reset at task
boundaries, with FlyLoRA layers instead of LoRA layers.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.adapters.agent import AdapterAgent
from agents.adapters.layer import AdapterLayer, base_features, drop_input, replace_targets

__all__ = ["FlyLoRALayer", "ContextGate", "StaticGate", "orthogonality_loss", "inject_flylora",
           "sparse_projection", "FlyLoRAAgent", "NeuroLoRAAgent", "NeuroLoRANoOrthAgent", "NeuroLoRANoGateAgent",
           "NeuroLoRAStaticGateAgent", "NeuroLoRATrainableAAgent", "A_INITS", "GATES"]

#: The distributions of the frozen projection A (see the module docstring).
A_INITS = ("gaussian", "ternary")
#: The gates: none (FlyLoRA), static (a learned vector, Table 4's "static gate"), context (NeuroLoRA's eq. 3).
GATES = ("none", "static", "context")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _finite(name: str, value, *, low: float = 0.0, strict: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


def sparse_projection(rank: int, in_features: int, density: float, kind: str = "gaussian", *,
                      generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """A frozen sparse random A (rank x in_features): ``"gaussian"``, p = max(1, round(density * in_features))
    non-zeros per row at random positions with values N(0, (1/rank)^2) (the authors' code); ``"ternary"``, i.i.d.
    entries in {0, +1, -1} with probabilities {1 - density, density/2, density/2} (the NeuroLoRA paper's text)."""
    if kind not in A_INITS:
        raise ValueError(f"a_init must be one of {A_INITS}, got {kind!r}")
    if kind == "ternary":
        u = torch.rand(rank, in_features, generator=generator, device=device)
        a = (u < density / 2).to(dtype) * -1.0 + ((u >= density / 2) & (u < density)).to(dtype)
        return a
    p = max(1, min(in_features, round(density * in_features)))
    positions = torch.rand(rank, in_features, generator=generator, device=device).argsort(dim=1)[:, :p]
    values = torch.randn(rank, p, generator=generator, device=device) / rank
    return torch.zeros(rank, in_features, device=device).scatter_(1, positions, values).to(dtype)


class ContextGate(nn.Module):
    """NeuroLoRA's neuromodulation gate, eq. (3): ``m_x = sigmoid(W2 GELU(W1 x)) * gamma + beta`` with W1 (d_h x in)
    and W2 (r x d_h), no biases. W1 is drawn as ``nn.Linear`` draws a weight (uniform in +-1/sqrt(in)); W2 = 0,
    gamma = 2, beta = 0, so that m_x = 1 exactly at initialisation (the paper's gamma = 1 gives about 0.5)."""

    def __init__(self, in_features: int, rank: int, hidden: int, *, generator: torch.Generator | None = None,
                 device=None, dtype=None):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(hidden, in_features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5), generator=generator)
        self.w2 = nn.Parameter(torch.zeros(rank, hidden, device=device, dtype=dtype))
        self.gamma = nn.Parameter(torch.full((rank,), 2.0, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(rank, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.linear(F.gelu(F.linear(x, self.w1)), self.w2)) * self.gamma + self.beta


class StaticGate(nn.Module):
    """Table 4's "static gate" ablation: one learned input-independent vector m (r,), starting at 1."""

    def __init__(self, rank: int, *, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(rank, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale


def orthogonality_loss(B: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """NeuroLoRA's eq. (7) averaged over tokens: ``mean_t 1/(|I_t| |J_t|) sum_{i in I_t, j in J_t} cos^2(B_i, B_j)``
    with I_t the active and J_t the inactive experts of token t (``active``: bool (N, r)), B (out, r).

    One r x r Gram matrix of the normalised columns, weighted by ``sum_t a_ti (1 - a_tj) / (|I_t| |J_t|)``: no loop
    over tokens. A zero column has cosine 0 with every column (0, not NaN, at B = 0, and a zero gradient there); a
    token whose active or inactive set is empty contributes 0."""
    a = active.reshape(-1, active.shape[-1]).to(B.dtype)
    n = a.shape[0]
    if n == 0:
        return B.sum() * 0.0
    n_active = a.sum(1)
    pairs = n_active * (a.shape[1] - n_active)
    weight = torch.where(pairs > 0, 1.0 / pairs.clamp_min(1.0), torch.zeros_like(pairs))
    cross = (a * weight[:, None]).T @ (1.0 - a)  # (r, r): sum_t w_t a_ti (1 - a_tj)
    cols = F.normalize(B, dim=0)
    return ((cols.T @ cols).pow(2) * cross).sum() / n


class FlyLoRALayer(AdapterLayer):
    """A frozen ``nn.Linear`` or GPT-2 ``Conv1D`` plus FlyLoRA's rank-wise experts (see the module docstring).

    Args:
        base: the layer to adapt; frozen and kept as ``self.base``.
        rank: r, the number of rank-1 experts.
        k: the experts active per token (1 <= k <= r).
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout probability on the adapter's input (A and the gate see it; the base sees ``x``).
        density: rho, the share of non-zero entries of A.
        a_init: ``"gaussian"`` (the authors' code, default) or ``"ternary"`` (the NeuroLoRA paper's text).
        bias_u: u, the step of the load-balancing bias's sign rule (0: no balancing).
        gate: ``"none"`` (FlyLoRA), ``"static"`` or ``"context"`` (NeuroLoRA).
        gate_hidden: d_h, the context gate's bottleneck.
        trainable_a: A a trained ``nn.Parameter`` (Table 4's "trainable A"; it then becomes dense) instead of a
            frozen buffer.
        init_b_std: 0 (B = 0, the initial update is exactly zero) or the std of a Gaussian B.
        generator: draws A, then B (if Gaussian), and the dropout masks in train mode.
        gate_generator: draws the context gate's W1 (None: ``generator``, after B). A separate one lets FlyLoRA and
            NeuroLoRA agents of one seed draw the same A and B in every layer.

    Buffers: ``lora_A`` (unless trainable) and ``expert_bias`` (d), both in the ``state_dict``. ``last_active`` (bool
    (N, r), not state) is the active-set indicator of the last training forward, which :meth:`orth_loss` reads.
    """

    #: How adapters of this layer are merged (by :mod:`agents.adapters` merging): in parameter space, not as Delta W.
    MERGE_SPACE = "parameters"

    def __init__(self, base: nn.Module, rank: int, k: int, alpha: float, *, dropout: float = 0.0,
                 density: float = 0.25, a_init: str = "gaussian", bias_u: float = 1e-3, gate: str = "none",
                 gate_hidden: int = 64, trainable_a: bool = False, init_b_std: float = 0.0,
                 generator: torch.Generator | None = None, gate_generator: torch.Generator | None = None):
        super().__init__()
        in_features, out_features, fan_in_fan_out = base_features(base, "FlyLoRALayer")
        rank, k, gate_hidden = _positive_int("rank", rank), _positive_int("k", k), _positive_int("gate_hidden",
                                                                                                  gate_hidden)
        if k > rank:
            raise ValueError(f"k (active experts per token) must be at most rank={rank}, got {k}")
        alpha = _finite("alpha", alpha, strict=True)
        if not (not isinstance(dropout, bool) and isinstance(dropout, numbers.Real) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        density = _finite("density", density, strict=True)
        if density > 1.0:
            raise ValueError(f"density (the share of non-zero entries of A) must be in (0, 1], got {density!r}")
        if a_init not in A_INITS:
            raise ValueError(f"a_init must be one of {A_INITS}, got {a_init!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not isinstance(trainable_a, bool):
            raise ValueError(f"trainable_a must be True or False, got {trainable_a!r}")
        bias_u, init_b_std = _finite("bias_u", bias_u), _finite("init_b_std", init_b_std)
        self.base = base
        self.base.requires_grad_(False)
        self.in_features, self.out_features, self.fan_in_fan_out = in_features, out_features, fan_in_fan_out
        self.rank, self.k, self.alpha, self.scaling = rank, k, alpha, alpha / rank
        self.dropout, self.density, self.a_init, self.bias_u = float(dropout), density, a_init, bias_u
        self.gate_kind, self.trainable_a, self.init_b_std = gate, trainable_a, init_b_std
        self.generator = generator
        weight = base.weight
        device, dtype = weight.device, weight.dtype
        a = sparse_projection(rank, in_features, density, a_init, generator=generator, device=device, dtype=dtype)
        if trainable_a:
            self.lora_A = nn.Parameter(a)
        else:
            self.register_buffer("lora_A", a)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        if init_b_std > 0:
            nn.init.normal_(self.lora_B, std=init_b_std, generator=generator)
        if gate == "context":
            self.gate = ContextGate(in_features, rank, gate_hidden, device=device, dtype=dtype,
                                    generator=generator if gate_generator is None else gate_generator)
        elif gate == "static":
            self.gate = StaticGate(rank, device=device, dtype=dtype)
        else:
            self.gate = None
        # float32 whatever the base's dtype: u-sized steps must not round away in bf16
        self.register_buffer("expert_bias", torch.zeros(rank, device=device, dtype=torch.float32))
        self.statistics_frozen = False  # set by agents.base.frozen_statistics (auxiliary forwards)
        self.last_active: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, k={self.k}, "
                f"alpha={self.alpha:g}, density={self.density:g}, a_init={self.a_init}, gate={self.gate_kind}, "
                f"trainable_a={self.trainable_a}, bias_u={self.bias_u:g}, dropout={self.dropout:g}")

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gate's parameters (none without a gate): NeuroLoRA trains them at their own learning rate."""
        return [] if self.gate is None else list(self.gate.parameters())

    @property
    def records_routing(self) -> bool:
        """Whether the running forward is a training one, which updates d and records the active sets: train mode,
        gradients on, statistics not frozen (an agent's auxiliary forwards freeze them)."""
        return self.training and torch.is_grad_enabled() and not self.statistics_frozen

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """h' = (A x) * m_x for the adapter's (already dropped-out) input ``x``, shape (..., r)."""
        h = F.linear(x, self.lora_A)
        return h if self.gate is None else h * self.gate(x)

    def route(self, h: torch.Tensor) -> torch.Tensor:
        """The active set per token, bool (..., r): the top-k of ``|h'| + d`` (ties: torch.topk's order)."""
        with torch.no_grad():
            score = h.detach().abs().float() + self.expert_bias
            chosen = score.topk(self.k, dim=-1).indices
            return torch.zeros(score.shape, dtype=torch.bool, device=h.device).scatter_(-1, chosen, True)

    @torch.no_grad()
    def balance(self, active: torch.Tensor) -> None:
        """FlyLoRA's sign rule: ``d_j += u sign(mean(c) - c_j)``, c_j the tokens routed to expert j."""
        if self.bias_u == 0.0:
            return
        counts = active.reshape(-1, self.rank).sum(0).float()
        self.expert_bias.add_(torch.sign(counts.mean() - counts), alpha=self.bias_u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        xa = drop_input(x, self.dropout, self.generator) if self.training and self.dropout > 0 else x
        h = self.project(xa)
        active = self.route(h)
        if self.records_routing:
            self.last_active = active.reshape(-1, self.rank)
            self.balance(active)
        return result + F.linear(h * active.to(h.dtype), self.lora_B) * self.scaling

    def orth_loss(self) -> torch.Tensor:
        """Eq. (7) on the active sets of the last training forward (0 before any)."""
        if self.last_active is None:
            return self.lora_B.sum() * 0.0
        return orthogonality_loss(self.lora_B, self.last_active)


def inject_flylora(model: nn.Module, target_modules, *, rank: int, k: int, alpha: float, **options
                   ) -> dict[str, FlyLoRALayer]:
    """Replace every Linear / Conv1D that ``target_modules`` names (peft's rule, see
    :func:`agents.adapters.layer.inject_adapters`) by a :class:`FlyLoRALayer` (``options``: its keyword
    arguments), and freeze every parameter of the model that is not a FlyLoRA layer's trained one (B, the gate, A
    when trainable). Returns the new layers by qualified name in module order."""
    return replace_targets(model, target_modules, lambda module: FlyLoRALayer(module, rank, k, alpha, **options))


class FlyLoRAAgent(AdapterAgent):
    """FlyLoRA on a frozen causal LM: r = 32 rank-1 experts, k = 8 active per token, a Gaussian A of density 0.25
    (the papers' rho = k / r), alpha = 2 r (``alpha`` None; FlyLoRA's code and MMLU script), AdamW at 3e-4 without
    weight decay (their MMLU script), load-balancing step u = 1e-3, no dropout.

    Hyperparameters beyond :class:`AdapterAgent`'s (whose ``components`` must stay 1): ``k``, ``density``,
    ``a_init``, ``bias_u``, ``gate`` ("none" | "static" | "context"), ``gate_hidden`` (d_h), ``gate_lr`` (None: lr;
    the gate's parameters are the optimiser's second param group), ``trainable_a``, ``orth_lambda`` (lambda of eq. 8;
    the loss enters through :meth:`regularizer`). The learning rate is constant by default, as the tables in
    docs/adapters.md were measured; NeuroLoRA's cosine schedule with 3% warm-up is ``lr_schedule="cosine",
    lr_warmup=0.03`` (the base agent's schedule, on both parameter groups in proportion).
    """

    NAME = "flylora"
    DEFAULTS = dict(rank=32, k=8, density=0.25, a_init="gaussian", alpha=None, bias_u=1e-3, gate="none",
                    gate_hidden=64, gate_lr=None, trainable_a=False, orth_lambda=0.0, optimizer="adamw", lr=3e-4,
                    weight_decay=0.0)

    def adapt(self, model: nn.Module) -> dict[str, nn.Module]:
        h = self.hparams
        if h["components"] != 1:
            raise ValueError(f"{self.NAME} has one set of r rank-1 experts per layer: components must be 1, got "
                             f"{h['components']!r} (set rank for the number of experts)")
        _finite("orth_lambda", h["orth_lambda"])
        if h["gate_lr"] is not None:
            _finite("gate_lr", h["gate_lr"], strict=True)
        rank = _positive_int("rank", h["rank"])
        # the gate draws from a generator of its own, so one seed gives every agent of the family the same A (which
        # parameter-space merging relies on) and the same Gaussian B from the adapter generator
        self.gate_generator = torch.Generator(device=self.device).manual_seed(int(h["seed"]) + 2_000_003)
        return inject_flylora(model, self.target_patterns, rank=rank, k=h["k"],
                              alpha=float(2 * rank if h["alpha"] is None else h["alpha"]),
                              dropout=h["adapter_dropout"], density=h["density"], a_init=h["a_init"],
                              bias_u=h["bias_u"], gate=h["gate"], gate_hidden=h["gate_hidden"],
                              trainable_a=h["trainable_a"], init_b_std=h["init_b_std"],
                              generator=self.adapter_generator, gate_generator=self.gate_generator)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The base's optimiser over B (and A when trainable), with the gate's parameters moved to a second param
        group at ``gate_lr`` (the optimiser's other settings, weight decay included, apply to both)."""
        optimizer = super().build_optimizer()
        gate = [p for layer in self.adapters for p in layer.gate_parameters() if p.requires_grad]
        if gate:
            ids = {id(p) for p in gate}
            group = optimizer.param_groups[0]
            group["params"] = [p for p in group["params"] if id(p) not in ids]
            gate_lr = self.hparams["gate_lr"]
            optimizer.add_param_group({"params": gate, "lr": float(self.hparams["lr"] if gate_lr is None else gate_lr)})
        return optimizer

    def forward_with_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, L, V); FlyLoRA routes each token itself, so there is no component mask (``mask`` must be
        None)."""
        if mask is not None:
            raise ValueError(f"{self.NAME} routes every token by its own top-k; it takes no component mask")
        return super().forward_with_mask(x, None)

    def orthogonality_loss(self) -> torch.Tensor:
        """Eq. (7) averaged over the adapted layers, on each layer's last training forward."""
        return torch.stack([layer.orth_loss() for layer in self.adapters]).mean()

    def regularizer(self):
        reg = super().regularizer()
        lam = float(self.hparams["orth_lambda"])
        return reg if lam == 0.0 else reg + lam * self.orthogonality_loss()


class NeuroLoRAAgent(FlyLoRAAgent):
    """NeuroLoRA (Appendix B): FlyLoRA's r = 32, k = 8, rho = 0.25 plus the context gate (d_h = 64) and the
    orthogonality loss (lambda = 0.1); AdamW with betas (0.9, 0.95) and weight decay 0.01, lr 2e-4 for B and 5e-4
    for the gate; alpha = 16."""

    NAME = "neurolora"
    DEFAULTS = dict(gate="context", gate_hidden=64, orth_lambda=0.1, alpha=16.0, optimizer="adamw", lr=2e-4,
                    gate_lr=5e-4, betas=(0.9, 0.95), weight_decay=0.01)


class NeuroLoRANoOrthAgent(NeuroLoRAAgent):
    """Table 4's "w/o L_orth": NeuroLoRA with lambda = 0."""

    NAME = "neurolora_no_orth"
    DEFAULTS = dict(orth_lambda=0.0)


class NeuroLoRANoGateAgent(NeuroLoRAAgent):
    """Table 4's "w/o modulation gate": FlyLoRA's routing under NeuroLoRA's training (the orthogonality loss kept)."""

    NAME = "neurolora_no_gate"
    DEFAULTS = dict(gate="none")


class NeuroLoRAStaticGateAgent(NeuroLoRAAgent):
    """Table 4's "w/ static gate (m_x = const)": one learned vector per layer instead of the context gate."""

    NAME = "neurolora_static_gate"
    DEFAULTS = dict(gate="static")


class NeuroLoRATrainableAAgent(NeuroLoRAAgent):
    """Table 4's "w/ trainable A": A is trained with B (at B's learning rate, with weight decay); it starts sparse."""

    NAME = "neurolora_trainable_a"
    DEFAULTS = dict(trainable_a=True)
