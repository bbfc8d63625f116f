"""The adapter family: low-rank adapters on a frozen pretrained model. :mod:`agents.adapters.layer` is the one LoRA
layer they share (plain LoRA, Hu et al., 2022; LoRA-FTN's mask-routed pool of components and LoRA-Bank,
002_b6d509c9f1140765.txt, Section 2 and Appendix D), its injection into a model, and the ``peft`` file format. The
component mask is found by the shared configurer (:mod:`agents.common.masks`). :mod:`agents.adapters.agent` holds the
agents on a frozen causal LM: LoRA, LoRA-Naive, LoRA-FixedMask, LoRA-FTN and LoRA-Bank. :mod:`agents.adapters.flylora`
holds FlyLoRA's layer (a frozen sparse random A routing each token to k of r rank-1 experts) and the FlyLoRA and
NeuroLoRA agents; :mod:`agents.adapters.ewc_lora` LoRA with EWC on its parameters."""

from agents.adapters.agent import (AdapterAgent, LoRAAgent, LoRABankAgent, LoRAFixedMaskAgent, LoRAFTNAgent,
                                   LoRANaiveAgent, default_base_model)
from agents.adapters.ewc_lora import EWCLoRAAgent
from agents.adapters.flylora import (FlyLoRAAgent, FlyLoRALayer, NeuroLoRAAgent, NeuroLoRANoGateAgent,
                                     NeuroLoRANoOrthAgent, NeuroLoRAStaticGateAgent, NeuroLoRATrainableAAgent,
                                     inject_flylora, orthogonality_loss)
from agents.adapters.layer import (LoRALayer, adapted_layers, adapter_parameters, adapter_state_dict,
                                   inject_adapters, load_adapter_state_dict, load_peft, save_peft,
                                   set_component_mask)
from agents.adapters.merging import install_merged, task_arithmetic, task_vector, ties_merge

__all__ = ["AdapterAgent", "LoRAAgent", "LoRANaiveAgent", "LoRAFixedMaskAgent", "LoRAFTNAgent", "LoRABankAgent",
           "default_base_model", "LoRALayer", "inject_adapters", "adapted_layers", "set_component_mask",
           "adapter_parameters", "adapter_state_dict", "load_adapter_state_dict", "save_peft", "load_peft",
           "FlyLoRALayer", "inject_flylora", "orthogonality_loss", "FlyLoRAAgent", "NeuroLoRAAgent",
           "NeuroLoRANoOrthAgent", "NeuroLoRANoGateAgent", "NeuroLoRAStaticGateAgent", "NeuroLoRATrainableAAgent",
           "EWCLoRAAgent", "task_vector", "task_arithmetic", "ties_merge", "install_merged"]
