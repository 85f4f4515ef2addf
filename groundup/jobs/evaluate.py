"""`groundup evaluate RUN --data FILE`: score a trained model on a file the user gives.

Language models (a pretrain run, a causal-LM or SFT fine-tune, a Hugging Face causal LM):
loss and perplexity over the file's tokens (SFT: over response tokens only). Classifiers:
accuracy, macro-F1, per-class figures and the confusion matrix, written beside the run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from groundup.errors import ConfigError


def classification_results(
    trainer: Any, data: Any, labels: list[str], out_dir: Path | None, prefix: str = "test_"
) -> dict[str, Any]:
    """Predict `data`, report accuracy/macro-F1 and write the confusion matrix into `out_dir`."""
    from groundup.finetune.classification import classification_report, write_confusion_matrix

    preds = trainer.predict(data).argmax(-1)
    targets = torch.cat([batch[1] for batch in data])  # the order predict saw: no shuffling
    report = classification_report(preds, targets, labels)
    name = prefix.rstrip("_") or "eval"
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_confusion_matrix(report, out_dir / f"confusion_matrix_{name}.csv")
        (out_dir / f"report_{name}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return {f"{prefix}accuracy": report["accuracy"], f"{prefix}macro_f1": report["macro_f1"]}


def run_evaluate(
    run: str | Path,
    data: str | Path,
    batch_size: int = 16,
    device: str = "auto",
    text_field: str | None = None,
    label_field: str | None = None,
    allow_pickle: bool = False,
    task: str | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """Evaluate the model in `run` (any model folder) on `data`; results are printed and
    saved as `<run>/eval/<file stem>.json` when `run` is a groundup run directory.

    `task` reads the data another way than the model was trained for: "sft" scores a base
    language model on an SFT file (response tokens only), "causal_lm" on every token."""
    from groundup.models.folders import load_model
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    tm = load_model(run, allow_pickle=allow_pickle)
    if tm.task == "mlm":
        raise ConfigError(
            f"{run} holds a masked language model (BERT): evaluate scores causal language "
            "models and classifiers; its masked-token loss and accuracy are in the run's "
            "results.json, and a fine-tuned classifier of it is evaluated as usual"
        )
    if task is not None and task != tm.task:
        if "classification" in (task, tm.task):
            raise ConfigError(
                f"--task {task} does not fit {run}, a {tm.task} model; classifiers and "
                "language models read different data"
            )
        tm.task = task
    meta = tm.meta
    text_field = text_field or meta.get("text_field", "text")
    label_field = label_field or meta.get("label_field", "label")
    trainer = Trainer(
        tm.model,
        loss=SparseCategoricalCrossentropy(from_logits=True),
        device=device,
        precision="fp32",
        verbose=0,
        report_perplexity=tm.task != "classification",
    )
    run_path = Path(run)
    out_dir = run_path / "eval" if (run_path / "config.yaml").is_file() else None
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).stem) or "data"
    block = meta.get("max_len") or tm.model.config.block_size
    if tm.task == "classification":
        results = _classification(
            tm, trainer, data, batch_size, block, text_field, label_field, out_dir, stem
        )
    elif tm.task == "sft":
        results = _sft(tm, trainer, data, batch_size, block, meta)
    else:
        results = _text(tm, trainer, data, batch_size, block, text_field)
    results = {"data": str(data), "task": tm.task, **results}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float))
        print(f"{data}: {shown}", flush=True)
        if out_dir is not None:
            print(f"saved in {out_dir}", flush=True)
    return results


def _classification(
    tm, trainer, data, batch_size, max_len, text_field, label_field, out_dir, stem
) -> dict[str, Any]:
    from groundup.data.task_data import labelled_batches
    from groundup.finetune.classification import LabelVocab, read_labelled_text

    texts, labels = read_labelled_text(data, text_field, label_field)
    vocab = LabelVocab.from_list(tm.labels)
    # the model's pad id, not the tokenizer's rule: a Hugging Face GPT classifier finds where
    # each text ends by its own config's pad id
    batches, _ = labelled_batches(
        texts, labels, vocab, tm.tokenizer, tm.family, max_len, tm.pad_id, batch_size, str(data)
    )
    out = trainer.evaluate(batches, prefix="")
    out.update(classification_results(trainer, batches, tm.labels, out_dir, prefix=f"{stem}_"))
    renamed = {k.removeprefix(f"{stem}_"): v for k, v in out.items()}
    return {"examples": len(texts), **renamed}


def _sft(tm, trainer, data, batch_size, block, meta) -> dict[str, Any]:
    from groundup.data.task_data import sft_batches
    from groundup.finetune.sft import read_sft_jsonl

    examples = read_sft_jsonl(  # the field names the run was trained with
        data,
        **{k: meta[k] for k in ("prompt_field", "response_field", "messages_field") if k in meta},
    )
    template = meta.get("template", "auto")
    batches, t = sft_batches(examples, tm.tokenizer, template, block, tm.pad_id, batch_size)
    out = trainer.evaluate(batches, prefix="")
    return {"examples": t.n_examples, "response_tokens": t.n_trainable_tokens, **out}


def _text(tm, trainer, data, batch_size, block, text_field) -> dict[str, Any]:
    """Every token of the text scored once, in consecutive windows of the model's context."""
    from groundup.data.task_data import text_windows

    windows, n_tokens = text_windows(data, tm.tokenizer, text_field, block, batch_size)
    out = trainer.evaluate(windows, prefix="")
    return {"tokens": n_tokens, **out}
