"""`groundup evaluate RUN --data FILE`: score a trained model on a file the user gives.

Language models (a pretrain run, a causal-LM or SFT fine-tune, a Hugging Face causal LM):
loss and perplexity over the file's tokens (SFT: over response tokens only). Classifiers:
accuracy, macro-F1, per-class figures and the confusion matrix, written beside the run.
`groundup train` runs: the file's rows through the run's saved preprocessing, then
accuracy, macro-F1, log loss and the confusion matrix (classification) or mse, mae and r2
(regression). `predictions=FILE` also writes one line per row: a classifier's or train run's
predictions (as `groundup predict` writes them) beside the true target, a language model's
loss per SFT example or per document.
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
    *,
    predictions: str | Path | None = None,
    unseen_category: str = "error",
) -> dict[str, Any]:
    """Evaluate the model in `run` (any model folder) on `data`; results are printed and
    saved as `<run>/eval/<file stem>.json` when `run` is a groundup run directory.

    `task` reads the data another way than the model was trained for: "sft" scores a base
    language model on an SFT file (response tokens only), "causal_lm" on every token.
    `predictions` (a .csv or .jsonl path) also writes the per-row predictions or losses;
    `unseen_category` ("error" or "ignore") is for `groundup train` runs, as in predict."""
    from groundup.jobs.predict import is_sequential_run, output_path
    from groundup.models.folders import load_model
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    pred_path = None if predictions is None else output_path(data, predictions, ".csv")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).stem) or "data"
    if is_sequential_run(run):
        for flag, value in (("--task", task), ("--text-field", text_field)):
            if value is not None:
                raise ConfigError(
                    f"{flag} does not apply to {run}, a groundup train run: its columns and "
                    "task are fixed by its training"
                )
        results, columns, out_dir = _tabular(
            run, data, batch_size, device, label_field, unseen_category, stem, pred_path
        )
        return _finish(results, columns, pred_path, out_dir, stem, verbose)
    tm = load_model(run, allow_pickle=allow_pickle)
    if tm.task == "mlm":
        raise ConfigError(
            f"{run} holds a masked language model (BERT): evaluate scores causal language "
            "models and classifiers; its masked-token loss and accuracy are in the run's "
            "results.json, and a fine-tuned classifier of it is evaluated as usual"
        )
    if tm.task == "reward":
        raise ConfigError(
            f"{run} holds a reward model, which scores (prompt, reply) pairs: its validation "
            "preference accuracy is in the run's results.json; score replies in Python with "
            "groundup.finetune.reward.score_replies"
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
        token_bytes=tm.tokenizer.token_bytes() if tm.task != "classification" else None,
    )
    run_path = Path(run)
    out_dir = run_path / "eval" if (run_path / "config.yaml").is_file() else None
    block = meta.get("max_len") or tm.model.config.block_size
    want = pred_path is not None
    if tm.task == "classification":
        results, columns = _classification(
            tm, trainer, data, batch_size, block, text_field, label_field, out_dir, stem, want
        )
    elif tm.task == "sft":
        results, columns = _sft(tm, trainer, data, batch_size, block, meta, want)
    else:
        results, columns = _text(tm, trainer, data, batch_size, block, text_field, want)
    results = {"data": str(data), "task": tm.task, **results}
    return _finish(results, columns, pred_path, out_dir, stem, verbose)


def _finish(
    results: dict[str, Any],
    columns: dict[str, list[Any]] | None,
    pred_path: Path | None,
    out_dir: Path | None,
    stem: str,
    verbose: int,
) -> dict[str, Any]:
    """Save the results (and the per-row predictions), print the headline figures."""
    from groundup.jobs.predict import write_columns

    if pred_path is not None and columns is not None:
        write_columns(columns, pred_path)
        results["predictions"] = str(pred_path)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float))
        print(f"{results['data']}: {shown}", flush=True)
        if out_dir is not None:
            print(f"saved in {out_dir}", flush=True)
        if pred_path is not None:
            print(f"per-row predictions in {pred_path}", flush=True)
    return results


def _tabular(
    run: str | Path,
    data: str | Path,
    batch_size: int,
    device: str,
    label_field: str | None,
    unseen: str,
    stem: str,
    pred_path: Path | None,
) -> tuple[dict[str, Any], dict[str, list[Any]] | None, Path]:
    """A `groundup train` run on a file of rows: its saved preprocessing, then the metrics."""
    from groundup.jobs.predict import (
        classification_columns,
        load_tabular_run,
        short_floats,
        tabular_inputs,
        tabular_outputs,
    )
    from groundup.train.device import resolve_device

    tr = load_tabular_run(run)
    pre = tr.pre
    if label_field is not None and label_field != pre.target:
        raise ConfigError(
            f"--label-field {label_field} does not apply to {run}: a groundup train run "
            f"scores its own target column '{pre.target}'"
        )
    x, y, _ = tabular_inputs(tr, data, unseen, need_target=True)
    outputs = tabular_outputs(tr, x, batch_size, resolve_device(device))
    out_dir = tr.path / "eval"
    results: dict[str, Any] = {"data": str(data), "task": pre.task, "examples": len(x)}
    columns: dict[str, list[Any]] | None = None
    if pre.task == "classification":
        results.update(_tabular_classification(outputs, y, pre.class_names, out_dir, stem))
        if pred_path is not None:
            columns = classification_columns(outputs, pre.class_names, None, None)
            columns["target"] = [pre.class_names[int(i)] for i in y]
    else:
        results.update(regression_metrics(outputs, y))
        if pred_path is not None:
            columns = {
                "row": list(range(1, len(x) + 1)),
                "prediction": short_floats(outputs),
                "target": short_floats(y),
            }
    return results, columns, out_dir


def _tabular_classification(
    probs: Any, y: Any, class_names: list[Any], out_dir: Path, stem: str
) -> dict[str, Any]:
    """accuracy, macro-F1 and log loss; the report and confusion matrix go into `out_dir`."""
    import numpy as np

    from groundup.finetune.classification import classification_report, write_confusion_matrix

    labels = [str(c) for c in class_names]
    report = classification_report(torch.from_numpy(probs.argmax(1)), torch.from_numpy(y), labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_confusion_matrix(report, out_dir / f"confusion_matrix_{stem}.csv")
    (out_dir / f"report_{stem}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    p_true = probs[np.arange(len(y)), y].astype(np.float64)
    # a probability that rounded to 0 in float32 would give an infinite loss: floor it
    log_loss = float(-np.log(np.maximum(p_true, 1e-12)).mean())
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "log_loss": log_loss}


def regression_metrics(pred: Any, target: Any) -> dict[str, float | None]:
    """mse, mae and r2 in float64; r2 is None for a constant target (it is undefined)."""
    import numpy as np

    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    err = p - t
    total = float(((t - t.mean()) ** 2).sum())
    r2 = None if total == 0.0 else 1.0 - float((err**2).sum()) / total
    return {"mse": float((err**2).mean()), "mae": float(np.abs(err).mean()), "r2": r2}


def _classification(
    tm, trainer, data, batch_size, max_len, text_field, label_field, out_dir, stem, want
) -> tuple[dict[str, Any], dict[str, list[Any]] | None]:
    from groundup.data.task_data import labelled_batches
    from groundup.finetune.classification import LabelVocab, read_labelled_text
    from groundup.jobs.predict import classification_columns, text_classifier_probabilities

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
    columns = None
    if want:
        probs = text_classifier_probabilities(tm, texts, batch_size, trainer.device)
        columns = {**classification_columns(probs, tm.labels, None, None), "target": labels}
    return {"examples": len(texts), **renamed}, columns


def _sft(
    tm, trainer, data, batch_size, block, meta, want
) -> tuple[dict[str, Any], dict[str, list[Any]] | None]:
    from groundup.data.task_data import sft_batches
    from groundup.finetune.sft import read_sft_jsonl

    examples = read_sft_jsonl(  # the field names the run was trained with
        data,
        **{k: meta[k] for k in ("prompt_field", "response_field", "messages_field") if k in meta},
    )
    template = meta.get("template", "auto")
    batches, t = sft_batches(examples, tm.tokenizer, template, block, tm.pad_id, batch_size)
    out = trainer.evaluate(batches, prefix="")
    columns = None
    if want:
        columns = _sft_rows(tm, trainer.device, examples, template, block)
    return {"examples": t.n_examples, "response_tokens": t.n_trainable_tokens, **out}, columns


def _text(
    tm, trainer, data, batch_size, block, text_field, want
) -> tuple[dict[str, Any], dict[str, list[Any]] | None]:
    """Every token of the text scored once, in consecutive windows of the model's context."""
    from groundup.data.task_data import text_windows

    windows, n_tokens = text_windows(data, tm.tokenizer, text_field, block, batch_size)
    out = trainer.evaluate(windows, prefix="")
    columns = _document_rows(tm, trainer.device, data, text_field, block) if want else None
    return {"tokens": n_tokens, **out}, columns


# ---- per-row losses of language models -------------------------------------------------------
def _sft_rows(tm, device, examples, template, block) -> dict[str, list[Any]]:
    """Each example's loss over its own response tokens (one example per forward pass); an
    example whose responses the context cuts off entirely has no loss (None)."""
    from groundup.errors import DataError
    from groundup.finetune.sft import encode_sft

    scores = []
    for conv in examples:
        try:
            t = encode_sft([conv], tm.tokenizer, block_size=block, template=template)
        except DataError:  # every response token cut off: nothing to score
            scores.append((0, 0.0))
            continue
        scores.append(_score(tm.model, device, [(t.input_ids, t.labels)]))
    return _loss_columns(scores, "response_tokens")


def _document_rows(tm, device, data, text_field, block) -> dict[str, list[Any]]:
    """Each document's loss, in consecutive windows of the context, as the whole-file figure
    scores the documents joined (each ends with the end-of-text token when there is one)."""
    import numpy as np

    from groundup.data.corpus import Corpus

    eot = tm.tokenizer.eot_id
    scores = []
    for doc in Corpus(data, text_field=text_field):
        ids = tm.tokenizer.encode_array(doc).astype(np.int64)
        if eot is not None:
            ids = np.append(ids, eot)
        tokens = torch.from_numpy(ids)
        windows = [
            (tokens[i : i + block][None, :], tokens[i + 1 : i + block + 1][None, :])
            for i in range(0, len(tokens) - 1, block)
        ]
        # the last window may be one longer than its targets: line inputs up with them
        windows = [(x[:, : y.shape[1]], y) for x, y in windows]
        scores.append(_score(tm.model, device, windows))
    return _loss_columns(scores, "tokens")


def _score(model, device, windows) -> tuple[int, float]:
    """(scored tokens, summed loss) of (inputs (1, T), targets (1, T)) windows; -100 skipped."""
    import torch.nn.functional as F

    count, total = 0, 0.0
    model.eval()
    with torch.no_grad():
        for x, y in windows:
            logits = model(x.to(device)).float()  # (1, T, vocab)
            y = y.to(device)
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                y.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            count += int((y != -100).sum())
            total += float(loss)
    return count, total


def _loss_columns(scores: list[tuple[int, float]], count_name: str) -> dict[str, list[Any]]:
    import math

    losses = [total / n if n else None for n, total in scores]
    return {
        "row": list(range(1, len(scores) + 1)),
        count_name: [n for n, _ in scores],
        "loss": losses,
        "perplexity": [None if v is None else math.exp(min(v, 700.0)) for v in losses],
    }
