"""compile / fit / evaluate / predict: the Keras facade every gu model shares (Sequential,
functional and subclassed `gu.Model`), over the one `Trainer` (not a second training loop).

A model with one input and one output trains on batches of its arrays, as any module does. A
model with several inputs or outputs (or `loss_weights`) trains through `feed.py`: batches of
sample numbers, outputs packed into one tensor, a loss summed over the outputs.

A softmax (or sigmoid) output trained with a cross-entropy "from probabilities" is trained on
its logits instead (`loss.with_logits()`), so the loss is a stable log-softmax; `predict` and
`model(x)` still return probabilities.

The model class provides: `_input_names(x)`, `_input_dtypes()`, `_build_for(inputs)`,
`_output_names()`, `_run(inputs, logits)` (flat outputs) and `_logit_activations()`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.errors import ConfigError, DataError
from groundup.keras.compile_specs import (
    CompileArgs,
    flat_metrics,
    names_only,
    per_output,
    per_output_metrics,
    resolve_losses,
)
from groundup.keras.data_adapter import (
    Data,
    align,
    concat,
    prepare_target,
    same_length,
    sample_weights,
    split,
    to_tensor,
)
from groundup.keras.feed import Feed, OutputLoss, OutputMetric, OutputsLoss, sample_indices
from groundup.keras.layers import Layer
from groundup.keras.losses import keras_loss
from groundup.keras.metrics import keras_metric
from groundup.keras.optimizer_view import OptimizerView
from groundup.train.batches import TensorBatches
from groundup.train.device import weight_dtype
from groundup.train.history import History
from groundup.train.losses import Loss
from groundup.train.optim import OptimizerSpec, optimizer_spec
from groundup.train.trainer import Trainer

_TRAINER_OPTIONS = set(inspect.signature(Trainer.__init__).parameters) - {"self", "model"}


def _callbacks() -> Any:
    """groundup.keras.callbacks, imported when first used: importing it before
    groundup.train.callbacks is a cycle (train.callbacks re-exports train.backup)."""
    from groundup.keras import callbacks

    return callbacks


def apply_trainable(model: torch.nn.Module) -> None:
    """Keras's `layer.trainable = False` (or True) on any layer or model inside `model`: its
    weights stop (or start) training. Read at compile and at each fit, outer modules first,
    so a layer's own setting wins over the model around it."""

    def visit(module: torch.nn.Module) -> None:
        flag = module.__dict__.get("trainable")
        if isinstance(flag, bool):
            module.requires_grad_(flag)
        for child in module.children():
            visit(child)

    visit(model)


class TrainingMixin:
    """compile/fit/evaluate/predict for a gu model (see the module docstring)."""

    name: str
    trainer: Trainer | None

    def _init_training(self) -> None:
        self.trainer = None
        self._compiled: CompileArgs | None = None
        self._feed: Feed | None = None  # set when the model trains on sample numbers
        self._losses: list[Loss | None] = []  # the loss of each output, as trained
        self._regularized: list[Layer] = []  # layers with a weight penalty (found at fit)
        self.stop_training = False

    # ---------------------------------------------------------------- compile
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        metrics: Any = None,
        loss_weights: Any = None,
        *,
        lr: float | None = None,
        schedule: Any = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        precision: str = "fp32",
        device: str = "auto",
        jit_compile: bool = False,
        run_dir: str | Path | None = None,
        **trainer_options: Any,
    ) -> None:
        """Choose the loss, optimizer and metrics (Keras spelling; per output as a list or a
        dict by output name, with `loss_weights`); builds the `Trainer` once the outputs are
        known. `trainer_options` go to it as they are (log_every, nan_policy, keep_last, ...)."""
        if loss is None:
            raise ConfigError("compile needs a loss, e.g. loss='sparse_categorical_crossentropy'")
        unknown = sorted(set(trainer_options) - _TRAINER_OPTIONS)
        if unknown:
            raise ConfigError(
                f"compile got unknown option(s) {', '.join(unknown)}; see gu.Trainer for the "
                "options it passes on"
            )
        losses = list(loss.values()) if isinstance(loss, Mapping) else loss
        for spec in losses if isinstance(losses, (list, tuple)) else [losses]:
            if spec is not None:
                keras_loss(spec)  # a bad name fails here, before any data
        for spec in flat_metrics(metrics):
            keras_metric(spec)
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer_spec(optimizer, **({"lr": lr} if lr is not None else {}))
            lr = None
        options = dict(
            schedule=schedule,
            grad_accum=grad_accum,
            clip_grad_norm=clip_grad_norm,
            precision=precision,
            device=device,
            compile=jit_compile,
            run_dir=run_dir,
            **trainer_options,
        )
        apply_trainable(self)  # type: ignore[arg-type]
        self._compiled = CompileArgs(optimizer, lr, loss, metrics, loss_weights, options)
        self._compiled.saved = {
            "optimizer": optimizer.to_dict() if isinstance(optimizer, OptimizerSpec) else None,
            "loss": names_only(loss),
            "metrics": names_only(metrics) if metrics else [],
            "loss_weights": loss_weights,
        }
        self.trainer = None
        if self._outputs_known():
            self._make_trainer()

    def _outputs_known(self) -> bool:
        return True

    @property
    def optimizer(self) -> OptimizerView | None:
        """Keras's `model.optimizer` (None before compile): `learning_rate` to read and set,
        the torch optimizer's attributes once fit has built it."""
        return None if self._compiled is None else OptimizerView(self)

    def _make_trainer(self) -> Trainer:
        compiled = self._require_compiled()
        names = self._output_names()
        specs = per_output(compiled.loss, names, "loss")
        weights = per_output(
            1.0 if compiled.loss_weights is None else compiled.loss_weights,
            names,
            "loss_weights",
            default=1.0,
        )
        metrics = [
            [keras_metric(spec) for spec in specs_i]
            for specs_i in per_output_metrics(compiled.metrics, names)
        ]
        if all(s is None for s in specs):
            raise ConfigError(f"compile gave no loss to any of the outputs {names}")
        losses, transforms, logits = resolve_losses(specs, metrics, self._logit_activations())
        self._losses = losses
        structured = len(self._input_names(None)) != 1 or len(names) != 1 or weights != [1.0]
        options = dict(compiled.trainer_options)
        common = dict(optimizer=compiled.optimizer, lr=compiled.lr, **options)
        if not structured:
            self._feed = None
            self.trainer = Trainer(
                self,
                loss=losses[0],
                metrics=metrics[0],
                forward=self._logits_forward if logits else None,
                output_transform=transforms[0] if logits else None,
                regularizer=self._regularization_loss,
                **common,
            )
            return self.trainer
        feed = self._feed = Feed()
        engine_metrics: list[Any] = []
        if len(names) > 1:
            engine_metrics += [
                OutputLoss(feed, i, loss_fn, f"{names[i]}_loss")
                for i, loss_fn in enumerate(losses)
                if loss_fn is not None
            ]
        for i, metrics_i in enumerate(metrics):
            for metric in metrics_i:
                label = f"{names[i]}_{metric.name}" if len(names) > 1 else metric.name
                engine_metrics.append(OutputMetric(feed, i, metric, transforms[i], label))
        frozen = frozenset(logits)

        def forward(index: torch.Tensor) -> torch.Tensor:
            return feed.pack(self._run(feed.gather(index), frozen))

        self.trainer = Trainer(
            self,
            loss=OutputsLoss(feed, losses, weights),
            metrics=engine_metrics,
            forward=forward,
            regularizer=self._regularization_loss,
            **common,
        )
        return self.trainer

    def _logits_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run([x], frozenset({0}))[0]

    def _regularization_loss(self) -> torch.Tensor | None:
        total = None
        for layer in self._regularized:
            penalty = layer.regularization_loss()
            if penalty is not None:
                total = penalty if total is None else total + penalty
        return total

    def _require_compiled(self) -> CompileArgs:
        if self._compiled is None:
            raise ConfigError("call model.compile(optimizer=..., loss=...) before fit/evaluate")
        return self._compiled

    def _require_trainer(self) -> Trainer:
        self._require_compiled()
        if self.trainer is None:
            self._make_trainer()
        assert self.trainer is not None
        return self.trainer

    # ---------------------------------------------------------------- data
    def _adapt(self, x: Any, y: Any, method: str) -> Data:
        """x (and y) as checked tensors in the model's order; builds a lazy model from them."""
        if x is None:
            raise DataError(f"{method} needs inputs x")
        names = self._input_names(x)
        several = len(names) > 1
        inputs = [
            to_tensor(value, f"input '{name}'" if several else "x", dtype)
            for name, value, dtype in zip(
                names, align(x, names, "input", method), self._input_dtypes()
            )
        ]
        self._build_for(inputs)
        sizes: dict[str, torch.Tensor | None] = {
            (f"input '{n}'" if several else "x"): t for n, t in zip(names, inputs)
        }
        targets: list[torch.Tensor | None] = []
        if y is not None:
            self._require_trainer()  # the losses the targets are prepared for
            out_names = self._output_names()
            given = align(y, out_names, "target", method)
            for name, value, loss_fn in zip(out_names, given, self._losses):
                what = f"target '{name}'" if len(out_names) > 1 else "y"
                if value is None:
                    if loss_fn is not None:
                        raise DataError(
                            f"{method} has no targets for output '{name}', which has a loss; "
                            f"give y['{name}'] or compile it without a loss"
                        )
                    targets.append(None)
                    continue
                targets.append(prepare_target(to_tensor(value, what), loss_fn))
                sizes[what] = targets[-1]
        return Data(inputs, targets, same_length(sizes))

    def _follow_trainer(self) -> None:
        """Layers built after compile: onto the trainer's device and dtype (fp64 runs)."""
        if self.trainer is not None:
            self.to(self.trainer.device)  # type: ignore[attr-defined]
            dtype = weight_dtype(self.trainer.precision)
            if dtype is not None:
                self.to(dtype)  # type: ignore[attr-defined]

    def _tensors(self, x: Any, y: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One-input, one-output data as fit converts it (what `groundup estimate` measures)."""
        data = self._adapt(x, y, "fit")
        return data.inputs[0], (data.targets[0] if y is not None else None)

    # ---------------------------------------------------------------- fit / evaluate / predict
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[Any] | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[Any, ...] | None = None,
        shuffle: bool = True,
        class_weight: Mapping[int, float] | None = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        max_steps: int | None = None,
        seed: int = 0,
        resume_from: str | Path | None = None,
    ) -> History:
        """Train on `x`, `y` (arrays, or lists/dicts of them by input and output name).

        Epochs are numbered from `initial_epoch` up to `epochs` (Keras: `epochs` is the last
        epoch's number, not a count). `validation_split` holds out the LAST fraction of the
        samples (before shuffling), as Keras does. `resume_from` (a checkpoint) continues a
        run exactly."""
        self._require_compiled()
        batch_size = 32 if batch_size is None else batch_size
        if y is None:
            raise DataError("fit needs targets: call fit(x, y, ...)")
        if not 0.0 <= validation_split < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {validation_split}")
        if validation_split and validation_data is not None:
            raise ConfigError("give validation_split or validation_data, not both")
        if (
            isinstance(initial_epoch, bool)
            or not isinstance(initial_epoch, int)
            or initial_epoch < 0
        ):
            raise ConfigError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
        data = self._adapt(x, y, "fit")
        trainer = self._require_trainer()
        weights = sample_weights(sample_weight, class_weight, data)
        val: Data | None = None
        if validation_split:
            n_val = int(round(data.n * validation_split))
            if n_val == 0 or n_val == data.n:
                raise DataError(
                    f"validation_split {validation_split} of {data.n} samples leaves an empty "
                    "split; change validation_split"
                )
            data, val = split(data, data.n - n_val)
            weights = weights[: data.n] if weights is not None else None
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) < 2:
                raise DataError("validation_data must be a tuple (x_val, y_val)")
            val = self._adapt(validation_data[0], validation_data[1], "fit (validation_data)")
        apply_trainable(self)  # type: ignore[arg-type]
        self._regularized = [
            m
            for m in self.modules()  # type: ignore[attr-defined]
            if isinstance(m, Layer) and m.regularization_loss() is not None
        ]
        trainer.user_callbacks = _callbacks().adapt_callbacks(callbacks, self)
        trainer.verbose = 1 if verbose == "auto" else int(verbose)
        trainer.history = History()
        self.stop_training = False
        if resume_from is None:  # Keras numbers each fit's epochs from initial_epoch
            trainer.epoch, trainer.step_in_epoch = initial_epoch, 0
        n_epochs = max(epochs - initial_epoch, 0)
        if self._feed is None:
            train = TensorBatches(
                data.inputs[0], data.targets[0], weights,
                batch_size=batch_size, shuffle=shuffle, seed=seed,
            )  # fmt: skip
            val_batches = None
            if val is not None:
                val_batches = TensorBatches(
                    val.inputs[0], val.targets[0], batch_size=batch_size, shuffle=False
                )
            return trainer.fit(
                train, val_batches, epochs=n_epochs, max_steps=max_steps, resume_from=resume_from
            )
        both = data if val is None else concat(data, val)
        index = sample_indices(0, data.n)
        train = TensorBatches(
            index, index, weights, batch_size=batch_size, shuffle=shuffle, seed=seed
        )
        val_batches = None
        if val is not None:
            val_index = sample_indices(data.n, both.n)
            val_batches = TensorBatches(val_index, val_index, batch_size=batch_size, shuffle=False)
        with self._feed.holding(both.inputs, both.targets, trainer.device, self._float_dtype()):
            return trainer.fit(
                train, val_batches, epochs=n_epochs, max_steps=max_steps, resume_from=resume_from
            )

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: int | str = "auto",
        sample_weight: Any = None,
        return_dict: bool = False,
        callbacks: Sequence[Any] | None = None,
    ) -> float | list[float] | dict[str, float]:
        """Loss and metrics on `x`, `y`: a float with no metrics, else `[loss, *the others]`
        (per-output losses, then metrics, as Keras lists them)."""
        self._require_compiled()
        if sample_weight is not None:
            raise ConfigError("evaluate(sample_weight=...) is not supported; evaluate unweighted")
        batch_size = 32 if batch_size is None else batch_size
        if y is None:
            raise DataError("evaluate needs targets: call evaluate(x, y)")
        data = self._adapt(x, y, "evaluate")
        trainer = self._require_trainer()
        _callbacks().run_keras_hook(callbacks, self, "on_test_begin", None)
        if self._feed is None:
            batches = TensorBatches(
                data.inputs[0], data.targets[0], batch_size=batch_size, shuffle=False
            )
            logs = trainer.evaluate(batches)
        else:
            index = sample_indices(0, data.n)
            batches = TensorBatches(index, index, batch_size=batch_size, shuffle=False)
            with self._feed.holding(data.inputs, data.targets, trainer.device, self._float_dtype()):
                logs = trainer.evaluate(batches)
        _callbacks().run_keras_hook(callbacks, self, "on_test_end", logs)
        if verbose:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: int | str = 0,
        callbacks: Sequence[Any] | None = None,
    ) -> Any:
        """Outputs for `x` as NumPy arrays (probabilities for a softmax output): one array, or
        a list (a dict) of them for a model with several outputs."""
        batch_size = 32 if batch_size is None else batch_size
        data = self._adapt(x, None, "predict")
        _callbacks().run_keras_hook(callbacks, self, "on_predict_begin", None)
        trainer = self.trainer
        if trainer is not None and self._feed is None:
            flat = [trainer.predict(data.inputs[0], batch_size=batch_size).numpy()]
        else:
            flat = self._predict_loop(data, batch_size)
        _callbacks().run_keras_hook(callbacks, self, "on_predict_end", None)
        return self._pack_outputs(flat)

    def _predict_loop(self, data: Data, batch_size: int) -> list[np.ndarray]:
        """Batches through the model's own forward (probabilities) on the trainer's device and
        precision, or where the model is when it was never compiled."""
        trainer = self.trainer
        param = next(self.parameters(), None)  # type: ignore[attr-defined]
        device = trainer.device if trainer is not None else (
            param.device if param is not None else torch.device("cpu")
        )  # fmt: skip
        float_dtype = self._float_dtype()
        autocast = trainer.autocast_dtype if trainer is not None else None
        was_training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        chunks: list[list[torch.Tensor]] = []
        try:
            with torch.no_grad():
                for lo in range(0, data.n, batch_size):
                    xs = []
                    for t in data.inputs:
                        t = t[lo : lo + batch_size]
                        if float_dtype is not None and t.is_floating_point():
                            t = t.to(float_dtype)
                        xs.append(t.to(device))
                    if autocast is not None:
                        with torch.autocast(device.type, dtype=autocast):
                            outs = self._run(xs, frozenset())
                    else:
                        outs = self._run(xs, frozenset())
                    chunks.append(
                        [o.to(torch.promote_types(o.dtype, torch.float32)).cpu() for o in outs]
                    )
        finally:
            self.train(was_training)  # type: ignore[attr-defined]
        return [torch.cat([c[i] for c in chunks]).numpy() for i in range(len(chunks[0]))]

    def _float_dtype(self) -> torch.dtype | None:
        return weight_dtype(self.trainer.precision) if self.trainer is not None else None

    def _pack_outputs(self, flat: list[np.ndarray]) -> Any:
        return flat[0] if len(flat) == 1 else flat
