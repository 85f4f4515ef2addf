"""Fine-tuning: LoRA adapters, instruction-SFT data (prompt masking, chat templates, packing)
and text-classification data (labels, encoding, reports)."""

from groundup.finetune.classification import (
    LabelVocab,
    classification_report,
    encode_texts,
    read_labelled_text,
    write_confusion_matrix,
)
from groundup.finetune.lora import (
    LoRALinear,
    apply_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    save_lora,
    trainable_parameters,
)
from groundup.finetune.sft import (
    CHAT_TEMPLATES,
    Conversation,
    Message,
    SFTTensors,
    encode_prompt,
    encode_sft,
    get_template,
    read_sft_jsonl,
    stop_ids,
)

__all__ = [
    "CHAT_TEMPLATES",
    "Conversation",
    "LabelVocab",
    "LoRALinear",
    "Message",
    "SFTTensors",
    "apply_lora",
    "classification_report",
    "encode_prompt",
    "encode_sft",
    "encode_texts",
    "get_template",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "read_labelled_text",
    "read_sft_jsonl",
    "save_lora",
    "stop_ids",
    "trainable_parameters",
    "write_confusion_matrix",
]
