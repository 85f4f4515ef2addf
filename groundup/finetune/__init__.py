"""Fine-tuning: LoRA adapters (more tasks arrive with the fine-tuning issue)."""

from groundup.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameters,
)

__all__ = [
    "LoRALinear",
    "apply_lora",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "trainable_parameters",
]
