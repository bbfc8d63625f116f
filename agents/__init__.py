"""Agents for clenv streams: one module per method, all built with ``agents.make(name, env, **hparams)``.

Names joined with ``+`` compose methods the way the papers do (``"l2init+ewc"``, ``"cbp+er"``): the classes are
combined into one agent whose hooks all run (see :mod:`agents.base`). ``agents.register(name, "module:Class")``
adds an agent without importing it until it is made.
"""

from __future__ import annotations

import importlib

__all__ = ["make", "resolve", "register", "available", "agent_class", "REGISTRY"]

#: name -> "module:Class", imported lazily.
REGISTRY: dict[str, str] = {
    "base": "agents.base:SupervisedAgent",
    "scratch": "agents.scratch:ScratchAgent",
    "tianshou_dqn": "agents.rl.tianshou_agents:TianshouDQNAgent",
    "tianshou_ppo": "agents.rl.tianshou_agents:TianshouPPOAgent",
    "sb3_dqn": "agents.rl.sb3_agents:SB3DQNAgent",
    "sb3_ppo": "agents.rl.sb3_agents:SB3PPOAgent",
    "neumosync": "agents.neumosync:NeuMoSyncAgent",
    "l2": "agents.l2:L2Agent",
    "l2init": "agents.l2init:L2InitAgent",
    "ewc": "agents.ewc:EWCAgent",
    "cbp": "agents.cbp:CBPAgent",
    "redo": "agents.redo:ReDoAgent",
    "shrink_perturb": "agents.shrink_perturb:ShrinkPerturbAgent",
    "shrink_perturb_continual": "agents.shrink_perturb:ContinualShrinkPerturbAgent",
    "shrink_perturb_to_init": "agents.shrink_perturb:ShrinkPerturbToInitAgent",
    "hare_tortoise": "agents.hare_tortoise:HareTortoiseAgent",
    "crelu": "agents.activations:CReLUAgent",
    "prelu": "agents.activations:PReLUAgent",
    "deepf": "agents.activations:DeepFourierAgent",
    "layernorm": "agents.activations:LayerNormAgent",
    "er": "agents.er:ERAgent",
    "agem": "agents.agem:AGEMAgent",
    "hat": "agents.hat:HATAgent",
    "maml": "agents.maml:MAMLAgent",
    "anml": "agents.anml:ANMLAgent",
    # NGM-SGD (arXiv 2507.14056) and the baselines / ablations of its scripts, on the authors' networks.
    "ngm_sgd": "agents.ngm_sgd:NGMSGDAgent",
    "ngm_entropy_lr": "agents.ngm_sgd:NGMEntropyLRAgent",
    "ngm_fixed_gain": "agents.ngm_sgd:NGMFixedGainAgent",
    "sgd": "agents.ngm_sgd:SGDAgent",
    "momentum_sgd": "agents.ngm_sgd:MomentumSGDAgent",
    "momentum_sgd_reset": "agents.ngm_sgd:MomentumSGDResetAgent",
    "adam": "agents.ngm_sgd:AdamAgent",
    # Functional Task Networks (002_b6d509c9f1140765.txt), Experiment 1's variants and baselines.
    "ftn_slow": "agents.ftn.agent:FTNSlowAgent",
    "ftn_fast": "agents.ftn.agent:FTNFastAgent",
    "kwta": "agents.ftn.agent:KWTAAgent",
    "fixed_mask": "agents.ftn.agent:FixedMaskAgent",
    "no_mask": "agents.ftn.agent:NoMaskAgent",
    "ftn_ewc": "agents.ftn.agent:FTNEWCAgent",
    "supsup": "agents.ftn.agent:SupSupAgent",
    "supsup_wide": "agents.ftn.agent:SupSupWideAgent",
    # FTN's Experiment 2: adapters on a frozen causal LM (language streams only, e.g. StyleShiftText-v0).
    "lora": "agents.adapters.agent:LoRAAgent",
    "lora_naive": "agents.adapters.agent:LoRANaiveAgent",
    "lora_fixed_mask": "agents.adapters.agent:LoRAFixedMaskAgent",
    "lora_ftn": "agents.adapters.agent:LoRAFTNAgent",
    "lora_bank": "agents.adapters.agent:LoRABankAgent",
    # FlyLoRA (Zou et al., NeurIPS 2025), NeuroLoRA (003_2885b6bbae2a6b4c.txt) with its Table 4 ablations, and
    # NeuroLoRA's EWC + LoRA baseline (language streams only).
    "flylora": "agents.adapters.flylora:FlyLoRAAgent",
    "neurolora": "agents.adapters.flylora:NeuroLoRAAgent",
    "neurolora_no_orth": "agents.adapters.flylora:NeuroLoRANoOrthAgent",
    "neurolora_no_gate": "agents.adapters.flylora:NeuroLoRANoGateAgent",
    "neurolora_static_gate": "agents.adapters.flylora:NeuroLoRAStaticGateAgent",
    "neurolora_trainable_a": "agents.adapters.flylora:NeuroLoRATrainableAAgent",
    "ewc_lora": "agents.adapters.ewc_lora:EWCLoRAAgent",
    # 004_49f6201e6e679480.txt: one q / v LoRA adapter per task on a frozen ViT, stored in associative memories.
    "adapter_memory": "agents.adapters.memory.agent:AdapterMemoryAgent",
}


def register(name: str, entry_point: str) -> None:
    """Register ``name`` -> ``"module:Class"``. Names are lower case and may not contain ``+``."""
    if "+" in name or name != name.lower():
        raise ValueError(f"agent names are lower case without '+', got {name!r}")
    REGISTRY[name] = entry_point


def available() -> list[str]:
    return sorted(REGISTRY)


def _load(name: str):
    if ":" in name:  # a user's own class, "package.module:Class"
        module, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load agent {name!r}: {type(err).__name__}: {err} (a user agent is "
                             f"'package.module:Class', importable from the current directory or PYTHONPATH)") from None
        if not isinstance(obj, type):
            raise ValueError(f"agent {name!r} is not a class")
        return obj
    if name not in REGISTRY:
        raise ValueError(f"unknown agent {name!r}; available: {', '.join(available())} "
                         f"(compose with '+', e.g. 'cbp+er')")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _normal(part: str) -> str:
    part = part.strip()
    return part if ":" in part else part.lower()


def agent_class(name: str):
    """The class for ``name`` (a registry name, or ``"package.module:Class"`` for a user's own agent); a
    ``+``-joined name gives the composition of its parts (first name's hooks run outermost)."""
    parts = [_normal(p) for p in name.split("+")]
    classes = [_load(p) for p in parts]
    if len(classes) == 1:
        return classes[0]
    from agents.compose import compose

    return compose(name, classes)


def _paper_row(name: str, env, paper_benchmark) -> tuple[dict, str]:
    """The paper's hyperparameters for ``name`` on ``env`` (or on benchmark ``paper_benchmark``) and their source."""
    from agents.paper_hparams import lookup

    if paper_benchmark is False:
        return {}, "class DEFAULTS"
    row = lookup(name, env, paper_benchmark or None)
    return row.hparams, row.source


def _source(source: str, hparams: dict) -> str:
    return source + (f"; explicit: {', '.join(sorted(hparams))}" if hparams else "")


def resolve(name: str, env, paper_benchmark: str | bool | None = None, **hparams):
    """What :func:`make` would build, without building it: ``(class, hyperparameters, source)``, the
    hyperparameters being the class ``DEFAULTS``, then the paper's row for ``env``'s benchmark
    (:mod:`agents.paper_hparams`), then ``hparams``. An unknown name or hyperparameter is a clear error."""
    from agents.base import resolve_hparams

    cls = agent_class(name)
    values, source = _paper_row(name, env, paper_benchmark)
    return cls, resolve_hparams(cls, {**values, **hparams}), _source(source, hparams)


def make(name: str, env, paper_benchmark: str | bool | None = None, **hparams):
    """Build agent ``name`` for ``env``: the class ``DEFAULTS``, then the paper's row for ``env``'s benchmark
    (:mod:`agents.paper_hparams`), then ``hparams`` (explicit values win). ``paper_benchmark``: a benchmark key
    to take the row from instead of the env's, or False for the class defaults only. ``agent.hparam_source``
    says where the values came from."""
    cls = agent_class(name)
    values, source = _paper_row(name, env, paper_benchmark)
    agent = cls(env, **{**values, **hparams})
    agent.hparam_source = _source(source, hparams)
    return agent
