"""Loggers: the Trainer's records sent on to TensorBoard, Weights & Biases, MLflow or a CSV file.

`train.loggers: [tensorboard, wandb, mlflow, csv, jsonl]` in a config adds one callback per name
(`build_loggers`); in Python, pass them to `fit(callbacks=[...])`, or use the Keras-style
`gu.callbacks.TensorBoard(log_dir="logs")`. Each one:

- writes on rank 0 only (the other ranks' callbacks do nothing), like metrics.jsonl;
- sends the same three records metrics.jsonl holds, at the trainer's optimizer step: `train`
  (every `log_every` steps: loss, lr, grad_norm, tokens_per_s or samples_per_s, mfu,
  data_wait), `eval` (step-based evaluations: val_loss, val_perplexity, val_<metric>) and
  `epoch` (epoch means of the training loss and metrics, with val_ figures when the epoch ended
  with an evaluation);
- survives a resume without duplicate points: TensorBoard purges the steps after the
  checkpoint, MLflow continues the same run and cuts its metric files back to the checkpoint's
  step, W&B continues the same run id (it cannot rewind an offline run: see docs/loggers.md).

TensorBoard, W&B (offline mode) and MLflow (a local file store) are optional extras; a missing
package is reported when the config is loaded, before any folder is made.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundup.errors import ConfigError, DependencyError
from groundup.files import write_text_atomic
from groundup.registry import did_you_mean
from groundup.train.callbacks import Callback
from groundup.train.run_log import METRICS_FILE

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer

# name -> (the module it imports, the groundup extra that installs it); None: nothing to install
LOGGERS: dict[str, tuple[str, str] | None] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "csv": None,  # metrics.csv, made from metrics.jsonl
    "jsonl": None,  # metrics.jsonl: always written; the name is accepted and adds nothing
}
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
CSV_FILE = "metrics.csv"


def check_loggers(names: Sequence[str], where: str = "train.loggers") -> list[str]:
    """The logger names, lower-cased; a ConfigError for an unknown or repeated name and a
    DependencyError (naming the extra to install) for a backend whose package is missing.
    `LoopConfig` calls it when the config is loaded, so a bad list fails before any work."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where} must be a list of names, e.g. [tensorboard], got {names!r}")
    checked: list[str] = []
    for name in names:
        key = name.lower() if isinstance(name, str) else name
        if key not in LOGGERS:
            valid = ", ".join(sorted(LOGGERS))
            raise ConfigError(
                f"unknown logger {name!r} in {where}{did_you_mean(str(key), LOGGERS)}; "
                f"valid names: {valid}"
            )
        if key in checked:
            raise ConfigError(f"{where} lists {key!r} twice; list each logger once")
        needs = LOGGERS[key]
        if needs is not None and importlib.util.find_spec(needs[0]) is None:
            module, extra = needs
            raise DependencyError(
                f"{where} lists {key!r} but the {module} package is not installed; "
                f'pip install "groundup[{extra}]" (or drop {key!r} from {where})'
            )
        checked.append(key)
    return checked


def build_loggers(
    names: Sequence[str], run_dir: str | Path | None, config: dict[str, Any] | None = None
) -> list[Callback]:
    """One callback per name of `train.loggers`, writing into `run_dir` (`tensorboard/`,
    `wandb/`, `mlruns/`, `metrics.csv`); `config` (the resolved config) goes to each backend
    once, as hyper-parameters. `jsonl` adds nothing: the Trainer always writes metrics.jsonl."""
    names = check_loggers(names)
    if not names:
        return []
    if run_dir is None:
        raise ConfigError("train.loggers needs a run directory to write into; set run_dir")
    run_dir = Path(run_dir)
    loggers: list[Callback] = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR, config=config, fresh=True))
        elif name in ("wandb", "mlflow"):
            from groundup.train import tracker_loggers  # (it imports this module)

            tracker = (
                tracker_loggers.WandbLogger if name == "wandb" else tracker_loggers.MLflowLogger
            )
            loggers.append(tracker(run_dir, config=config))
        elif name == "csv":
            loggers.append(MetricsCSV(run_dir))
    return loggers


# ---------------------------------------------------------------- the records
class RecordLogger(Callback):
    """Turns the Trainer's hooks into the records of metrics.jsonl, on rank 0 only: a subclass
    implements `start`, `write(kind, trainer, values)` and `finish`. `kind` is "train", "eval"
    or "epoch"; `values` holds the record's numbers (ints and floats, no bools)."""

    def __init__(self) -> None:
        self.active = False

    def on_train_begin(self, trainer: Trainer) -> None:
        self.active = trainer.rank == 0
        if self.active:
            self.start(trainer)

    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.active:
            self.write("train", trainer, _numbers(logs))

    def on_eval_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        # At an epoch's end the evaluation's logs also hold the epoch's training figures, and
        # the epoch record that follows carries them all: only step evaluations are written.
        if self.active and all(k.startswith("val_") for k in logs):
            self.write("eval", trainer, _numbers(logs))

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        if self.active:
            self.write("epoch", trainer, _numbers(logs))

    def on_train_end(self, trainer: Trainer) -> None:
        if self.active:
            self.active = False
            self.finish(trainer)

    def start(self, trainer: Trainer) -> None: ...
    def write(self, kind: str, trainer: Trainer, values: dict[str, float]) -> None: ...
    def finish(self, trainer: Trainer) -> None: ...


def _numbers(logs: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def flat_names(kind: str, values: dict[str, float]) -> dict[str, float]:
    """The metric names of the flat backends (W&B, MLflow): a record's keys as metrics.jsonl
    has them, but the epoch means of training figures become `epoch_<name>` (the train record
    of the same step has its own `loss`)."""
    if kind != "epoch":
        return dict(values)
    return {(k if k.startswith("val_") else f"epoch_{k}"): v for k, v in values.items()}


# ---------------------------------------------------------------- TensorBoard
class TensorBoardLogger(RecordLogger):
    """TensorBoard event files in `log_dir/train` and `log_dir/validation`, so a training and
    a validation curve of one name overlay in one chart (as Keras writes them).

    Tags: the train record's keys (`loss`, `lr`, `grad_norm`, `tokens_per_s`, `mfu`,
    `data_wait`) in `train/`; a step evaluation's keys without `val_` (`loss`, `perplexity`)
    in `validation/`; epoch records as `epoch_<name>` (training means in `train/`, the
    epoch's evaluation in `validation/`). The x axis is the optimizer step. With `config`, the
    resolved config is shown once as text. `update_freq`: "log" (each train record), "epoch"
    (no step-level training points), "batch" or N (the step's loss and lr every N steps).

    On resume the writers purge the points after the checkpoint's step (an interrupted run
    wrote them and the resumed one writes them again); with `fresh=True` a run that starts
    from step 0 first deletes the event files an earlier run left in `log_dir`.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        config: dict[str, Any] | None = None,
        update_freq: str | int = "log",
        histogram_freq: int = 0,
        fresh: bool = False,
    ) -> None:
        super().__init__()
        require_package("tensorboard", "TensorBoard")
        if not (update_freq in ("log", "epoch", "batch") or _positive_int(update_freq)):
            raise ConfigError(
                f"update_freq must be 'epoch', 'batch' or a number of steps >= 1, got {update_freq!r}"
            )
        if not (isinstance(histogram_freq, int) and histogram_freq >= 0):
            raise ConfigError(f"histogram_freq must be an integer >= 0, got {histogram_freq!r}")
        self.log_dir = Path(log_dir)
        self.config = config
        self.update_freq = update_freq
        self.histogram_freq = histogram_freq
        self.fresh = fresh
        self._writers: dict[str, Any] = {}
        self._purge_step: int | None = None
        self._config_due = False  # the config is still to be written (as text)

    def start(self, trainer: Trainer) -> None:
        resumed = trainer.resumed_from is not None
        # keep the points of the checkpoint's step, drop the later ones the last process wrote
        self._purge_step = trainer.step + 1 if resumed else None
        if self.fresh and not resumed and trainer.step == 0:
            for sub in ("train", "validation"):
                for old in (self.log_dir / sub).glob("events.out.tfevents.*"):
                    old.unlink()
        # shown once, by the first train writer of a fresh run (a fit that logs nothing, like
        # the LR range test's, leaves no files)
        fresh_run = not resumed and trainer.step == 0
        self._config_due = self.config is not None and fresh_run

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.log_dir / name), purge_step=self._purge_step)
            if name == "train" and self._config_due:
                writer.add_text("config", _config_text(self.config), 0)
                self._config_due = False
            self._writers[name] = writer
        return self._writers[name]

    def write(self, kind: str, trainer: Trainer, values: dict[str, float]) -> None:
        step = trainer.step
        if kind == "train":
            if self.update_freq == "log":
                self._scalars("train", "", values, step)
        elif kind == "eval":
            self._scalars("validation", "", _strip_val(values), step)
        else:
            train = {k: v for k, v in values.items() if not k.startswith("val_")}
            self._scalars("train", "epoch_", train, step)
            self._scalars("validation", "epoch_", _strip_val(values), step)
            if self.histogram_freq and (trainer.epoch + 1) % self.histogram_freq == 0:
                self._histograms(trainer)
        for writer in self._writers.values():
            writer.flush()  # like metrics.jsonl: a crash loses no point already logged

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if not self.active or self.update_freq in ("log", "epoch"):
            return
        every = 1 if self.update_freq == "batch" else int(self.update_freq)
        if step % every == 0:
            figures = {
                "loss": float(trainer.last_loss.item()),
                "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            }
            self._scalars("train", "", figures, step)

    def _scalars(self, name: str, prefix: str, values: dict[str, float], step: int) -> None:
        if values:
            writer = self._writer(name)
            for key, value in values.items():
                writer.add_scalar(prefix + key, value, step)

    def _histograms(self, trainer: Trainer) -> None:
        writer = self._writer("train")
        for name, param in trainer.model.named_parameters():
            writer.add_histogram(name, param.detach().float().cpu(), trainer.step)

    def finish(self, trainer: Trainer) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _strip_val(values: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("val_"): v for k, v in values.items() if k.startswith("val_")}


def _config_text(config: dict[str, Any]) -> str:
    import yaml

    text = yaml.safe_dump(config, sort_keys=False)
    return "\n".join("    " + line for line in text.splitlines())  # markdown: a code block


class TensorBoard(TensorBoardLogger):
    """Keras's `keras.callbacks.TensorBoard`: `fit(callbacks=[gu.callbacks.TensorBoard("logs")])`
    then `tensorboard --logdir logs`.

    The layout is Keras's: `log_dir/train` and `log_dir/validation`, epoch figures as
    `epoch_loss`, `epoch_accuracy`, ... so the training and validation curves overlay.
    `update_freq`: "epoch" (default), "batch" (the loss and lr at every step) or N steps;
    `histogram_freq`: weight histograms every N epochs; `write_steps_per_second`: adds
    `epoch_steps_per_second`. `write_graph` is accepted and ignored (TensorBoard's graph view
    needs a traced model); `write_images`, `profile_batch`, `embeddings_freq` and
    `embeddings_metadata` are accepted for compatibility and ignored, with a warning when set.
    Unlike Keras, the x axis is the optimizer step (also for epoch figures).
    """

    def __init__(
        self,
        log_dir: str | Path = "logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: str | int = "epoch",
        profile_batch: int | tuple[int, int] = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: Any = None,
    ) -> None:
        if update_freq not in ("epoch", "batch") and not _positive_int(update_freq):
            raise ConfigError(
                f"TensorBoard update_freq must be 'epoch', 'batch' or a number of steps >= 1, "
                f"got {update_freq!r}"
            )
        super().__init__(log_dir, update_freq=update_freq, histogram_freq=histogram_freq)
        ignored = [
            name
            for name, value, default in (
                ("write_images", write_images, False),
                ("profile_batch", profile_batch, 0),
                ("embeddings_freq", embeddings_freq, 0),
                ("embeddings_metadata", embeddings_metadata, None),
            )
            if value != default
        ]
        if ignored:
            warnings.warn(
                f"TensorBoard: {', '.join(ignored)} are not supported by groundup and are ignored",
                UserWarning,
                stacklevel=2,
            )
        self.write_graph = write_graph
        self.write_steps_per_second = write_steps_per_second
        self._epoch_began: tuple[float, int] | None = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._epoch_began = (time.perf_counter(), trainer.step)

    def write(self, kind: str, trainer: Trainer, values: dict[str, float]) -> None:
        if kind == "epoch" and self.write_steps_per_second and self._epoch_began is not None:
            began, first_step = self._epoch_began
            seconds = max(time.perf_counter() - began, 1e-9)
            values = {**values, "steps_per_second": (trainer.step - first_step) / seconds}
        super().write(kind, trainer, values)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def require_package(logger: str, what: str) -> None:
    """A DependencyError naming the extra when `logger`'s package is not installed."""
    needs = LOGGERS[logger]
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        module, extra = needs
        raise DependencyError(
            f'{what} needs the {module} package, which is not installed; pip install "groundup[{extra}]"'
        )


# ---------------------------------------------------------------- CSV
class MetricsCSV(Callback):
    """`run_dir/metrics.csv`: the train, eval and epoch records of metrics.jsonl as one table
    (columns `event`, `step`, `epoch`, then every key in the order it first appears; blank
    where a record has no such key), for a spreadsheet or pandas.

    It is written from metrics.jsonl at each checkpoint and at the end of training, so it
    always matches it, also after a resume (which cuts metrics.jsonl back first). Epoch runs
    of `groundup train` also have history.csv, one row per epoch.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_save(self, trainer: Trainer, path: Path) -> None:
        if trainer.rank == 0:
            write_metrics_csv(self.run_dir / METRICS_FILE, self.run_dir / CSV_FILE)

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.rank == 0:
            write_metrics_csv(self.run_dir / METRICS_FILE, self.run_dir / CSV_FILE)


def write_metrics_csv(source: Path, target: Path) -> None:
    """The train/eval/epoch records of a metrics.jsonl as a CSV table (a line a kill cut short
    is left out)."""
    if not source.is_file():
        return
    records = []
    for line in source.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") in ("train", "eval", "epoch"):
            records.append(record)
    columns = ["event", "step", "epoch"]
    for record in records:
        columns += [k for k in record if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(records)
    write_text_atomic(target, text.getvalue())
