"""`groundup generate RUN --prompt TEXT`: text from a language model folder, streamed.

A pretrain or causal-LM run continues the prompt; an SFT run answers it as a user turn of its
chat template, the way it was trained. The sample's settings are checked (SampleConfig) before
the model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from groundup.errors import ConfigError
from groundup.generate import SampleConfig, sample_reply, sample_text


def run_generate(
    run: str | Path, sample: SampleConfig, device: str = "auto", allow_pickle: bool = False
) -> str:
    """Stream and return the generated text of the model in `run`."""
    from groundup.models.folders import load_model
    from groundup.train.device import resolve_device

    target = resolve_device(device)
    loaded = load_model(run, allow_pickle=allow_pickle)
    if loaded.task == "classification":
        raise ConfigError(f"{run} holds a classifier; generate needs a language model")
    if loaded.task == "mlm":
        raise ConfigError(
            f"{run} holds a masked language model (BERT), which fills in [MASK] tokens but does "
            "not generate text; fine-tune it (groundup finetune, task classification) or use a "
            "GPT run"
        )
    model = loaded.model.to(target)
    if loaded.task == "sft":
        template = loaded.meta.get("template", "auto")
        return sample_reply(model, loaded.tokenizer, sample, template, stream=True)
    return sample_text(model, loaded.tokenizer, sample, stream=True)
