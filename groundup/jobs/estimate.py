"""`groundup estimate CONFIG`: what a run of CONFIG needs, before it runs.

The config's model is built the way its job builds it (`groundup train`, `pretrain` or
`finetune`, told apart by the config's keys or named by `command`), and no run folder is
created or touched:

1. memory per rank from the architecture (GPT/BERT) or a measured forward (other modules),
   with and without activation checkpointing, for DDP or FSDP2 when `world_size` > 1;
2. when that fits the device, the activations measured on the real model (the saved
   tensors of a forward at two small batches) replace the formula's;
3. a few real training steps at the configured micro-batch (one warm-up step left out) time
   the run's budget; the memory they reach is printed beside the prediction.

Data is read only as far as the model needs it: `train` loads its table (the input shape and
the steps per epoch), `finetune` reads its SFT or labelled examples (labels, row counts), and
`pretrain` and `finetune`'s causal_lm time on random token ids of the right shape (the speed of
a step does not depend on which tokens it sees); no tokenizer is trained and no shards are
written. The jobs call `pretrain_check`, `print_pretrain_table`, `finetune_preflight` and
`train_preflight` from here before their runs start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groundup.config import load_config
from groundup.errors import ConfigError
from groundup.estimate.architecture import flops_per_sample, shape_of
from groundup.estimate.check import MemoryBudgetError, check_fits
from groundup.estimate.memory import MemoryEstimate
from groundup.estimate.plan import StepPlan, fixes_for, plan_memory, preflight, summarize
from groundup.estimate.saved import measure_activations, measure_flops
from groundup.estimate.speed import Fit, time_forward, time_steps, trainer_fit
from groundup.estimate.table import print_summary

ESTIMATED = ("train", "pretrain", "finetune")
_MAX_TIMED = 200  # optimizer steps at most in the timing (see speed.time_steps)


def detect_command(config_path: str | Path, overrides=()) -> str:
    """train, pretrain or finetune, from the config's top-level keys (the rule
    `groundup lr-find` and `groundup sweep` use: groundup.sweep.commands)."""
    from groundup.sweep.commands import config_data
    from groundup.sweep.commands import detect_command as from_keys

    return from_keys(config_data(config_path, overrides), str(config_path))


def run_estimate(
    config_path: str | Path | None,
    overrides=(),
    *,
    command: str | None = None,
    world_size: int = 1,
    steps: int = 3,
    min_seconds: float = 1.0,
    timing: bool = True,
    verbose: int = 1,
    config: Any = None,
) -> dict[str, Any]:
    """Estimate memory and time of CONFIG's run (see the module doc); returns the summary
    that is printed. `world_size`: plan for that many ranks (the split, DDP/FSDP2 per rank;
    the steps are timed on this one device). The timing runs `steps` steps after a warm-up
    one, more while they take less than `min_seconds`; `timing=False` skips it."""
    if command is None:
        if config_path is None:
            raise ConfigError("groundup estimate needs a config file (or command=)")
        command = detect_command(config_path, overrides)
    if command not in ESTIMATED:
        raise ConfigError(
            f"unknown command {command!r} to estimate; use --command {' | '.join(ESTIMATED)}"
        )
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"--nproc must be an integer >= 1, got {world_size!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be an integer >= 1, got {steps!r}")
    build = {"train": _train_case, "pretrain": _pretrain_case, "finetune": _finetune_case}[command]
    case = build(config_path, overrides, config, world_size)
    summary = _estimate(case, steps if timing else 0, min_seconds)
    summary["command"] = command
    if verbose:
        name = Path(config_path).name if config_path is not None else command
        print_summary(summary, title=f"groundup estimate {name} ({command})")
        if summary.get("refusal"):
            print(f"the run would stop before its first step: {summary['refusal']}", flush=True)
    return summary


# ---------------------------------------------------------------- the common flow
@dataclass
class _Case:
    """A plan the formula can check before anything is big (the model on the meta device or
    still on the CPU), and `materialize()` -> (the plan of the real model on its device,
    make_fit, validation batches), where `make_fit()` -> (trainer, fit) for the timed steps."""

    plan: StepPlan
    materialize: Callable[[], tuple[StepPlan, Callable[[], tuple[Any, Fit]], Any]]


def _estimate(case: _Case, steps: int, min_seconds: float) -> dict[str, Any]:
    first = plan_memory(case.plan)  # the formula (GPT/BERT), or measured for any other module
    refusal = _refusal(case.plan, first)
    if refusal is not None:  # too big: nothing is built on the device
        return {**summarize(case.plan, first), "refusal": refusal}
    plan, make_fit, val = case.materialize()
    est: MemoryEstimate = first
    extra: dict[str, Any] = {}
    if shape_of(plan.model) is not None and plan.forward_loss is not None:
        measured = measure_activations(plan.forward_loss, plan.model)
        est = plan_memory(plan, measured)  # the more accurate figure, now that it fits
        extra["memory_architecture"] = first.to_dict()
        refusal = _refusal(plan, est)
    timed, eval_seconds = None, 0.0
    if refusal is None and steps > 0:
        trainer, fit = make_fit()
        timed = time_steps(fit, plan.device, steps, min_seconds=min_seconds, max_steps=_MAX_TIMED)
        if val is not None and plan.eval_batches:
            eval_seconds = time_forward(trainer, val)
    summary = summarize(plan, est, timed, eval_seconds, extra)
    summary["refusal"] = refusal
    return summary


def _refusal(plan: StepPlan, est: MemoryEstimate) -> str | None:
    try:
        check_fits(est, plan.device, fixes=fixes_for(plan, est))
    except MemoryBudgetError as exc:
        return str(exc)
    return None


def _on_device(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """The model where the Trainer will put it (fp64 runs cast it first)."""
    model = model.to(device)
    return model.to(torch.float64) if precision == "fp64" else model


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _token_forward(
    model: nn.Module, vocab: int, seq_len: int, device: torch.device, autocast: Any, labels: int = 0
) -> Any:
    """forward_loss for a token model: random ids in, the training loss out (labels > 0: a
    sequence classifier with that many classes)."""
    from groundup.train.losses import SparseCategoricalCrossentropy

    loss_fn = SparseCategoricalCrossentropy(from_logits=True)

    def run(batch: int) -> torch.Tensor:
        x = torch.randint(0, vocab, (batch, seq_len), device=device)
        y = torch.zeros(batch, dtype=torch.long, device=device) if labels else x
        with _autocast(device, autocast):
            out = model(x)
            loss_fn.sum(out, y)
        return out

    return run


def _random_tokens(vocab: int, batch: int, seq_len: int, count: int) -> Iterator:
    """`count` batches of random ids (x, y): the shape of a language model's batches, for
    timing (a step's speed does not depend on which tokens it sees)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(count):
        x = torch.randint(0, vocab, (batch, seq_len), generator=g)
        yield x, x.roll(-1, 1)


def _precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    """(autocast dtype or None, weight dtype) of a `train.precision` on `device`."""
    from groundup.train.device import resolve_precision

    weight = torch.float64 if precision == "fp64" else torch.float32
    return resolve_precision(precision, device), weight


def _n_evals(total_steps: int, eval_every: int | None, epochs: int | None) -> int:
    if eval_every:
        return total_steps // eval_every + (1 if total_steps % eval_every else 0)
    return epochs or 0


# ---------------------------------------------------------------- pretrain
def vocab_bound(cfg: Any) -> int:
    """The tokenizer's size where it is known without training it: a given tokenizer.json's,
    the one an earlier run left in run_dir (same kind), a BPE's target; else 256 (a char or
    bytes tokenizer: at most about one id per byte value)."""
    from groundup.data.tokenizers import Tokenizer

    if cfg.tokenizer.path:
        return Tokenizer.load(cfg.tokenizer.path).vocab_size
    if cfg.tokenizer.kind == "bpe":
        return cfg.tokenizer.vocab_size
    saved = Path(cfg.run_dir) / "tokenizer.json"
    if saved.is_file():
        tok = Tokenizer.load(saved)
        if tok.kind == cfg.tokenizer.kind:
            return tok.vocab_size
    return 256


def pretrain_plan(
    cfg: Any,
    device: torch.device,
    world: int,
    vocab_size: int,
    model: nn.Module | None = None,
) -> StepPlan:
    """The StepPlan of `groundup pretrain` (a model on the meta device unless one is given)."""
    from groundup.jobs.pretrain import split_global_batch
    from groundup.jobs.pretrain_objectives import Objective, model_config, sequence_length

    model_cfg = model_config(cfg.objective, cfg.model, vocab_size)
    seq_len = sequence_length(cfg.objective, model_cfg, cfg.mlm)
    micro, accum = split_global_batch(cfg, seq_len, world)
    if model is None:
        with torch.device("meta"):
            model = _pretrain_model(cfg.objective, model_cfg)
    autocast, weight = _precision(cfg.train.precision, device)
    t = cfg.train
    evals = _n_evals(t.max_steps, t.eval_every, None) * (t.eval_batches or 0)
    kind = model_cfg.flavour if cfg.objective == "clm" else "bert (masked LM)"
    return StepPlan(
        model=model,
        description=f"{kind}, {model_cfg.n_layer} layers x {model_cfg.n_embd}, "
        f"{seq_len} tokens, vocabulary {model_cfg.vocab_size}",
        micro_batch=micro,
        device=device,
        optimizer=cfg.optim.optimizer_spec(),
        grad_accum=accum,
        world_size=world,
        strategy=cfg.distributed.strategy,
        seq_len=seq_len,
        autocast_dtype=autocast,
        weight_dtype=weight,
        checkpointing=cfg.distributed.activation_checkpointing,
        flops_per_sample=Objective(cfg.objective, model, seq_len).flops_per_sample(),
        total_steps=t.max_steps,
        eval_batches=evals,
    )


def _pretrain_model(objective: str, model_cfg: Any) -> nn.Module:
    if objective == "clm":
        from groundup.models.gpt import GPT

        return GPT(model_cfg)
    from groundup.models.bert import BertForMaskedLM

    return BertForMaskedLM(model_cfg)


def pretrain_check(cfg: Any, device: torch.device, world: int) -> None:
    """`groundup pretrain` before its run folder changes: refuse a step that cannot fit
    (the vocabulary is the tokenizer's bound: the tokenizer is trained inside the run)."""
    if not cfg.train.check_memory:
        return
    plan = pretrain_plan(cfg, device, world, vocab_bound(cfg))
    preflight(plan, check=True, verbose=0)


def print_pretrain_table(
    cfg: Any, model: nn.Module, vocab_size: int, device: torch.device, world: int, peak: float
) -> dict[str, Any]:
    """The one-time table of `groundup pretrain`, for the model as built (exact vocabulary);
    the expected time is a lower bound: the run's FLOPs at the measured matmul peak."""
    plan = pretrain_plan(cfg, device, world, vocab_size, model=model)
    extra: dict[str, Any] = {"peak_flops": peak}
    if plan.flops_per_sample and peak:
        train = plan.flops_per_sample * plan.samples_per_step * plan.total_steps
        evals = plan.flops_per_sample / 3 * plan.micro_batch * plan.eval_batches
        extra["time_lower_bound_s"] = (train + evals) / (peak * world)
    summary = summarize(plan, plan_memory(plan), extra=extra)
    print_summary(summary, title=f"pretrain: measured matmul peak {peak / 1e9:.0f} GFLOP/s")
    return summary


def _pretrain_case(path: Any, overrides: Any, config: Any, world: int) -> _Case:
    from groundup.jobs.pretrain import PretrainConfig, check_pretrain
    from groundup.seed import set_seed
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    cfg = config if config is not None else load_config(PretrainConfig, path, overrides)
    device, _ = check_pretrain(cfg, world, None)
    vocab = vocab_bound(cfg)
    meta = pretrain_plan(cfg, device, world, vocab)

    def materialize() -> tuple[StepPlan, Any, Any]:
        set_seed(cfg.seed)
        model = _pretrain_model(cfg.objective, meta.model.config)
        model = _on_device(model, device, cfg.train.precision)
        plan = pretrain_plan(cfg, device, world, vocab, model=model)
        v, T = model.config.vocab_size, plan.seq_len
        plan.forward_loss = _token_forward(model, v, T, device, plan.autocast_dtype)

        def make_fit() -> tuple[Any, Fit]:
            trainer = Trainer.from_config(
                model, cfg.train, cfg.optim,
                loss=SparseCategoricalCrossentropy(from_logits=True),
                grad_accum=plan.grad_accum, device=device, verbose=0,
                activation_checkpointing=cfg.distributed.activation_checkpointing,
            )  # fmt: skip
            batches = _random_tokens(v, plan.micro_batch, T, (_MAX_TIMED + 1) * plan.grad_accum)
            return trainer, trainer_fit(trainer, batches)

        return plan, make_fit, list(_random_tokens(v, plan.micro_batch, T, 3))

    return _Case(meta, materialize)


# ---------------------------------------------------------------- finetune
def finetune_plan(
    cfg: Any, base: Any, model: nn.Module, data: Any, world: int, device: torch.device
) -> StepPlan:
    """The StepPlan of `groundup finetune` for its built model (data None: causal_lm)."""
    from groundup.jobs.finetune import _strategy, split_batch

    micro, accum = split_batch(cfg.train, world)
    if cfg.task in ("dpo", "orpo", "simpo", "reward"):
        micro *= 2  # a pair is two sequences through the model (the reference pass: no grad)
    block = base.config.block_size
    seq_len = data.info.get("max_len") if data is not None else None
    seq_len = seq_len or (cfg.data.max_len or min(block, 512))
    autocast, weight = _precision(cfg.train.precision, device)
    t = cfg.train
    steps, epochs, val_batches = t.max_steps, None, t.eval_batches or 0
    if data is not None and cfg.task != "causal_lm":
        per_epoch = max(1, len(data.train) // accum)
        epochs = t.epochs
        steps = min(per_epoch * t.epochs, t.max_steps or per_epoch * t.epochs)
        if data.val is not None:
            val_batches = min(len(data.val), t.eval_batches or len(data.val))
    evals = _n_evals(steps or 0, t.eval_every, epochs) * val_batches
    return StepPlan(
        model=model,
        description=f"{base.family} from {base.path}, task {cfg.task}, method {cfg.method}",
        micro_batch=micro,
        device=device,
        optimizer=cfg.optim.optimizer_spec(),
        grad_accum=accum,
        world_size=world,
        strategy=_strategy(cfg, world),
        seq_len=seq_len,
        autocast_dtype=autocast,
        weight_dtype=weight,
        checkpointing=cfg.distributed.activation_checkpointing,
        flops_per_sample=flops_per_sample(model, seq_len),
        total_steps=steps,
        eval_batches=evals,
    )


def finetune_preflight(
    cfg: Any, base: Any, model: nn.Module, data: Any, world: int, device: torch.device, verbose: int
) -> dict[str, Any]:
    """`groundup finetune` before its run folder changes: the table (rank 0, verbose) and the
    refusal of a step that cannot fit."""
    plan = finetune_plan(cfg, base, model, data, world, device)
    return preflight(plan, check=cfg.train.check_memory, verbose=verbose)


def _finetune_case(path: Any, overrides: Any, config: Any, world: int) -> _Case:
    from groundup.data.task_data import Part, load_data
    from groundup.jobs.finetune import FinetuneConfig, build_finetune_model, split_batch
    from groundup.models.folders import load_base, with_dropout
    from groundup.seed import set_seed
    from groundup.train.device import resolve_device
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    cfg = config if config is not None else load_config(FinetuneConfig, path, overrides)
    if cfg.task in ("dpo", "orpo", "simpo", "reward"):
        raise ConfigError(
            f"groundup estimate does not time task {cfg.task} yet (its steps score pairs); "
            "groundup finetune prints the memory table of such a run before it starts"
        )
    device = resolve_device(cfg.train.device)
    base = load_base(cfg.base.path, allow_pickle=cfg.base.allow_pickle)
    base.config = with_dropout(base.config, cfg.base.dropout)
    micro, _ = split_batch(cfg.train, world)
    set_seed(cfg.seed)
    data = None
    if cfg.task != "causal_lm":  # the run folder is only read for causal_lm's shards
        part = Part(micro, 0, world if world > 1 else None)  # rank 0's share, as in the job
        data = load_data(cfg, base, Path(cfg.run_dir), 0, part)
    labels = data.info.get("labels") if data is not None else None
    model, _, _ = build_finetune_model(cfg, base, labels)  # on the CPU, as in the job
    cpu_plan = finetune_plan(cfg, base, model, data, world, device)

    def materialize() -> tuple[StepPlan, Any, Any]:
        on_device = _on_device(model, device, cfg.train.precision)
        plan = finetune_plan(cfg, base, on_device, data, world, device)
        vocab, T, n_labels = base.config.vocab_size, plan.seq_len, len(labels or [])
        plan.forward_loss = _token_forward(
            on_device, vocab, T, device, plan.autocast_dtype, n_labels
        )

        def make_fit() -> tuple[Any, Fit]:
            trainer = Trainer.from_config(
                on_device, cfg.train, cfg.optim,
                loss=SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"] if cfg.task == "classification" else (),
                grad_accum=plan.grad_accum, device=device, verbose=0,
                activation_checkpointing=cfg.distributed.activation_checkpointing,
            )  # fmt: skip
            if data is not None:
                return trainer, trainer_fit(trainer, data.train)
            count = (_MAX_TIMED + 1) * plan.grad_accum
            return trainer, trainer_fit(trainer, _random_tokens(vocab, micro, T, count))

        val = data.val if data is not None else list(_random_tokens(vocab, micro, T, 3))
        return plan, make_fit, val

    return _Case(cpu_plan, materialize)


# ---------------------------------------------------------------- train
def train_plan(cfg: Any, model: Any, data: Any) -> StepPlan:
    """The StepPlan of `groundup train` for its compiled Sequential (measured activations)."""
    trainer = model.trainer
    x, y = data.x_train, data.y_train
    t = cfg.train
    batches = -(-len(x) // t.batch_size)
    per_epoch = max(1, batches // t.grad_accum)
    steps = min(per_epoch * t.epochs, t.max_steps or per_epoch * t.epochs)
    val_batches = 0
    if data.x_val is not None and len(data.x_val):
        val_batches = t.epochs * -(-len(data.x_val) // t.batch_size)

    def run(batch: int) -> torch.Tensor:
        xb, yb = model._tensors(x[:batch], y[:batch])  # the conversion fit applies
        dtype = next(model.parameters()).dtype  # fp64 runs cast the float inputs too
        b = tuple(
            t.to(trainer.device, dtype=dtype if t.is_floating_point() else t.dtype)
            for t in (xb, yb)
        )
        with _autocast(trainer.device, trainer.autocast_dtype):
            _, outputs = trainer.compute_loss(b, reduction="sum")
        return outputs

    flops = measure_flops(run, model, batch_size=min(2, len(x)))
    layers = len(model.layers)
    return StepPlan(
        model=model,
        description=f"Sequential, {layers} layers, input {tuple(x.shape[1:])}",
        micro_batch=t.batch_size,
        device=trainer.device,
        optimizer=cfg.optim.optimizer_spec(),
        grad_accum=t.grad_accum,
        autocast_dtype=trainer.autocast_dtype,
        weight_dtype=torch.float64 if t.precision == "fp64" else torch.float32,
        flops_per_sample=flops,
        total_steps=steps,
        eval_batches=val_batches,
        forward_loss=run,
    )


def train_preflight(cfg: Any, model: Any, data: Any, verbose: int) -> dict[str, Any]:
    """`groundup train` before its run folder changes: the table (verbose) and the refusal.
    The activations are measured: two forwards of 2 and 3 rows (RNG and buffers restored)."""
    plan = train_plan(cfg, model, data)
    return preflight(plan, check=cfg.train.check_memory, verbose=verbose)


def _train_case(path: Any, overrides: Any, config: Any, world: int) -> _Case:
    from groundup.data.tabular_pipeline import prepare_tabular
    from groundup.jobs.train_tabular import TrainJobConfig, build_model
    from groundup.seed import set_seed

    if world != 1:
        raise ConfigError("groundup train runs in one process; drop --nproc")
    cfg = config if config is not None else load_config(TrainJobConfig, path, overrides)
    set_seed(cfg.seed)
    data = prepare_tabular(cfg.data)
    model = build_model(cfg, data)
    plan = train_plan(cfg, model, data)  # a Sequential is small: measured at once

    def make_fit() -> tuple[Any, Fit]:
        def fit(callbacks: list, max_steps: int) -> Any:
            return model.fit(
                data.x_train, data.y_train, batch_size=cfg.train.batch_size,
                epochs=max_steps, max_steps=max_steps, callbacks=callbacks, verbose=0,
            )  # fmt: skip

        return model.trainer, fit

    val = None
    if data.x_val is not None and len(data.x_val):
        from groundup.train.batches import TensorBatches

        xv, yv = model._tensors(data.x_val, data.y_val)
        val = TensorBatches(xv, yv, batch_size=cfg.train.batch_size, shuffle=False)
    return _Case(plan, lambda: (plan, make_fit, val))
