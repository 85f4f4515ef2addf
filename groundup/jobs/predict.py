"""`groundup predict RUN --data FILE`: a trained model's predictions for new rows, one line each.

Every kind of run:
- a `groundup train` run (tabular/image `Sequential`): the file's rows go through the run's own
  saved preprocessing (`preprocessing.json`: columns, imputation, category and text-column
  encodings, scaling); classification gives the class (`label`), its probability (`score`) and
  one `prob_<class>` column per class, regression the value (`prediction`);
- a text classifier (finetune task classification, a Hugging Face sequence classifier): the
  same classification columns for each text of a JSONL/CSV file;
- a language model (pretrain run, causal_lm or SFT finetune, Hugging Face causal LM): each
  `prompt` of a JSONL/CSV file completed (SFT models answer it as a user turn of their chat
  template), greedy unless a temperature is given: `{prompt, completion}` per line.

Everything is read and checked before the model runs, and the output (CSV, or JSONL when its
name ends with .jsonl) is written whole or not at all. Rows keep the input order; `row`
counts them from 1 (header excluded), as the error messages do.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.errors import CheckpointError, ConfigError, DataError, MissingFileError
from groundup.files import write_text_atomic
from groundup.registry import did_you_mean

OUTPUT_SUFFIXES = (".csv", ".jsonl")
_RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
Columns = dict[str, list[Any]]  # output column -> one value per input row, in order


# ---- which run -----------------------------------------------------------------------------
def is_sequential_run(run: str | Path) -> bool:
    """True for a `groundup train` run (or its `model/`): a Sequential, not a model folder."""
    from groundup.keras.sequential import ARCHITECTURE_FILE

    path = Path(run)
    return any((p / ARCHITECTURE_FILE).is_file() for p in (path, path / "model"))


@dataclass
class TabularRun:
    """A `groundup train` run's model and the preprocessing it was trained behind."""

    model: Any  # Sequential, in eval mode
    pre: Any  # Preprocessor
    path: Path


def load_tabular_run(run: str | Path) -> TabularRun:
    """The Sequential and Preprocessor of a `groundup train` run folder."""
    from groundup.data.tabular_pipeline import Preprocessor
    from groundup.keras.sequential import ARCHITECTURE_FILE, Sequential

    path = Path(run)
    if (path / ARCHITECTURE_FILE).is_file() and not (path / "preprocessing.json").is_file():
        path = path.parent  # given the run's model/ folder
    pre_file = path / "preprocessing.json"
    if not pre_file.is_file():
        raise MissingFileError(
            f"{path} has no preprocessing.json, so new rows cannot be prepared as the training "
            "rows were; give the folder `groundup train` wrote (a bare model.save() folder: "
            "load it with gu.load_model and call .predict on prepared arrays)"
        )
    pre = Preprocessor.load(pre_file)
    model = Sequential.load(path / "model", compile=False).eval()
    return TabularRun(model, pre, path)


# ---- the entry point -----------------------------------------------------------------------
def run_predict(
    run: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    *,
    batch_size: int = 64,
    device: str = "auto",
    allow_pickle: bool = False,
    text_field: str | None = None,
    prompt_field: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    unseen_category: str = "error",
    id_column: str | None = None,
    verbose: int = 1,
) -> Path:
    """Predict every row of `data` with the model in `run` and write them to `out`.

    `out` defaults to `<data stem>.predictions.csv` beside the data (`.jsonl` for language
    models). `unseen_category="ignore"` encodes categories a `groundup train` run never saw as
    it encoded its test split (all-zero one-hot, -1 ordinal) instead of refusing them;
    `id_column` copies that input column into the output. Returns the output path."""
    from groundup.generate import SampleConfig, _check_options
    from groundup.models.folders import load_model
    from groundup.train.device import resolve_device

    _check_batch_size(batch_size)
    # the options first (named as the arguments are), then the data file, then the model
    _check_options(max_new_tokens, temperature, top_k, top_p)
    sample = SampleConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    if not Path(data).exists():
        raise MissingFileError(f"data file not found: {data}; check the path")
    if out is not None:
        output_path(data, out, ".csv")  # a bad name is refused before the model loads
    target = resolve_device(device)
    if is_sequential_run(run):
        out_path = output_path(data, out, ".csv")
        columns = tabular_columns(
            load_tabular_run(run), data, batch_size, target, unseen_category, id_column
        )
    else:
        tm = load_model(run, allow_pickle=allow_pickle)
        refuse_mlm(tm, run)
        if tm.task == "classification":
            out_path = output_path(data, out, ".csv")
            columns = text_classifier_columns(tm, data, batch_size, target, text_field, id_column)
        else:
            out_path = output_path(data, out, ".jsonl")
            columns = completion_columns(tm, data, sample, target, prompt_field, id_column)
    write_columns(columns, out_path)
    if verbose:
        n = len(next(iter(columns.values())))
        print(f"{n} prediction(s) for {data} written to {out_path}", flush=True)
    return out_path


def refuse_mlm(tm: Any, run: str | Path) -> None:
    """A masked language model predicts nothing per row: say what works instead."""
    if tm.task == "mlm":
        raise ConfigError(
            f"{run} holds a masked language model (BERT), which fills in [MASK] tokens and "
            "predicts nothing per row; fine-tune it into a classifier (groundup finetune, task: "
            "classification) and predict with that run, or use a GPT run for completions"
        )
    if tm.task == "reward":
        raise ConfigError(
            f"{run} holds a reward model, which scores (prompt, reply) pairs: its validation "
            "preference accuracy is in the run's results.json; score replies in Python with "
            "groundup.finetune.reward.score_replies"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")


def output_path(data: str | Path, out: str | Path | None, default_suffix: str) -> Path:
    """Where predictions go: `out` (.csv or .jsonl), else beside the data file."""
    data = Path(data)
    if out is None:
        return data.with_name(f"{data.stem}.predictions{default_suffix}")
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"the predictions file {path} must end with .csv or .jsonl (the format it is "
            "written in)"
        )
    if path.is_dir():
        raise ConfigError(f"the predictions file {path} is a directory; give a file name")
    if path.exists() and data.exists() and path.resolve() == data.resolve():
        raise ConfigError(f"the predictions file {path} is the input data; choose another name")
    return path


# ---- groundup train runs -------------------------------------------------------------------
def tabular_inputs(
    tr: TabularRun, data: str | Path, unseen: str = "error", need_target: bool = False
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """(model inputs, target or None, the file's Table) of a data file, every check done."""
    from groundup.data.tabular_pipeline import load_rows

    pre = tr.pre
    raw = load_rows(data)
    table = pre.conform(raw, unseen=unseen, source=str(data))
    y = None
    if need_target:
        if pre.target not in table.columns:
            raise DataError(
                f"{data} has no target column '{pre.target}', which evaluate scores against; "
                "add it, or use groundup predict for rows without it"
            )
        y = pre.transform_y(table)
    return pre.transform_x(table, unseen=unseen), y, raw


def tabular_outputs(tr: TabularRun, x: np.ndarray, batch_size: int, device: Any) -> np.ndarray:
    """Class probabilities (N, K) for a classification run, values (N,) for regression."""
    model = tr.model.to(device)
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
            outs.append(model(batch).float().cpu())
    raw = torch.cat(outs) if outs else torch.empty(0, 1)
    raw = raw.reshape(len(x), -1)  # (N, outputs)
    pre = tr.pre
    if pre.task != "classification":
        if raw.shape[1] != 1:
            raise CheckpointError(
                f"{tr.path}: the model gives {raw.shape[1]} values per row but the run "
                f"regresses one target ('{pre.target}'); the run folder is inconsistent"
            )
        return raw[:, 0].numpy()
    return class_probabilities(raw, model.output_activation, len(pre.class_names), tr.path)


def class_probabilities(raw: torch.Tensor, activation: str | None, k: int, where: Any) -> Any:
    """(N, k) probabilities from a classifier's outputs: a softmax output as it is, logits
    through softmax, one sigmoid (or logit) unit of a two-class run as [1 - p, p].

    A last layer wider than the run's k classes (units: 10 for 3 classes trains fine) has
    outputs no class owns: the probabilities are those of the k classes, renormalized."""
    if raw.shape[1] == 1 and k == 2:
        p = raw[:, 0] if activation == "sigmoid" else torch.sigmoid(raw[:, 0])
        return torch.stack([1 - p, p], dim=1).numpy()
    if raw.shape[1] < k:
        raise CheckpointError(
            f"{where}: the model gives {raw.shape[1]} outputs per row for {k} classes; the run "
            "folder is inconsistent"
        )
    probs = raw if activation == "softmax" else raw.softmax(dim=-1)
    if probs.shape[1] > k:
        probs = probs[:, :k] / probs[:, :k].sum(dim=1, keepdim=True)
    return probs.numpy()


def tabular_columns(
    tr: TabularRun,
    data: str | Path,
    batch_size: int,
    device: Any,
    unseen: str = "error",
    id_column: str | None = None,
) -> Columns:
    """The output columns of a `groundup train` run for the rows of `data`."""
    x, _, table = tabular_inputs(tr, data, unseen)
    ids = table_ids(table, data, id_column)
    outputs = tabular_outputs(tr, x, batch_size, device)
    if tr.pre.task == "classification":
        return classification_columns(outputs, tr.pre.class_names, ids, id_column)
    return {**_row_columns(len(x), ids, id_column), "prediction": short_floats(outputs)}


def table_ids(table: Any, data: str | Path, id_column: str | None) -> list[Any] | None:
    """The values of the id column (any column of the file, a feature or not)."""
    if id_column is None:
        return None
    if id_column not in table.columns:
        raise DataError(
            f"{data} has no id column '{id_column}'{did_you_mean(id_column, table.names)}; "
            f"available columns: {', '.join(table.names)}"
        )
    col = table[id_column]
    if col.dtype.kind == "f":
        return [None if v != v else (int(v) if v.is_integer() else v) for v in col.tolist()]
    return col.tolist()


# ---- text classifiers ----------------------------------------------------------------------
def text_classifier_probabilities(
    tm: Any, texts: Sequence[str], batch_size: int, device: Any
) -> np.ndarray:
    """(N, classes) probabilities of a text classifier, texts encoded as in training."""
    from groundup.finetune.classification import encode_texts

    max_len = tm.meta.get("max_len") or tm.model.config.block_size
    style = "bert" if tm.family == "bert" else "gpt"
    ids = encode_texts(texts, tm.tokenizer, max_len, style=style, pad_id=tm.pad_id).input_ids
    model = tm.model.to(device).eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            logits = model(ids[i : i + batch_size].to(device))  # (B, classes)
            outs.append(logits.float().softmax(dim=-1).cpu())
    return torch.cat(outs).numpy()


def text_classifier_columns(
    tm: Any,
    data: str | Path,
    batch_size: int,
    device: Any,
    text_field: str | None = None,
    id_column: str | None = None,
) -> Columns:
    """The output columns of a text classifier for the texts of `data`."""
    field = text_field or tm.meta.get("text_field") or "text"
    records = read_records(data, f'{{"{field}": "..."}}')
    texts = field_values(records, field, "text_field", allow_empty=False)
    ids = field_values(records, id_column, "id_column", any_type=True) if id_column else None
    probs = text_classifier_probabilities(tm, texts, batch_size, device)
    return classification_columns(probs, tm.labels, ids, id_column)


def classification_columns(
    probs: np.ndarray, classes: Sequence[Any], ids: list[Any] | None, id_column: str | None
) -> Columns:
    """row, the id, `label` (the most likely class), `score` (its probability), prob_<class>."""
    best = probs.argmax(axis=1)
    columns = _row_columns(len(probs), ids, id_column)
    names = [f"prob_{c}" for c in classes]
    clash = [n for n in (*names, "label", "score") if n in columns]
    if clash or len(set(names)) != len(names):
        raise ConfigError(
            f"the output column '{(clash or names)[0]}' would appear twice; choose another "
            "--id-column"
        )
    columns["label"] = [classes[int(i)] for i in best]
    columns["score"] = short_floats(probs[np.arange(len(probs)), best])
    for j, name in enumerate(names):
        columns[name] = short_floats(probs[:, j])
    return columns


def _row_columns(n: int, ids: list[Any] | None, id_column: str | None) -> Columns:
    columns: Columns = {"row": list(range(1, n + 1))}
    if id_column is not None and ids is not None:
        if id_column == "row":
            raise ConfigError("--id-column row clashes with the output's own row column")
        columns[id_column] = ids
    return columns


def short_floats(values: Any) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).reshape(-1)]


# ---- language models -----------------------------------------------------------------------
def completion_columns(
    tm: Any,
    data: str | Path,
    sample: Any,
    device: Any,
    prompt_field: str | None = None,
    id_column: str | None = None,
) -> Columns:
    """`{prompt, completion}` for each prompt of `data` (SFT models: through their template)."""
    from dataclasses import replace

    from groundup.generate import sample_reply

    field = prompt_field or tm.meta.get("prompt_field") or "prompt"
    records = read_records(data, f'{{"{field}": "..."}}')
    prompts = field_values(records, field, "prompt_field", allow_empty=True)
    ids = field_values(records, id_column, "id_column", any_type=True) if id_column else None
    tok = tm.tokenizer
    if tm.task != "sft" and tok.eot_id is None:
        empty = [where for (where, _), p in zip(records, prompts, strict=True) if not p]
        if empty:
            raise DataError(
                f"{empty[0]}: an empty prompt, and the model's tokenizer has no end-of-text "
                "token to start from; write a prompt"
            )
    model = tm.model.to(device).eval()
    template = tm.meta.get("template", "auto")
    completions = []
    for prompt in prompts:
        one = replace(sample, prompt=prompt)
        if tm.task == "sft":
            completions.append(sample_reply(model, tok, one, template))
        else:
            completions.append(_continue(model, tok, one, device))
    columns: Columns = {} if ids is None else {str(id_column): ids}
    if "prompt" in columns or "completion" in columns:
        raise ConfigError(f"--id-column {id_column} clashes with an output column; choose another")
    return {**columns, "prompt": list(prompts), "completion": completions}


def _continue(model: Any, tokenizer: Any, sample: Any, device: Any) -> str:
    """A base model's continuation of the prompt, up to its end-of-text token (left out)."""
    from groundup.generate import generate

    eot = tokenizer.eot_id
    ids = tokenizer.encode(sample.prompt) or [eot]
    out = generate(
        model,
        torch.tensor([ids], dtype=torch.long, device=device),
        sample.max_new_tokens,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        eos_id=eot,
        seed=sample.seed,
        vocab_limit=tokenizer.vocab_size,
    )
    new = out[0, len(ids) :].tolist()
    if eot is not None and eot in new:
        new = new[: new.index(eot)]
    return tokenizer.decode(new)


# ---- reading records (texts, prompts) ------------------------------------------------------
def read_records(path: str | Path, example: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) per row of a .jsonl or .csv/.tsv file (header row), blank lines skipped."""
    from groundup.finetune.sft import decode_utf8

    p = Path(path)
    fmt = _RECORD_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot read {p}: unknown extension '{p.suffix}'; use .jsonl or .csv")
    if not p.is_file():
        raise MissingFileError(f"data file not found: {p}; check the path")
    text = decode_utf8(p.read_bytes(), str(p))
    records: list[tuple[str, dict[str, Any]]] = []
    if fmt == "jsonl":
        # Trap: str.splitlines also splits on U+2028, which JSON strings may hold raw.
        for i, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"{p} line {i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one object "
                    f"per line such as {example}"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{where}: expected a JSON object, got {type(obj).__name__}; write one "
                    f"object per line such as {example}"
                )
            records.append((where, obj))
    else:
        reader = csv.DictReader(
            io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t"
        )
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # blank line
            records.append((f"{p} line {reader.line_num}", {k: v for k, v in row.items() if k}))
    if not records:
        raise DataError(f"{p} has no rows (it is empty); write one row such as {example}")
    return records


def field_values(
    records: list[tuple[str, dict[str, Any]]],
    field: str,
    option: str,
    allow_empty: bool = True,
    any_type: bool = False,
) -> list[Any]:
    """One field of every record; a record without it is an error naming its line."""
    values = []
    for where, obj in records:
        if field not in obj:
            flag = "--" + option.replace("_", "-")
            raise DataError(
                f"{where}: no '{field}' field{did_you_mean(field, list(obj))} (the row has: "
                f"{', '.join(map(str, obj)) or 'nothing'}); add it, or name the field with {flag}"
            )
        value = obj[field]
        if not any_type:
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: '{field}' must be a string, got {type(value).__name__}; quote it"
                )
            if not allow_empty and not value.strip():
                raise DataError(f"{where}: '{field}' is empty; fill it in or remove the row")
        values.append(value)
    return values


# ---- writing -------------------------------------------------------------------------------
def write_columns(columns: Columns, path: str | Path) -> Path:
    """CSV (or JSONL for a .jsonl name) of the columns, written whole or not at all."""
    path = Path(path)
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    buf = io.StringIO()
    if path.suffix.lower() == ".jsonl":
        for row in rows:
            buf.write(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) + "\n")
    else:
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_text_atomic(path, buf.getvalue())
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}; check the folder") from None
    return path
