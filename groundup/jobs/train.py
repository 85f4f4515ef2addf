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

from groundup.config import check, load_config
from groundup.data.prepare import TabularDataConfig, prepare_tabular
from groundup.errors import ConfigError
from groundup.jobs.run_dir import checkpoint_config, prepare_run_dir, resume_point, wants_resume
from groundup.train.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint


@dataclass
class OptimConfig:
    """The optimizer and its LR schedule. Unset fields keep the optimizer's own default."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    betas: list[float] | None = None
    eps: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float | None = None
    step_size: int | None = None
    gamma: float | None = None
    decay_fraction: float | None = None

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")

    def optimizer_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name, "lr": self.lr}
        for key in ("weight_decay", "momentum", "nesterov", "eps"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        if self.betas is not None:
            spec["betas"] = tuple(self.betas)
        return spec

    def schedule_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.schedule}
        if self.warmup_steps:
            spec["warmup_steps"] = self.warmup_steps
        for key in ("min_lr_ratio", "step_size", "gamma", "decay_fraction"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = True


@dataclass
class LoopConfig:
    """How long and how: epochs or steps, batch size, accumulation, clipping, precision."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    precision: str = "fp32"
    device: str = "auto"
    compile: bool = False
    shuffle: bool = True
    log_every: int = 50  # steps between train records in metrics.jsonl
    checkpoint_every: int | None = None  # steps between checkpoints (besides each evaluation)
    keep_last: int | None = 3  # step checkpoints kept besides best/ (null: all)
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"  # on a non-finite loss/grad norm

    def __post_init__(self) -> None:
        check(self.log_every >= 1, f"train.log_every must be >= 1, got {self.log_every}")
        check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}")


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
    train: LoopConfig = field(default_factory=LoopConfig)
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

    `resume` continues from the newest complete checkpoint in `<run_dir>/checkpoints`
    (same config required). Early stopping's patience counter starts afresh on resume."""
    import groundup as gu
    from groundup.models.layers import layer_from_config
    from groundup.seed import set_seed

    cfg = config if config is not None else load_config(TrainJobConfig, config_path, overrides)
    last: Path | None = None
    best_val_loss = None
    resume = wants_resume(cfg.run_dir, cfg, resume)
    if resume:
        run_dir = Path(cfg.run_dir)
        last, best_val_loss = resume_point(run_dir, cfg)
    else:
        run_dir = prepare_run_dir(cfg.run_dir, cfg, overwrite=overwrite)
    set_seed(cfg.seed)
    data = prepare_tabular(cfg.data)
    if data.x_val is None or len(data.x_val) == 0:
        if cfg.early_stopping is not None:
            raise ConfigError("early_stopping needs a validation split: set data.val_size > 0")
    layers = []
    for i, spec in enumerate(cfg.layers):
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(
                f"layers[{i}] must be a mapping with a 'type', e.g. {{type: Dense, units: 64}}"
            )
        layers.append(layer_from_config(dict(spec)))
    model = gu.Sequential(layers, name=Path(cfg.run_dir).name)
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
    )
    trainer = model.trainer
    trainer.log_every = cfg.train.log_every
    trainer.nan_policy = cfg.train.nan_policy
    trainer.keep_last = cfg.train.keep_last
    trainer.config = checkpoint_config(cfg)
    if verbose:
        model.summary()
    callbacks: list[Callback] = [CSVLogger(run_dir / "history.csv", append=resume)]
    has_val = data.x_val is not None and len(data.x_val) > 0
    if cfg.early_stopping is not None:
        es = cfg.early_stopping
        callbacks.append(
            EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.restore_best_weights)
        )
    if (cfg.save_best and has_val) or cfg.train.checkpoint_every:
        checkpoint = ModelCheckpoint(
            run_dir / "checkpoints",
            monitor="val_loss" if cfg.save_best and has_val else None,
            every_n_steps=cfg.train.checkpoint_every,
        )
        if best_val_loss is not None and checkpoint.tracker is not None:
            checkpoint.tracker.best = best_val_loss  # resumed: best/ holds this value
        callbacks.append(checkpoint)
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
        resume_from=last,
    )
    results = {
        "test_" + k: v
        for k, v in model.evaluate(data.x_test, data.y_test, verbose=0, return_dict=True).items()
    }
    model.save(run_dir / "model")
    (run_dir / "preprocessing.json").write_text(
        json.dumps(data.preprocessor, indent=2), encoding="utf-8"
    )
    (run_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items())
        print(f"test: {shown}\nrun directory: {run_dir}", flush=True)
    return results
