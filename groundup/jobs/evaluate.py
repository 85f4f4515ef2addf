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
    from groundup.finetune.classification import LabelVocab, encode_texts, read_labelled_text
    from groundup.train.batches import TensorBatches

    texts, labels = read_labelled_text(data, text_field, label_field)
    vocab = LabelVocab.from_list(tm.labels)
    y = vocab.encode(labels, where=str(data))
    style = "bert" if tm.family == "bert" else "gpt"
    ids, _, _ = encode_texts(texts, tm.tokenizer, max_len, style=style, pad_id=tm.pad_id)
    batches = TensorBatches(ids, y, batch_size=batch_size, shuffle=False)
    out = trainer.evaluate(batches, prefix="")
    out.update(classification_results(trainer, batches, tm.labels, out_dir, prefix=f"{stem}_"))
    renamed = {k.removeprefix(f"{stem}_"): v for k, v in out.items()}
    return {"examples": len(texts), **renamed}


def _sft(tm, trainer, data, batch_size, block, meta) -> dict[str, Any]:
    from groundup.finetune.sft import encode_sft, read_sft_jsonl
    from groundup.train.batches import TensorBatches

    examples = read_sft_jsonl(  # the field names the run was trained with
        data,
        **{k: meta[k] for k in ("prompt_field", "response_field", "messages_field") if k in meta},
    )
    t = encode_sft(
        examples,
        tm.tokenizer,
        template=meta.get("template", "auto"),
        block_size=block,
        packing=False,
        pad_id=tm.pad_id,
    )
    out = trainer.evaluate(
        TensorBatches(t.input_ids, t.labels, batch_size=batch_size, shuffle=False), prefix=""
    )
    return {"examples": t.n_examples, "response_tokens": t.n_trainable_tokens, **out}


def _text(tm, trainer, data, batch_size, block, text_field) -> dict[str, Any]:
    """Every token of the text scored once, in consecutive windows of the model's context."""
    import numpy as np

    from groundup.data.corpus import Corpus
    from groundup.data.windows import SequentialWindows

    tok = tm.tokenizer
    eot = tok.eot_id
    pieces: list[np.ndarray] = []
    for doc in Corpus(data, text_field=text_field):
        pieces.append(tok.encode_array(doc))
        if eot is not None:
            pieces.append(np.array([eot], dtype=pieces[-1].dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    block = min(block, max(1, len(tokens) - 1))
    windows = SequentialWindows(tokens, block, batch_size)
    out = trainer.evaluate(windows, prefix="")
    return {"tokens": int(len(tokens)), **out}
