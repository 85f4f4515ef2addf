"""The loggers for experiment trackers: Weights & Biases (offline runs) and MLflow (a local
file store). Both continue the same run on resume (the id is in the callback's state_dict);
MLflow's metric files are cut back to the checkpoint's step, W&B cannot rewind an offline run
(docs/loggers.md). `train.loggers: [wandb]` / `[mlflow]` builds them (groundup.train.loggers).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundup.files import write_text_atomic
from groundup.train.loggers import MLFLOW_DIR, RecordLogger, flat_names, require_package

if TYPE_CHECKING:
    from groundup.train.trainer import Trainer


# ---------------------------------------------------------------- Weights & Biases
class WandbLogger(RecordLogger):
    """A Weights & Biases run in offline mode under `run_dir/wandb/` (nothing leaves the
    machine; `wandb sync run_dir/wandb/offline-run-*` uploads it later). The config is the
    run's config; metrics use `flat_names` at the optimizer step.

    The run id is kept in this callback's `state_dict`, so a resumed run continues the same
    W&B run (`resume="allow"`). W&B cannot rewind an offline run: the points an interrupted
    process logged after its last checkpoint stay in its own offline folder.
    """

    def __init__(
        self, run_dir: str | Path, config: dict[str, Any] | None = None, project: str = "groundup"
    ) -> None:
        super().__init__()
        require_package("wandb", "WandbLogger")
        self.run_dir = Path(run_dir)
        self.config = config
        self.project = project
        self.run_id: str | None = None
        self._run: Any = None
        self._hooks: tuple[Any, Any] = (sys.exit, sys.excepthook)

    def start(self, trainer: Trainer) -> None:
        # load_state_dict (a resume) comes after this hook and may replace the id: the W&B run
        # itself starts at the first record
        self.run_id = secrets.token_hex(4)
        self._run = None

    def _started(self) -> Any:
        if self._run is None:
            import wandb

            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._hooks = (sys.exit, sys.excepthook)  # wandb.init replaces both
            self._run = wandb.init(
                project=self.project,
                name=self.run_dir.name,
                id=self.run_id,
                resume="allow",
                dir=str(self.run_dir),
                mode="offline",
                config=self.config,
                # console="off": W&B must not wrap stdout, which the progress bar writes to
                settings=wandb.Settings(console="off", quiet=True),
            )
        return self._run

    def write(self, kind: str, trainer: Trainer, values: dict[str, float]) -> None:
        if values:
            self._started().log(flat_names(kind, values), step=trainer.step)

    def finish(self, trainer: Trainer) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
            # wandb leaves its sys.exit and sys.excepthook in place after finish(): the
            # process is given back as it was (the run is over, there is nothing to report)
            sys.exit, sys.excepthook = self._hooks

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("run_id"):
            self.run_id = str(state["run_id"])


# ---------------------------------------------------------------- MLflow
class MLflowLogger(RecordLogger):
    """An MLflow run in a local file store, `run_dir/mlruns` (experiment `groundup`, the run
    named after the folder): the config flattened to dotted params once, metrics with
    `flat_names` at the optimizer step. View it with
    `mlflow ui --backend-store-uri run_dir/mlruns` (the full `mlflow` package).

    The run id is kept in this callback's `state_dict`; a resumed run continues that MLflow
    run and first cuts its metric histories back to the checkpoint's step, so no step is
    logged twice. MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true: this
    logger sets it (when unset) for its own store.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        experiment: str = "groundup",
    ) -> None:
        super().__init__()
        require_package("mlflow", "MLflowLogger")
        self.run_dir = Path(run_dir)
        self.store = self.run_dir / MLFLOW_DIR
        self.config = config
        self.experiment = experiment
        self.run_id: str | None = None
        self._client: Any = None
        self._resumed_at: int | None = None  # the checkpoint's step when the fit resumed

    @property
    def tracking_uri(self) -> str:
        return self.store.resolve().as_uri()

    def start(self, trainer: Trainer) -> None:
        # the run starts at the first record: load_state_dict (a resume) comes after this hook
        self.run_id, self._client = None, None
        self._resumed_at = trainer.step if trainer.resumed_from is not None else None

    def _started(self) -> Any:
        if self._client is not None:
            return self._client
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.store.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is not None:
            try:
                client.get_run(self.run_id)
            except MlflowException:
                self.run_id = None  # the store was deleted: a new MLflow run
        if self.run_id is not None:
            if self._resumed_at is not None:
                _rewind_metric_files(self.store, self.run_id, self._resumed_at)
            client.update_run(self.run_id, status="RUNNING")
        else:
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (
                found.experiment_id if found else client.create_experiment(self.experiment)
            )
            self.run_id = client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
            self._log_params(client)
        self._client = client
        return client

    def _log_params(self, client: Any) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten_config(self.config or {}).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100])

    def write(self, kind: str, trainer: Trainer, values: dict[str, float]) -> None:
        if not values:
            return
        from mlflow.entities import Metric

        client = self._started()
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, trainer.step) for k, v in flat_names(kind, values).items()
        ]
        client.log_batch(self.run_id, metrics=metrics)

    def finish(self, trainer: Trainer) -> None:
        if self._client is not None:
            self._client.set_terminated(self.run_id)
            self._client = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("run_id"):
            self.run_id = str(state["run_id"])


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"lr": 0.1}}` -> `{"train.lr": "0.1"}`: MLflow params are flat strings
    (lists as JSON, each value cut to 500 characters, MLflow's smallest limit)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            flat[name] = text[:500]
    return flat


def _rewind_metric_files(store: Path, run_id: str, step: int) -> None:
    """Cut an MLflow file store's metric histories of `run_id` back to `step` (each line is
    `timestamp value step`), so the resumed run's points are not logged twice."""
    for metrics_dir in store.glob(f"*/{run_id}/metrics"):
        for path in metrics_dir.rglob("*"):
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if _metric_step(line) <= step]
            if len(kept) != len(lines):
                write_text_atomic(path, "".join(line + "\n" for line in kept))


def _metric_step(line: str) -> int:
    parts = line.split()
    try:
        return int(parts[2])
    except (IndexError, ValueError):
        return -1  # not a point: kept
