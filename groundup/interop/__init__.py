"""Hugging Face interop: weight/config converters and model-directory import and export."""

from groundup.interop.bert_weights import (
    bert_config_from_hf,
    bert_config_to_hf,
    bert_state_dict_from_hf,
    bert_state_dict_to_hf,
)
from groundup.interop.gpt_weights import (
    gpt_config_from_hf,
    gpt_config_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)
from groundup.interop.hf_dir import (
    HFModel,
    load_hf_bert,
    load_hf_gpt,
    read_hf_dir,
    read_hf_weights,
)
from groundup.interop.hf_export import export_hf

__all__ = [
    "HFModel",
    "bert_config_from_hf",
    "bert_config_to_hf",
    "bert_state_dict_from_hf",
    "bert_state_dict_to_hf",
    "export_hf",
    "gpt_config_from_hf",
    "gpt_config_to_hf",
    "load_hf_bert",
    "load_hf_gpt",
    "read_hf_dir",
    "read_hf_weights",
    "state_dict_from_hf",
    "state_dict_to_hf",
]
