"""`groundup export RUN --format hf --out DIR`: a model folder transformers loads as it is."""

from __future__ import annotations

from pathlib import Path

from groundup.errors import ConfigError

FORMATS = ("hf",)


def run_export(
    run: str | Path,
    out: str | Path,
    format: str = "hf",
    overwrite: bool = False,
    allow_pickle: bool = False,
    verbose: int = 1,
) -> Path:
    """Write the model of `run` (a pretrain or finetune run; LoRA adapters merged) to `out`."""
    from groundup.interop.hf_export import export_hf
    from groundup.models.folders import load_model

    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    tm = load_model(run, allow_pickle=allow_pickle)
    path = export_hf(tm.model, out, tokenizer=tm.tokenizer, labels=tm.labels, overwrite=overwrite)
    if verbose:
        kind = "classifier" if tm.labels else "model"
        print(
            f"exported the {tm.family} {kind} of {run} to {path} (Hugging Face format); load it "
            f"with transformers.AutoModel*.from_pretrained({str(path)!r})",
            flush=True,
        )
    return path
