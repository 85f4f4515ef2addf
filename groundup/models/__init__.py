"""Models: Keras-style layers and Sequential, and the GPT family (gpt2 and llama flavours)."""

from groundup.models.gpt import GPT, PRESETS, GPTConfig

# Registry of model families built from configs, by name.
MODELS = {"gpt": GPT}

__all__ = ["GPT", "GPTConfig", "MODELS", "PRESETS"]
