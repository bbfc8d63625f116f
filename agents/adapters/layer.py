"""The LoRA layer every adapter method builds on: plain LoRA, and LoRA-FTN's mask-routed pool of rank-r components.

LoRA (Hu et al., 2022, "LoRA: Low-rank adaptation of large language models", ICLR) freezes a pretrained weight W
and trains a low-rank update, ``y = W x + (alpha / r) B A x`` with ``A`` (r x in) and ``B`` (out x r); ``A`` starts
uniform and ``B`` at zero, so the adapted model starts exactly at the base model.

LoRA-FTN (002_b6d509c9f1140765.txt, Section 2 eq. (1), Appendix D eq. (2)) replaces the one update by a pool of H
rank-r components routed by one binary mask m in {0, 1}^H shared across all adapted layers:
``Delta W(m) = sum_j m_j B_j A_j``. Theorem D.1: a component with m_j = 0 is multiplied by zero in every forward pass,
so the gradient with respect to its A_j and B_j is exactly zero. LoRA-Bank (same paper, Section 3) is a pool whose
B starts as a small Gaussian (``init_b_std``) to break the symmetry between components.

Layout: the components are stacked, ``lora_A = [A_1; ...; A_H]`` of shape (H r, in) and ``lora_B = [B_1, ..., B_H]``
of shape (out, H r), so component j owns rows ``j r .. (j + 1) r`` of A and the same columns of B
(:meth:`LoRALayer.component_slice`), and

    y = base(x) + scaling * B ((m (x) 1_r) * (A dropout(x))),      scaling = alpha / r

with H = 1 and no mask this is plain LoRA, the same computation as the ``peft`` library's LoRA layer. The mask may
be relaxed (in [0, 1]^H, with a gradient: the SmoothKWTA configurer of :mod:`agents.common.masks` differentiates
through it); a set mask stays until it is replaced or cleared with None.

Plain LoRA adapters (H = 1) are saved and loaded in the ``peft`` library's format (:func:`save_peft`,
:func:`load_peft`). ``transformers`` (GPT-2's ``Conv1D``), ``safetensors`` and ``peft`` are the optional
``adapters`` extra: nothing here imports them at module level.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoRALayer", "AdapterLayer", "is_adaptable", "is_conv1d", "base_features", "drop_input",
           "replace_targets", "inject_adapters", "adapted_layers", "set_component_mask", "adapter_parameters",
           "adapter_state_dict", "load_adapter_state_dict", "save_peft", "load_peft", "PEFT_CONFIG_NAME",
           "PEFT_WEIGHTS_NAME"]

#: The file names ``peft``'s ``save_pretrained`` writes and ``PeftModel.from_pretrained`` reads.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
#: ``peft`` keys the adapted model's modules under its ``PeftModel.base_model`` (the tuner) ``.model``.
PEFT_KEY_PREFIX = "base_model.model."
#: ``peft.TaskType`` values (a PeftModel subclass per task type; all keep the same weight keys).
PEFT_TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def _conv1d_class():
    """``transformers.pytorch_utils.Conv1D``, or None when transformers is not loaded: a Conv1D instance can only
    exist once its module is imported, so there is no need to import transformers (slow, optional) to recognise one."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is GPT-2's ``Conv1D`` (weight stored (in, out), ``y = x W + b``)."""
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_adaptable(module: nn.Module) -> bool:
    """Whether an adapter layer can wrap ``module``: a ``torch.nn.Linear`` or a GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def base_features(base: nn.Module, owner: str) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a Linear / Conv1D base layer (``fan_in_fan_out``: the
    weight is stored (in, out), as Conv1D stores it); a ``TypeError`` naming ``owner`` for any other module."""
    if not is_adaptable(base):
        raise TypeError(f"{owner} adapts torch.nn.Linear or transformers' Conv1D, got {type(base).__name__}")
    fan_in_fan_out = is_conv1d(base)
    # nn.Linear stores its weight as (out, in), Conv1D as (in, out)
    in_features, out_features = base.weight.shape if fan_in_fan_out else base.weight.shape[::-1]
    return int(in_features), int(out_features), fan_in_fan_out


def drop_input(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout of an adapter's input with probability ``p``, the masks drawn from ``generator`` (a layer
    calls it in train mode only; the base layer sees ``x`` itself)."""
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1.0 - p)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """peft's rule for a list of ``target_modules``: the qualified name equals a pattern or ends with "." + it."""
    return any(name == p or name.endswith("." + p) for p in patterns)


class AdapterLayer(nn.Module):
    """Base of the layers that wrap a frozen Linear / Conv1D kept as ``self.base`` (:class:`LoRALayer`; FlyLoRA's
    layer in :mod:`agents.adapters.flylora`): injection treats one as the module it adapts (its insides are not
    targets, and it cannot be adapted again)."""


class LoRALayer(AdapterLayer):
    """A frozen ``nn.Linear`` or GPT-2 ``Conv1D`` plus a pool of ``components`` rank-``rank`` LoRA components.

    Args:
        base: the layer to adapt; its parameters are frozen (``requires_grad=False``) and kept as ``self.base``.
            ``Conv1D`` stores its weight as (in, out) and computes ``x W + b``; ``fan_in_fan_out`` records it.
        rank: r, the rank of each component.
        alpha: LoRA's alpha; the update is scaled by ``alpha / r``.
        dropout: dropout probability on the adapter's input (the base sees ``x`` itself), as in peft.
        components: H, the number of rank-r components (1: plain LoRA).
        init_b_std: 0 (LoRA's init: B = 0, the initial update is exactly zero) or the standard deviation of a
            Gaussian B (LoRA-Bank's symmetry breaking).
        generator: draws A's (and B's) initialisation and, in train mode, the dropout masks (None: torch's global
            generator). It must live on the base layer's device.

    ``lora_A`` (H r, in) is initialised as peft initialises LoRA's A (``kaiming_uniform_`` with a = sqrt(5), i.e.
    uniform in +-1/sqrt(in)); both live on the base weight's device with its dtype. ``mask`` is None or a tensor of
    shape (H,) in [0, 1] (:meth:`set_mask`); it is not a buffer, so ``.to()`` does not move it and ``state_dict``
    does not hold it, and a relaxed mask that carries a graph must be cleared before the model is deep-copied.
    After :meth:`merge` the update lives in the base weight and the forward pass is the base layer's alone (no
    gradient reaches A or B) until :meth:`unmerge`.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, *, dropout: float = 0.0, components: int = 1,
                 init_b_std: float = 0.0, generator: torch.Generator | None = None):
        super().__init__()
        in_features, out_features, fan_in_fan_out = base_features(base, "LoRALayer")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if isinstance(components, bool) or not isinstance(components, int) or components < 1:
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not (math.isfinite(float(init_b_std)) and float(init_b_std) >= 0.0):
            raise ValueError(f"init_b_std must be >= 0, got {init_b_std!r}")
        self.base = base
        self.base.requires_grad_(False)
        self.fan_in_fan_out = fan_in_fan_out
        weight = base.weight
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha, self.components = rank, float(alpha), components
        self.scaling = self.alpha / rank
        self.dropout = float(dropout)
        self.init_b_std = float(init_b_std)
        self.generator = generator
        pool = components * rank
        self.lora_A = nn.Parameter(torch.empty(pool, self.in_features, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, pool, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        if self.init_b_std > 0:
            nn.init.normal_(self.lora_B, std=self.init_b_std, generator=generator)
        # A plain attribute, not a buffer: a relaxed mask carries the configurer's graph and is not model state.
        self.mask: torch.Tensor | None = None
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, components={self.components}, "
                f"alpha={self.alpha:g}, dropout={self.dropout:g}, fan_in_fan_out={self.fan_in_fan_out}, "
                f"merged={self.merged}")

    def component_slice(self, j: int) -> slice:
        """Component j's rows of ``lora_A`` and columns of ``lora_B``."""
        if not 0 <= j < self.components:
            raise IndexError(f"component {j} out of range: the layer has {self.components}")
        return slice(j * self.rank, (j + 1) * self.rank)

    def _checked_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """``mask`` validated for this layer and moved to its device (the graph, if any, is kept)."""
        if self.merged:
            raise RuntimeError("a merged LoRA layer cannot take a new mask: unmerge() it first")
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"the component mask must be a tensor of shape ({self.components},) or None, "
                            f"got {type(mask).__name__}")
        if mask.shape != (self.components,):
            raise ValueError(f"the component mask must have shape ({self.components},) (one entry per component), "
                             f"got {tuple(mask.shape)}")
        if mask.dtype == torch.bool:
            mask = mask.float()
        if not mask.is_floating_point():
            raise TypeError(f"the component mask must be floating point (or bool), got {mask.dtype}")
        with torch.no_grad():
            if not bool(((mask >= 0) & (mask <= 1)).all()):
                raise ValueError(f"the component mask must lie in [0, 1], got values in "
                                 f"[{float(mask.min()):g}, {float(mask.max()):g}]")
        return mask.to(device=self.lora_A.device)

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Route the components with ``mask`` (shape (H,), binary or relaxed in [0, 1]); None: every component on."""
        self.mask = self._checked_mask(mask)

    def mask_is_binary(self) -> bool:
        """Whether the mask is None or has only 0 and 1 entries (what :meth:`merge` needs)."""
        return self.mask is None or bool(((self.mask == 0) | (self.mask == 1)).all())

    def _rank_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """m (x) 1_r: each component's mask entry repeated over its r rank entries, shape (H r,)."""
        return self.mask.to(dtype).repeat_interleave(self.rank)

    def _routed_B(self) -> torch.Tensor:
        """B with each component's columns scaled by its mask entry: B diag(m (x) 1_r)."""
        return self.lora_B if self.mask is None else self.lora_B * self._rank_mask(self.lora_B.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B diag(m (x) 1_r) A`` in (out, in) orientation (``nn.Linear``'s)."""
        return self.scaling * (self._routed_B() @ self.lora_A)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0.0:
            return x
        return drop_input(x, self.dropout, self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        hidden = F.linear(self._drop(x), self.lora_A)
        if self.mask is not None:
            # mask the rank-r code between A and B: a zero entry cuts both A_j's and B_j's gradient (Theorem D.1)
            hidden = hidden * self._rank_mask(hidden.dtype)
        return result + F.linear(hidden, self.lora_B) * self.scaling

    def _apply_delta(self, sign: float) -> None:
        with torch.no_grad():
            delta = self.delta_weight()
            weight = self.base.weight
            weight.add_((delta.T if self.fan_in_fan_out else delta).to(weight.dtype), alpha=sign)

    def merge(self) -> None:
        """Add the update into the base weight; the forward pass then runs the base layer alone."""
        if self.merged:
            raise RuntimeError("the LoRA layer is already merged")
        if not self.mask_is_binary():
            raise ValueError("cannot merge a LoRA layer while a relaxed (non-binary) component mask is set: "
                             "binarise it (e.g. with agents.common.masks.kwta) or clear it with set_mask(None)")
        self._apply_delta(+1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Subtract the update from the base weight again (the weight is restored to within float rounding)."""
        if not self.merged:
            raise RuntimeError("the LoRA layer is not merged")
        self._apply_delta(-1.0)
        self.merged = False


def _walk(model: nn.Module):
    """(qualified name, module) in ``named_modules`` order, with the insides of adapter layers left out (an
    :class:`AdapterLayer` stands for the module it adapts)."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, AdapterLayer):
            inside.append(name + ".")
        yield name, module


def adapted_layers(model: nn.Module, kind: type = None) -> dict[str, AdapterLayer]:
    """Every adapter layer of class ``kind`` (default :class:`LoRALayer`; e.g. FlyLoRA's layer) of ``model`` by
    qualified name, in module order (``model.named_modules()``'s: registration order, depth first). Every function
    here that lists or flattens adapters uses this order."""
    kind = LoRALayer if kind is None else kind
    return {name: module for name, module in model.named_modules() if isinstance(module, kind)}


def replace_targets(model: nn.Module, target_modules: str | Iterable[str],
                    build: Callable[[nn.Module], AdapterLayer]) -> dict[str, AdapterLayer]:
    """Replace, in place, every ``nn.Linear`` / GPT-2 ``Conv1D`` of ``model`` that ``target_modules`` names by
    ``build(module)`` (an :class:`AdapterLayer` wrapping it), with the matching rule and the checks of
    :func:`inject_adapters` (which see); every target is checked before any is replaced. Freezing the rest of the
    model is done here too: afterwards only the adapter layers' own trainable parameters (in any adapter layer of the
    model) require gradients. Returns the new layers by qualified name in module order."""
    patterns = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"target_modules must be one or more non-empty module names, got {target_modules!r}")
    modules = list(_walk(model))
    targets = [(name, module) for name, module in modules if name and _matches(name, patterns)]
    if not targets:
        candidates = [name for name, module in modules if name and is_adaptable(module)]
        raise ValueError(f"no module of the model matches target_modules={patterns} (a qualified name equal to a "
                         f"pattern or ending with '.' + pattern); the Linear / Conv1D modules are: "
                         f"{candidates or 'none'}")
    for name, module in targets:
        parent = model.get_submodule(name.rpartition(".")[0])
        if isinstance(module, AdapterLayer):
            raise ValueError(f"{name!r} is adapted already")
        if not is_adaptable(module):
            raise TypeError(f"target_modules={patterns} matches {name!r}, a {type(module).__name__}: only "
                            f"torch.nn.Linear and transformers' Conv1D can be adapted")
        if isinstance(parent, nn.MultiheadAttention):
            # it reads out_proj.weight directly instead of calling out_proj: a wrapper would be bypassed
            raise TypeError(f"{name!r} belongs to a torch.nn.MultiheadAttention, which does not call it: "
                            f"it cannot be adapted")
    layers = {}
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        layer = build(module)
        setattr(model.get_submodule(parent_name), child, layer)
        layers[name] = layer
    trainable = {id(p) for m in model.modules() if isinstance(m, AdapterLayer) for p in m.parameters()
                 if p.requires_grad}
    for p in model.parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
    return layers


def inject_adapters(model: nn.Module, target_modules: str | Iterable[str], *, rank: int, alpha: float,
                    dropout: float = 0.0, components: int = 1, init_b_std: float = 0.0,
                    generator: torch.Generator | None = None) -> dict[str, LoRALayer]:
    """Replace, in place, every ``nn.Linear`` / GPT-2 ``Conv1D`` of ``model`` that ``target_modules`` names by a
    :class:`LoRALayer` (``rank``, ``alpha``, ``dropout``, ``components``, ``init_b_std``, ``generator``: see there),
    and freeze every parameter of the model that is not an adapter's.

    Matching is peft's rule for a list of target modules: a module is targeted when its qualified name (as
    ``model.named_modules()`` gives it) equals a pattern or ends with "." + the pattern, so ``"c_attn"`` targets
    ``transformer.h.0.attn.c_attn`` and ``"h.0.attn.c_attn"`` only that one. A single string is one such pattern
    (not a regular expression, unlike peft's string form). A targeted module that is neither Linear nor Conv1D, or
    is adapted already, is an error, and so is a list that targets nothing (the error lists the candidates).

    Returns the new layers by qualified name in module order (see :func:`adapted_layers`).
    """
    layers = replace_targets(model, target_modules, lambda module: LoRALayer(
        module, rank, alpha, dropout=dropout, components=components, init_b_std=init_b_std, generator=generator))
    return layers


def _layer_list(model_or_layers) -> list[LoRALayer]:
    if isinstance(model_or_layers, nn.Module):
        layers = list(adapted_layers(model_or_layers).values())
    elif isinstance(model_or_layers, Mapping):
        layers = list(model_or_layers.values())
    else:
        layers = list(model_or_layers)
    if not layers:
        raise ValueError("no LoRA layer given (inject_adapters first)")
    bad = [type(layer).__name__ for layer in layers if not isinstance(layer, LoRALayer)]
    if bad:
        raise TypeError(f"expected LoRA layers, got {bad}")
    return layers


def set_component_mask(model_or_layers, mask: torch.Tensor | None) -> None:
    """Set one component mask on every LoRA layer of a model (or of a dict / list of layers): LoRA-FTN's single mask
    shared across layers, so component j spans the network's depth. The same tensor reaches every layer (a relaxed
    mask's gradient sums over them). Every layer is checked before any is changed."""
    layers = _layer_list(model_or_layers)
    checked = [layer._checked_mask(mask) for layer in layers]
    for layer, m in zip(layers, checked):
        layer.mask = m


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trained parameters, ``[A, B]`` per LoRA layer in module order (what the optimiser gets)."""
    return [p for layer in adapted_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the adapters, ``{"<name>.lora_A": A, "<name>.lora_B": B}`` in module order (the model's own
    ``state_dict`` keys; the base weights are not included)."""
    state = {}
    for name, layer in adapted_layers(model).items():
        prefix = f"{name}." if name else ""
        state[prefix + "lora_A"] = layer.lora_A.detach().clone()
        state[prefix + "lora_B"] = layer.lora_B.detach().clone()
    return state


def load_adapter_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (as :func:`adapter_state_dict` writes it) into the model's adapters. Keys and shapes are checked
    first: on any mismatch nothing changes. Merged layers refuse (their base weight holds the old update)."""
    layers = adapted_layers(model)
    targets = {}
    for name, layer in layers.items():
        prefix = f"{name}." if name else ""
        targets[prefix + "lora_A"], targets[prefix + "lora_B"] = layer.lora_A, layer.lora_B
    missing, unexpected = sorted(targets.keys() - state.keys()), sorted(state.keys() - targets.keys())
    if missing or unexpected:
        raise KeyError(f"adapter state does not fit the model: missing {missing}, unexpected {unexpected}")
    wrong = {k: (tuple(state[k].shape), tuple(p.shape)) for k, p in targets.items()
             if not isinstance(state[k], torch.Tensor) or state[k].shape != p.shape}
    if wrong:
        raise ValueError(f"adapter state shapes do not fit the model (given, expected): {wrong}")
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise RuntimeError(f"cannot load adapters into merged layers {merged}: unmerge() them first")
    with torch.no_grad():
        for k, p in targets.items():
            p.copy_(state[k])


def _write_atomically(path: Path, write) -> None:
    """``write(temp_path)``, then rename the temporary file (same directory) over ``path``: readers see the old file
    or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as exc:
        raise ImportError("the peft adapter format needs safetensors: pip install 'clenv[adapters]'") from exc
    return safetensors.torch


def save_peft(model: nn.Module, directory: str | os.PathLike, *, base_model_name_or_path: str | None = None,
              task_type: str | None = None) -> Path:
    """Write the model's LoRA adapters as the ``peft`` library writes them (``PeftModel.save_pretrained``), so that
    ``peft.PeftModel.from_pretrained(base_model, directory)`` loads them: ``adapter_config.json`` (a ``LoraConfig``)
    and ``adapter_model.safetensors`` with keys ``base_model.model.<module path>.lora_A.weight`` (r, in) and
    ``.lora_B.weight`` (out, r).

    Only plain LoRA fits that format: every layer must have one component, no mask other than all ones, and the same
    rank, alpha and dropout (peft's config has one of each). ``task_type`` is a ``peft.TaskType`` name or None
    (a plain ``PeftModel``). Both files are written atomically. Returns the directory.
    """
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layer to save (inject_adapters first)")
    if "" in layers:
        raise ValueError("a bare LoRALayer has no module path for the peft format: save the model that holds it")
    pools = [name for name, layer in layers.items() if layer.components != 1]
    if pools:
        raise ValueError(f"the peft format holds plain LoRA (components == 1); layers {pools} are pools of "
                         f"components (save them with adapter_state_dict)")
    masked = [name for name, layer in layers.items() if layer.mask is not None and not bool((layer.mask == 1).all())]
    if masked:
        raise ValueError(f"layers {masked} have a component mask that switches the adapter off or scales it, which "
                         f"the peft format cannot express: clear it with set_component_mask(model, None)")
    settings = {(layer.rank, layer.alpha, layer.dropout) for layer in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"the peft config has one rank, alpha and dropout; the layers have {sorted(settings)}")
    if task_type is not None and task_type not in PEFT_TASK_TYPES:
        raise ValueError(f"task_type must be None or one of {PEFT_TASK_TYPES}, got {task_type!r}")
    ((rank, alpha, dropout),) = settings
    names = list(layers)
    # peft re-targets by its rule; the names themselves are exact unless another module's name ends with one of them
    selected = [name for name, _ in _walk(model) if name and _matches(name, names)]
    target_modules = names if selected == names else "(" + "|".join(re.escape(n) for n in names) + ")"
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": dropout, "target_modules": target_modules, "bias": "none",
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in layers.values()),
        "task_type": task_type, "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
        # peft's defaults, written out so that no later default change alters what the file means
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "lora_bias": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
        "layers_pattern": None,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().cpu().contiguous().clone()
        tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().cpu().contiguous().clone()
    st = _safetensors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # the weights first: a config that is there names weights that are complete
    _write_atomically(directory / PEFT_WEIGHTS_NAME, lambda tmp: st.save_file(tensors, tmp, metadata={"format": "pt"}))
    _write_atomically(directory / PEFT_CONFIG_NAME,
                      lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))
    return directory


def _pattern_value(patterns: Mapping[str, object], name: str, default):
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: the first key that matches the end of the name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def load_peft(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load a LoRA adapter in the ``peft`` format (:func:`save_peft`'s, or ``peft``'s own ``save_pretrained``
    output) into the model's LoRA layers, which must be plain LoRA (one component) with the file's rank and alpha
    on exactly the file's modules (inject them first with :func:`inject_adapters`). The layers keep their own
    dropout. Everything is checked before anything changes."""
    directory = Path(directory)
    config_path, weights_path = directory / PEFT_CONFIG_NAME, directory / PEFT_WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {PEFT_CONFIG_NAME} in {directory}")
    if not weights_path.is_file():
        raise FileNotFoundError(f"no {PEFT_WEIGHTS_NAME} in {directory} (only the safetensors format is read)")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path} is not a LoRA adapter (peft_type={config.get('peft_type')!r})")
    unsupported = {key: config[key] for key, plain in (("use_dora", False), ("use_rslora", False),
                                                       ("lora_bias", False), ("bias", "none"))
                   if config.get(key, plain) != plain}
    if config.get("modules_to_save"):
        unsupported["modules_to_save"] = config["modules_to_save"]
    if unsupported:
        raise ValueError(f"{config_path} uses LoRA variants these layers do not implement: {unsupported}")
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layer to load into (inject_adapters first)")
    pools = [name for name, layer in layers.items() if layer.components != 1]
    if pools:
        raise ValueError(f"the peft format holds plain LoRA; layers {pools} have several components")
    mismatched = {}
    for name, layer in layers.items():
        rank = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"])
        if (layer.rank, layer.alpha) != (rank, float(alpha)):
            mismatched[name] = {"file": (rank, alpha), "layer": (layer.rank, layer.alpha)}
    if mismatched:
        raise ValueError(f"(rank, alpha) of the file and the layers differ: {mismatched}")
    state = {}
    for key, tensor in _safetensors().load_file(str(weights_path)).items():
        match = re.fullmatch(re.escape(PEFT_KEY_PREFIX) + r"(.+)\.(lora_A|lora_B)\.weight", key)
        if match is None:
            raise ValueError(f"{weights_path} holds {key!r}, which is not a LoRA A or B weight")
        state[f"{match[1]}.{match[2]}"] = tensor
    load_adapter_state_dict(model, state)
