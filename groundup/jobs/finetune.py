"""`groundup finetune CONFIG`: specialise a pretrained model on a task, in full or with LoRA.

base model (a groundup run or a Hugging Face folder) -> task model (GPT language model, or a
classification head on BERT/GPT) -> optional LoRA adapters -> data (text, SFT JSONL, labelled
CSV/JSONL, preference pairs) -> the one `Trainer` -> a model folder, metrics and, for
classifiers, a test report with the confusion matrix.

Preference tasks (dpo, orpo, simpo) train the language model through `PreferencePolicy`, which
turns a batch of pairs into the statistics the loss reads (the reference: a frozen copy, or with
LoRA the same model with its adapters bypassed); task reward trains a one-output classifier
through `PairScorer` with the Bradley-Terry loss. Both log pref_accuracy, reward_margin,
chosen_reward and rejected_reward in every train record and evaluation.

Under torchrun (`groundup finetune CONFIG --nproc N`, or `torchrun ... -m groundup finetune
CONFIG`) the same config runs on N ranks, as pretraining does: rank 0 prepares the run
directory (and, for causal_lm, the token shards) while the others wait, every rank trains on
its slice of each global batch of train.batch_size x grad_accum sequences (DDP or FSDP2, the
`distributed:` section; LoRA uses DDP), and rank 0 writes the model folder, results and
reports and prints the sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from groundup.config import check, load_config
from groundup.data.task_data import Part, load_data
from groundup.distributed import DistributedConfig
from groundup.errors import ConfigError
from groundup.evals.training import chat_formatter, eval_tasks_of, task_evaluators
from groundup.finetune.preference import PAIR_TASKS, PREFERENCE_TASKS
from groundup.finetune.preference_loss import PreferenceConfig
from groundup.generate import SampleConfig, sample_reply, sample_text
from groundup.models.folders import build_task_model, load_base, weights_fingerprint, with_dropout
from groundup.runs import MODEL_DIR, Run, plan_run
from groundup.train.loop_config import LoopConfig, Precision
from groundup.train.optim_config import OptimConfig
from groundup.train.run_log import append_record, sample_record

CHAT_TASKS = ("sft", *PREFERENCE_TASKS)  # language models that answer in the chat template


@dataclass
class BaseConfig:
    """The model to start from."""

    path: str | None = None  # a groundup run (or its model/), or a Hugging Face model folder
    init: Literal["pretrained", "random"] = "pretrained"  # random: the from-scratch control
    allow_pickle: bool = False  # read pytorch_model.bin (pickle; weights_only) when no safetensors
    dropout: float | None = None  # replaces the base model's dropout
    pooling: Literal["cls", "mean"] = "cls"  # BERT classifiers: pooler on [CLS], or token mean


@dataclass
class LoraConfig:
    """Low-rank adapters on the matched Linear layers; everything else but the head is frozen."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["*.attn.qkv", "*.attn.proj"])
    # a PEFT adapter folder to start from; its targets, rank, alpha and dropout replace the above
    init_from: str | None = None


@dataclass
class FinetuneDataConfig:
    """Where the examples are and how to read them (fields used depend on the task)."""

    train: str | None = (
        None  # causal_lm: text/folder/JSONL/Parquet; sft: JSONL; classification: CSV/JSONL
    )
    val: str | None = None  # default: val_fraction of train, held out with the seed
    test: str | None = None  # classification: the held-out test file for the final report
    builtin: str | None = (
        None  # stdlib-topics (classification), stdlib-qa (sft), stdlib-pref (pairs)
    )
    val_fraction: float = 0.1
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    chosen_field: str = "chosen"  # preference pairs: the preferred reply (or its conversation)
    rejected_field: str = "rejected"  # preference pairs: the other reply
    template: str = (
        "auto"  # chat template: auto, plain, chatml, llama3, a .jinja file or a Jinja string
    )
    packing: bool = False  # sft: pack several examples per row (fewer padded tokens)
    max_len: int | None = None  # tokens per example; default: the model's block size (<= 512)

    def __post_init__(self) -> None:
        check(
            0.0 <= self.val_fraction < 1.0,
            f"data.val_fraction must be in [0, 1), got {self.val_fraction}",
        )
        check(
            self.max_len is None or self.max_len >= 2,
            f"data.max_len must be >= 2 or null, got {self.max_len}",
        )


@dataclass
class FinetuneLoopConfig(LoopConfig):
    """Epochs or steps, batch geometry, evaluation and checkpoint cadence, precision."""

    epochs: int = 3  # passes over the training examples (causal_lm: set max_steps instead)
    batch_size: int = 16  # examples per micro-batch (the global batch under torchrun)
    log_every: int = 10  # steps between train records
    keep_last: int | None = 2  # step checkpoints kept besides best/ (null: all)
    clip_grad_norm: float | None = 1.0  # max global gradient norm; null: no clipping
    precision: Precision = "auto"  # auto: bf16 where the device has it

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            isinstance(self.epochs, int) and self.epochs >= 1,
            f"train.epochs must be an integer >= 1, got {self.epochs!r}",
        )


def _finetune_optim() -> OptimConfig:
    return OptimConfig(
        name="adamw",
        lr=5e-5,
        weight_decay=0.01,
        schedule="cosine",
        warmup_steps=0,
        min_lr_ratio=0.1,
    )


@dataclass
class FinetuneConfig:
    """The whole `groundup finetune` config (see configs/finetune-*.yaml)."""

    run_dir: str = "runs/finetune"
    seed: int = 0
    resume: Literal["never", "auto"] = "never"
    task: Literal["causal_lm", "sft", "classification", "dpo", "orpo", "simpo", "reward"] = "sft"
    method: Literal["full", "lora"] = "full"
    base: BaseConfig = field(default_factory=BaseConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # tasks dpo, orpo, simpo
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    train: FinetuneLoopConfig = field(default_factory=FinetuneLoopConfig)
    sample: SampleConfig | None = None  # language-model tasks: a generation at the end
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # torchrun only

    def __post_init__(self) -> None:
        check(
            not (self.method == "lora" and self.base.init == "random"),
            "base.init: random is the from-scratch control and trains every weight; use "
            "method: full with it (LoRA on frozen random weights is no control)",
        )
        check(
            self.base.path is not None,
            "base.path is not set: point it at a groundup run (e.g. runs/pydocs) or a Hugging "
            "Face model folder",
        )
        needs = {
            "classification": "a CSV/JSONL file of text and label, or data.builtin: stdlib-topics",
            "sft": "a JSONL file of prompt/response or messages, or data.builtin: stdlib-qa",
            "causal_lm": "a text file, folder, JSONL or Parquet file",
            **dict.fromkeys(
                (*PREFERENCE_TASKS, "reward"),
                "a JSONL file of prompt/chosen/rejected, or data.builtin: stdlib-pref",
            ),
        }[self.task]
        check(
            self.data.train is not None or self.data.builtin is not None,
            f"task {self.task} needs data: set data.train ({needs})",
        )
        check(
            self.data.builtin is None or self.task != "causal_lm",
            "data.builtin holds labelled and SFT sets; for causal_lm set data.train",
        )
        check(
            self.task != "causal_lm" or self.train.max_steps is not None,
            "task causal_lm trains on random windows of the text: set train.max_steps",
        )
        if self.task in PREFERENCE_TASKS:
            self.preference.check_task(self.task)
        check(
            self.lora.init_from is None
            or (self.method == "lora" and self.task not in ("classification", "reward")),
            "lora.init_from (a PEFT adapter) needs method: lora and a language-model task "
            "(causal_lm, sft, dpo, orpo, simpo)",
        )
        if self.task in ("sft", *PREFERENCE_TASKS, "reward"):
            from groundup.finetune.chat_templates import load_template

            load_template(self.data.template)  # a Jinja error: one line at config load
        check(
            not (self.data.packing and self.task in PAIR_TASKS),
            f"data.packing packs SFT examples; task {self.task} reads pairs one per row: "
            "remove data.packing",
        )


# ------------------------------------------------------------------------------- the job


def run_finetune(
    config_path: str | Path | None,
    overrides=(),
    overwrite: bool = False,
    resume: bool = False,
    config: FinetuneConfig | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """`groundup finetune CONFIG`; returns the headline results (also in results.json).

    Under torchrun every rank runs this; errors name the rank ("rank 1: ...")."""
    from groundup import distributed as du

    cfg = config if config is not None else load_config(FinetuneConfig, config_path, overrides)
    return du.run_job(
        cfg.distributed,
        cfg.train.device,
        lambda device: _finetune(cfg, overwrite, resume, verbose, device),
    )


def split_batch(t: FinetuneLoopConfig, world_size: int = 1) -> tuple[int, int]:
    """(sequences per micro-batch on each rank, grad_accum) for the global batch of
    train.batch_size x grad_accum sequences (see `distributed.split_sequences`)."""
    from groundup.distributed import split_sequences

    return split_sequences(t.batch_size, t.grad_accum, world_size)


def _strategy(cfg: FinetuneConfig, world_size: int) -> str:
    """The strategy to ask the Trainer for. LoRA trains a few adapters on a frozen, replicated
    base: DDP (which reduces only trainable parameters) is its strategy; FSDP2 is refused.
    Preference and reward tasks train through a wrapper module (the reference model beside
    the policy, pairs into scores): DDP too."""
    strategy = cfg.distributed.strategy
    if cfg.task in PAIR_TASKS and world_size > 1:
        if strategy == "fsdp":
            raise ConfigError(
                f"task {cfg.task} is not supported with distributed.strategy fsdp (the policy "
                "trains beside an unsharded reference); use distributed.strategy: ddp"
            )
        return "ddp"
    if cfg.method != "lora" or world_size == 1:
        return strategy
    if strategy == "fsdp":
        raise ConfigError(
            "method lora is not supported with distributed.strategy fsdp (the adapters and "
            "the LoRA model folder need unsharded weights); use distributed.strategy: ddp"
        )
    return "ddp"  # auto: the frozen base must fit one device anyway


def _finetune(
    cfg: FinetuneConfig,
    overwrite: bool,
    resume: bool,
    verbose: int,
    rank_device: torch.device | None,
) -> dict[str, Any]:
    from groundup import distributed as du
    from groundup.jobs.estimate import finetune_preflight
    from groundup.seed import set_seed
    from groundup.train.device import resolve_device
    from groundup.train.trainer import Trainer

    rank, world = du.rank(), du.world_size()
    verbose = verbose if rank == 0 else 0
    plan = du.main_first(lambda: plan_run(cfg.run_dir, cfg, overwrite=overwrite, resume=resume))
    strategy = _strategy(cfg, world)
    batch_size, grad_accum = split_batch(cfg.train, world)
    # The base, the data and the model (LoRA targets included) are built and checked before
    # the run folder is touched: a mistake in them must not cost the previous run.
    base = load_base(cfg.base.path, allow_pickle=cfg.base.allow_pickle)
    base.config = with_dropout(base.config, cfg.base.dropout)
    part = Part(batch_size, rank, world if world > 1 else None)
    set_seed(cfg.seed)
    data = None if cfg.task == "causal_lm" else load_data(cfg, base, plan.path, verbose, part)
    if data is None:  # causal_lm writes its token shards into the run folder: check the paths
        from groundup.data.corpus import Corpus

        for source in (cfg.data.train, cfg.data.val):
            if source is not None:
                Corpus(source, text_field=cfg.data.text_field)
    labels = data.info.get("labels") if data is not None else None
    set_seed(cfg.seed)  # every rank: the same new head and adapters as one process
    model, trainable, total = build_finetune_model(cfg, base, labels)
    # the one-time table, and a step that cannot fit refused before any file changes
    device = rank_device if rank_device is not None else resolve_device(cfg.train.device)
    finetune_preflight(cfg, base, model, data, world, device, verbose)
    tasks = eval_tasks_of(cfg.train, "sft" if cfg.task in PREFERENCE_TASKS else cfg.task)
    trained = trained_module(cfg, model)  # what the Trainer runs: the model, or pairs -> stats
    loss, metrics, extra_callbacks = _objective(cfg)
    token_loss = cfg.task in ("causal_lm", "sft")  # a next-token loss: perplexity, bpb
    with Run.begin(plan, verbose=verbose) as run:
        if data is None:  # rank 0 encodes the text shards, the others read them
            data = load_data(cfg, base, run.path, verbose, part)
        if verbose:
            print(_model_line(cfg, base, trainable, total), flush=True)
        evaluators = task_evaluators(tasks, cfg.train, base.tokenizer, _chat_prompt(cfg, base))
        trainer = Trainer.from_config(
            trained,
            cfg.train,
            cfg.optim,
            loss=loss,
            metrics=metrics,
            grad_accum=grad_accum,
            device=rank_device if rank_device is not None else cfg.train.device,
            run_dir=run.path,
            verbose=verbose,
            report_perplexity=token_loss,
            token_bytes=base.tokenizer.token_bytes() if token_loss else None,
            callbacks=[
                *run.callbacks("val_loss" if data.val is not None else None),
                *extra_callbacks,
            ],
            evaluators=[_on_language_model(e, cfg) for e in evaluators],
            config=plan.config,
            strategy=strategy,
            activation_checkpointing=cfg.distributed.activation_checkpointing,
        )
        if verbose and du.active():
            print(du.describe_batch(trainer.strategy, batch_size, grad_accum), flush=True)
        rss_before_fit = _reset_peak_rss_mib()
        options = cfg.train.fit_options()
        if cfg.task == "causal_lm":
            options.pop("epochs", None)  # text windows never end: max_steps decides
        trainer.fit(data.train, data.val, resume_from=run.checkpoint, **options)
        meta = _model_meta(cfg, base, data, labels)
        # FSDP2: every rank gathers, rank 0 gets a plain copy (it also generates the sample)
        plain = _save_model(run.path / MODEL_DIR, model, trainer.strategy, base, cfg, labels, meta)
        results = _evaluate_at_end(cfg, trainer, data, labels, run.path)
        results.update(trainable_params=trainable, total_params=total)
        if rank == 0:
            results["peak_rss_mib"] = _peak_rss_mib()
            if rss_before_fit is not None:  # what training added: grads, optimizer, activations
                results["fit_rss_growth_mib"] = _proc_status_mib("VmHWM") - rss_before_fit
            if world > 1:
                results["world_size"] = world
            run.write_results(results)
            _report(results, run.path / MODEL_DIR, verbose)
            if cfg.sample is not None and cfg.task not in ("classification", "reward"):
                results["sample"] = _sample(plain.eval(), base.tokenizer, cfg, bool(verbose))
                append_record(run.path, sample_record(trainer.step, results["sample"]))
        du.barrier()  # rank 0 writes the results and samples; the ranks end together
    return results


def _template_spec(cfg: FinetuneConfig, base: Any) -> str:
    """The template a run saves: a built-in's name, or the Jinja text itself (a file the
    config named may move or change after the run)."""
    from groundup.finetune.sft import get_template

    return get_template(cfg.data.template, base.tokenizer).spec


def _chat_prompt(cfg: FinetuneConfig, base: Any) -> Any:
    """How an SFT run's generation tasks ask their question: in its chat template."""
    if cfg.task not in CHAT_TASKS:
        return None
    return chat_formatter(base.tokenizer, cfg.data.template)


def trained_module(cfg: FinetuneConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The module the Trainer trains: the task model itself, or for pair tasks the wrapper
    that turns a batch of pairs into what the loss reads. DPO's reference: a frozen copy of
    the starting model (method full), or the same model with its adapters bypassed (lora)."""
    if cfg.task in PREFERENCE_TASKS:
        from groundup.finetune.reference import PreferencePolicy

        reference = "none"
        if cfg.task == "dpo":
            reference = "adapters" if cfg.method == "lora" else "copy"
        return PreferencePolicy(model, reference)
    if cfg.task == "reward":
        from groundup.finetune.reward import PairScorer

        return PairScorer(model)
    return model


def _objective(cfg: FinetuneConfig) -> tuple[Any, list[Any], list[Any]]:
    """(loss, metrics, extra callbacks) of the task."""
    from groundup.train.losses import SparseCategoricalCrossentropy

    if cfg.task not in PAIR_TASKS:
        metrics = ["accuracy"] if cfg.task == "classification" else []
        return SparseCategoricalCrossentropy(from_logits=True), metrics, []
    from groundup.finetune.preference_loss import PreferenceObjective, WindowFigures, pair_metrics

    if cfg.task == "reward":
        from groundup.finetune.reward import BradleyTerryLoss

        loss = BradleyTerryLoss()
    else:
        loss = PreferenceObjective(cfg.task, cfg.preference)
    return loss, pair_metrics(), [WindowFigures()]


def _on_language_model(evaluator: Any, cfg: FinetuneConfig) -> Any:
    """A task evaluator of a preference run scores the policy, not the wrapper around it."""
    if cfg.task not in PREFERENCE_TASKS:
        return evaluator
    return lambda trained: evaluator(trained.policy)


def _evaluate_at_end(
    cfg: FinetuneConfig, trainer: Any, data: Any, labels: list[str] | None, run_dir: Path
) -> dict[str, Any]:
    """Steps, data figures, the validation metrics and, for classifiers, the test report.
    Every rank takes part (FSDP2 needs all ranks in each forward); rank 0 alone writes the
    report and confusion matrix."""
    from groundup import distributed as du

    results: dict[str, Any] = {
        "steps": trainer.step,
        **{k: v for k, v in data.info.items() if k not in ("labels", "pad_id")},
    }
    if data.val is not None:
        results.update(trainer.evaluate(data.val, prefix="val_"))
    if cfg.task == "classification" and data.test is not None:
        from groundup.jobs.evaluate import classification_results

        out_dir = run_dir if du.is_main() else None
        results.update(classification_results(trainer, data.test, labels, out_dir, "test_"))
    return results


def build_finetune_model(
    cfg: FinetuneConfig, base: Any, labels: list[str] | None
) -> tuple[torch.nn.Module, int, int]:
    """The task model on the base, with LoRA adapters when asked (a target pattern that
    matches nothing is an error here, before any work); (model, trainable, total params)."""
    from groundup.finetune.lora import apply_lora, trainable_parameters

    model = build_task_model(
        base,
        "sft" if cfg.task in PREFERENCE_TASKS else cfg.task,  # the policy: a language model
        num_labels=len(labels) if labels else None,
        pooling=cfg.base.pooling,
        pretrained=cfg.base.init == "pretrained",
    )
    if cfg.method == "lora" and cfg.lora.init_from:
        from groundup.interop.peft_adapter import load_peft_adapter

        load_peft_adapter(model, cfg.lora.init_from)
    elif cfg.method == "lora":
        apply_lora(model, cfg.lora.targets, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        for name, p in model.named_parameters():  # the new head is trained in full
            if name.startswith(("classifier.", "score.", "bert.pooler.")):
                p.requires_grad_(True)
    trainable, total = trainable_parameters(model)
    return model, trainable, total


def _model_line(cfg: FinetuneConfig, base: Any, trainable: int, total: int) -> str:
    note = ""
    if base.family == "bert" and cfg.base.pooling == "mean":
        note = (
            "note: base.pooling mean has no transformers class, so this classifier cannot be "
            "exported with groundup export (base.pooling: cls can)\n"
        )
    return (
        f"{note}model: {base.family} from {base.path} ({cfg.base.init}), task {cfg.task}, "
        f"method {cfg.method}: {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / total:.2f}%)"
    )


def _model_meta(cfg: FinetuneConfig, base: Any, data: Any, labels: list[str] | None) -> dict:
    """What the model folder's config.json says about how the model was made."""
    meta = {
        "family": base.family,
        # a preference-tuned model is a chat model: generate, evaluate and export read it as sft
        "task": "sft" if cfg.task in PREFERENCE_TASKS else cfg.task,
        "method": cfg.method,
        "model": base.config.to_dict(),
        "labels": labels,
        "pad_id": data.info.get("pad_id"),
        "pooling": cfg.base.pooling,
        "base": str(Path(base.path).resolve()),
        "base_fingerprint": weights_fingerprint(base.state_dict),
        "template": _template_spec(cfg, base),
        "prompt_field": cfg.data.prompt_field,
        "response_field": cfg.data.response_field,
        "messages_field": cfg.data.messages_field,
        "max_len": data.info.get("max_len"),
        "text_field": cfg.data.text_field,
        "label_field": cfg.data.label_field,
    }
    if cfg.task in PREFERENCE_TASKS:
        meta["objective"] = cfg.task  # how it was tuned (the loss: config.yaml's preference)
    return meta


def _report(results: dict[str, Any], model_dir: Path, verbose: int) -> None:
    if not verbose:
        return
    shown = ", ".join(
        f"{k} {v:.4f}"
        for k, v in results.items()
        if k.startswith(("val_", "test_")) and isinstance(v, float)
    )
    print(f"{shown}\nmodel saved in {model_dir}", flush=True)


def _save_model(
    folder: Path,
    model: torch.nn.Module,
    strategy: str,
    base: Any,
    cfg: FinetuneConfig,
    labels: list[str] | None,
    meta: dict[str, Any],
) -> torch.nn.Module:
    """Write the model folder from rank 0; returns a model rank 0 can run alone.

    FSDP2 (full fine-tuning only): the sharded weights are gathered onto rank 0 (every rank
    must take part) and loaded into a fresh, plain copy of the task model, which is saved."""
    from groundup import distributed as du
    from groundup.checkpoint import in_dtype_of, model_tensors
    from groundup.models.folders import _load_into, build_task_model, save_finetuned

    if strategy == "fsdp":
        tensors = model_tensors(model)  # a collective; only rank 0 gets the tensors
        if du.rank() != 0:
            return model
        model = build_task_model(
            base,
            cfg.task,
            num_labels=len(labels) if labels else None,
            pooling=cfg.base.pooling,
            pretrained=False,
        )
        model = in_dtype_of(model, tensors)
        _load_into(model, tensors, folder)
    if du.rank() == 0:
        save_finetuned(folder, model, base.tokenizer, meta, cfg.method == "lora")
    return model


def _sample(model: Any, tokenizer: Any, cfg: FinetuneConfig, stream: bool) -> str:
    """A generation at the end of a language-model run (SFT: as a chat reply)."""
    if stream:
        print("--- sample ---", flush=True)
    if cfg.task not in CHAT_TASKS:
        return sample_text(model, tokenizer, cfg.sample, stream=stream)
    return sample_reply(model, tokenizer, cfg.sample, cfg.data.template, stream=stream)


def _peak_rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(field)


def _reset_peak_rss_mib() -> float | None:
    """Reset the process's peak-RSS mark (Linux) and return the RSS now; None elsewhere.

    Peak RSS over the whole process mostly measures imports and data preparation; the growth
    from here to the peak after fit() is what training costs (the LoRA vs full figure)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _proc_status_mib("VmRSS")
    except OSError:
        return None
