"""Models: plain `nn.Module`s that know no trainer: the GPT family (gpt2 and llama flavours) and BERT."""

from groundup.models.bert import (
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from groundup.models.gpt import GPT, PRESETS, GPTConfig

# Registry of model families built from configs, by name.
MODELS = {"gpt": GPT, "bert": Bert}

__all__ = [
    "GPT",
    "MODELS",
    "PRESETS",
    "Bert",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "GPTConfig",
]
