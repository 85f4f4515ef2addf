"""`groundup export RUN --format hf|gguf|peft --out PATH`: a model others load as it is.

- hf: a Hugging Face folder (config, safetensors, tokenizer) transformers loads; LoRA merged.
- gguf: one .gguf file llama.cpp and Ollama run (f16, q8_0 or f32); LoRA merged; an SFT run
  carries its chat template.
- peft: a LoRA run's adapter alone, in PEFT's format, for the Hugging Face export of its base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundup.errors import ConfigError

FORMATS = ("hf", "gguf", "peft")
GGUF_DTYPES = ("f16", "q8_0", "f32")


def run_export(
    run: str | Path,
    out: str | Path,
    format: str = "hf",
    overwrite: bool = False,
    allow_pickle: bool = False,
    verbose: int = 1,
    dtype: str | None = None,
) -> Path:
    """Write the model of `run` (a pretrain or finetune run, or a model folder) to `out` in
    `format`; `dtype` (gguf only): f16 (default), q8_0 or f32. Returns the path written."""
    from groundup.models.folders import load_model, model_folder, read_json

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    if dtype is not None and format != "gguf":
        raise ConfigError(f"--dtype applies to --format gguf only; drop it for --format {format}")
    if format == "gguf" and (dtype or "f16") not in GGUF_DTYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(GGUF_DTYPES)}")
    if format in ("gguf", "peft"):
        _check_kind(run, read_json(model_folder(run) / "config.json"), format)
    tm = load_model(run, allow_pickle=allow_pickle)
    if format == "hf":
        from groundup.interop.hf_export import export_hf

        path = export_hf(
            tm.model,
            out,
            tokenizer=tm.tokenizer,
            labels=tm.labels,
            overwrite=overwrite,
            chat_template=tm.meta.get("template") if tm.task == "sft" else None,
        )
        how = f"transformers.AutoModel*.from_pretrained({str(path)!r})"
        what = "Hugging Face format"
    elif format == "gguf":
        from groundup.interop.gguf_export import export_gguf

        path = export_gguf(
            tm.model,
            out,
            tm.tokenizer,
            dtype=dtype or "f16",
            chat_template=_chat_template(tm),
            name=_run_name(run),
            overwrite=overwrite,
        )
        how = f"llama-cli -m {path} (or an Ollama Modelfile: FROM ./{path.name})"
        what = f"GGUF, {dtype or 'f16'}"
        if tm.model.config.flavour == "gpt2" and tm.model.config.activation == "gelu":
            how += "; note: llama.cpp's gpt2 computes GPT-2's tanh GELU, not the exact one"
    else:
        from groundup.interop.peft_adapter import export_peft

        base = str(tm.meta.get("base", ""))
        path = export_peft(tm.model, out, base_model_name_or_path=base, overwrite=overwrite)
        how = (
            f"peft.PeftModel.from_pretrained(base, {str(path)!r}), base being the Hugging Face "
            f"export of {base} (groundup export {base} --format hf --out DIR)"
        )
        what = "PEFT LoRA adapter"
    if verbose:
        kind = "adapter" if format == "peft" else ("classifier" if tm.labels else "model")
        print(
            f"exported the {tm.family} {kind} of {run} to {path} ({what}); load it with {how}",
            flush=True,
        )
    return path


def _check_kind(run: str | Path, meta: dict[str, Any], format: str) -> None:
    """Refuse, before any weight is read, a model the format cannot hold."""
    finetuned = meta.get("model_type") == "groundup-finetuned"
    if format == "peft" and not (finetuned and meta.get("method") == "lora"):
        raise ConfigError(
            f"--format peft writes the adapter of a LoRA fine-tune run and {run} is not one "
            "(a full fine-tune, pretrain run or model folder); export it with --format hf or gguf"
        )
    task = meta.get("task") if finetuned else None
    family = meta.get("family") if finetuned else None
    if task == "classification" or family == "bert" or meta.get("model_type") == "bert":
        raise ConfigError(
            f"--format {format} writes GPT language models (causal_lm and sft runs, pretrain "
            f"runs); {run} holds a {family or 'bert'} {task or 'model'}: export it with "
            "--format hf"
        )


def _run_name(run: str | Path) -> str:
    path = Path(run).resolve()
    return path.parent.name if path.name == "model" else path.name


def _chat_template(tm: Any) -> str | None:
    """An SFT run's chat template as Jinja (for the GGUF tokenizer.chat_template), else None."""
    if tm.task != "sft":
        return None
    from groundup.finetune.sft import get_template
    from groundup.interop.gguf_export import portable_chat_template

    # the one call site that turns a run's saved template (a name, file or Jinja string) into
    # Jinja text: finetune/sft.py owns templates
    source = get_template(tm.meta.get("template", "auto"), tm.tokenizer).source
    return portable_chat_template(source)
