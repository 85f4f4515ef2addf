"""`groundup train CONFIG`: a tabular/image model from a YAML config, end to end.

Data (load, clean, split, normalize on the training split) -> `Sequential` from the layer list
-> `Trainer` (via compile/fit) -> test metrics -> a run directory with the config, metrics,
model, preprocessing state and results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from groundup.config import check, load_config
from groundup.data.tabular_pipeline import TabularData, TabularDataConfig, prepare_tabular
from groundup.errors import ConfigError
from groundup.runs import MODEL_DIR, Run, hooks, plan_run
from groundup.train.callbacks import Callback, CSVLogger, EarlyStopping
from groundup.train.loggers import build_loggers
from groundup.train.loop_config import LoopConfig
from groundup.train.metric_base import confusion_matrix
from groundup.train.optim_config import OptimConfig


@dataclass
class EarlyStoppingConfig:
    """Stop when the monitored value stops improving (and keep the best weights)."""

    monitor: str = "val_loss"  # a logged value: val_loss, val_accuracy, loss, ...
    mode: str = "auto"  # min, max, or auto (from the name)
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0  # the smallest change that counts as an improvement
    restore_best_weights: bool = True  # end with the weights of the best evaluation


@dataclass
class TrainLoopConfig(LoopConfig):
    """How long and how: epochs or steps, batch size, accumulation, clipping, precision."""

    epochs: int = 10  # passes over the training split
    shuffle: bool = True  # a new seeded order every epoch

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"train.epochs must be an integer >= 1, got {self.epochs!r}",
        )
        check(
            not self.eval_tasks,
            "train.eval_tasks scores language models (groundup pretrain/finetune); a groundup "
            "train run is scored by its metrics: remove train.eval_tasks",
        )


@dataclass
class TrainJobConfig:
    """The whole `groundup train` config (see configs/digits-mlp.yaml)."""

    run_dir: str = "runs/train"
    seed: int = 0
    # auto: continue from the newest complete checkpoint when there is one (like --resume)
    resume: Literal["never", "auto"] = "never"
    data: TabularDataConfig = field(default_factory=TabularDataConfig)
    layers: list[dict] = field(default_factory=list)
    loss: str = "sparse_categorical_crossentropy"
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    early_stopping: EarlyStoppingConfig | None = None
    save_best: bool = True

    def __post_init__(self) -> None:
        check(
            len(self.layers) > 0,
            "layers is empty: list the model's layers, e.g. "
            "[{type: Dense, units: 64, activation: relu}, {type: Dense, units: 10, activation: softmax}]",
        )


def run_train(
    config_path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
    config: TrainJobConfig | None = None,
    verbose: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """Run `groundup train`; returns the test metrics (also written to results.json).

    `resume` continues from the newest complete checkpoint in `<run_dir>/checkpoints` (same
    config, but for train.epochs/max_steps); early stopping's patience and best value come
    back with it. Everything is checked before the run folder is touched."""
    from groundup.jobs.estimate import train_preflight
    from groundup.seed import set_seed

    cfg = config if config is not None else load_config(TrainJobConfig, config_path, overrides)
    plan = plan_run(cfg.run_dir, cfg, overwrite=overwrite, resume=resume)
    set_seed(cfg.seed)
    data = prepare_tabular(cfg.data)
    has_val = data.x_val is not None and len(data.x_val) > 0
    check(
        has_val or cfg.early_stopping is None,
        "early_stopping needs a validation split: set data.val_size > 0",
    )
    model = build_model(cfg, data, run_dir=plan.path, config=plan.config)
    train_preflight(cfg, model, data, verbose)  # the table; a step that cannot fit stops here
    with Run.begin(plan, verbose=verbose) as run:
        if verbose:
            print(f"data: {data.report.summary()}", flush=True)
            model.summary()
        callbacks = _callbacks(cfg, run, has_val)
        model.fit(
            data.x_train,
            data.y_train,
            batch_size=cfg.train.batch_size,
            epochs=cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            validation_data=(data.x_val, data.y_val) if has_val else None,
            shuffle=cfg.train.shuffle,
            callbacks=callbacks,
            verbose=verbose,
            seed=cfg.seed,
            resume_from=run.checkpoint,
        )
        test = model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True)
        results: dict[str, Any] = {"test_" + k: v for k, v in test.items()}
        if data.task == "classification" and len(data.y_test):
            results["confusion_matrix"] = _confusion(model, data)
        results["cleaning"] = data.report.to_dict()
        model.save(run.path / MODEL_DIR)
        (run.path / "preprocessing.json").write_text(
            json.dumps(data.preprocessor, indent=2), encoding="utf-8"
        )
        run.write_results(results)
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.startswith("test_"))
        print(f"test: {shown}\nrun directory: {run.path}", flush=True)
    return results


def build_model(
    cfg: TrainJobConfig,
    data: TabularData,
    run_dir: Path | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """The config's Sequential, built for the data's features and compiled with its `optim:`
    and `train:` sections (what the run trains and what `groundup estimate` measures)."""
    import groundup as gu

    model = gu.Sequential(build_layers(cfg.layers), name=Path(cfg.run_dir).name)
    model.build(data.x_train.shape[1:])
    model.compile(
        optimizer=cfg.optim.optimizer_spec(),
        loss=cfg.loss,
        metrics=cfg.metrics,
        schedule=cfg.optim.schedule_spec(),
        grad_accum=cfg.train.grad_accum,
        clip_grad_norm=cfg.train.clip_grad_norm,
        precision=cfg.train.precision,
        device=cfg.train.device,
        jit_compile=cfg.train.compile,
        run_dir=run_dir,
        log_every=cfg.train.log_every,
        nan_policy=cfg.train.nan_policy,
        keep_last=cfg.train.keep_last,
        config=config,
    )
    return model


def _callbacks(cfg: TrainJobConfig, run: Run, has_val: bool) -> list[Callback]:
    """history.csv, early stopping when configured, and the run's checkpoints."""
    callbacks: list[Callback] = [CSVLogger(run.path / "history.csv")]
    if cfg.early_stopping is not None:
        es = cfg.early_stopping
        callbacks.append(
            EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best_weights)
        )
    monitor = "val_loss" if cfg.save_best and has_val else None
    if monitor or cfg.train.checkpoint_every:
        callbacks += run.callbacks(monitor, every_n_steps=cfg.train.checkpoint_every)
    else:
        callbacks += hooks.extra_callbacks()  # a sweep's or lr-find's, without checkpoints too
    return callbacks + build_loggers(cfg.train.loggers, run.path, run.plan.config)


def _confusion(model: Any, data: TabularData) -> dict[str, Any]:
    """The test split's confusion matrix (rows: true class, columns: predicted), for the
    report."""
    probs = model.predict(data.x_test, verbose=0)
    predicted = torch.as_tensor(probs).argmax(dim=-1)
    classes = data.classes or list(range(data.n_classes or 0))
    matrix = confusion_matrix(torch.as_tensor(data.y_test), predicted, len(classes))
    return {"labels": [str(c) for c in classes], "matrix": matrix.tolist()}


def build_layers(specs: list[dict]) -> list[Any]:
    """The Sequential's layers from the config's `layers:` list (each checked by its type)."""
    from groundup.keras.layers import layer_from_config

    layers = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(
                f"layers[{i}] must be a mapping with a 'type', e.g. {{type: Dense, units: 64}}"
            )
        layers.append(layer_from_config(dict(spec)))
    return layers
