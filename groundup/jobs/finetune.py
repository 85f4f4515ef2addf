"""`groundup finetune CONFIG`: specialise a pretrained model on a task, in full or with LoRA.

base model (a groundup run or a Hugging Face folder) -> task model (GPT language model, or a
classification head on BERT/GPT) -> optional LoRA adapters -> data (text, SFT JSONL, labelled
CSV/JSONL) -> the one `Trainer` -> a model folder, metrics and, for classifiers, a test report
with the confusion matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from groundup.config import check, load_config
from groundup.errors import ConfigError
from groundup.jobs.pretrain import SampleConfig
from groundup.jobs.train import OptimConfig


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


@dataclass
class FinetuneDataConfig:
    """Where the examples are and how to read them (fields used depend on the task)."""

    train: str | None = (
        None  # causal_lm: text/folder/JSONL/Parquet; sft: JSONL; classification: CSV/JSONL
    )
    val: str | None = None  # default: val_fraction of train, held out with the seed
    test: str | None = None  # classification: the held-out test file for the final report
    builtin: str | None = None  # a builtin set: stdlib-topics (classification), stdlib-qa (sft)
    val_fraction: float = 0.1
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    template: str = "auto"  # sft chat template: auto, plain, chatml, llama3
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
class FinetuneLoopConfig:
    epochs: int = 3
    max_steps: int | None = None  # causal_lm needs it (text windows never end)
    batch_size: int = 16
    grad_accum: int = 1
    eval_every: int | None = None  # steps; null: at each epoch end
    eval_batches: int | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    keep_last: int | None = 2
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"
    clip_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "grad_accum", "log_every"):
            value = getattr(self, key)
            check(value >= 1, f"train.{key} must be >= 1, got {value}")


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
    task: Literal["causal_lm", "sft", "classification"] = "sft"
    method: Literal["full", "lora"] = "full"
    base: BaseConfig = field(default_factory=BaseConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    train: FinetuneLoopConfig = field(default_factory=FinetuneLoopConfig)
    sample: SampleConfig | None = None  # language-model tasks: a generation at the end

    def __post_init__(self) -> None:
        check(
            self.base.path is not None,
            "base.path is not set: point it at a groundup run (e.g. runs/pydocs) or a Hugging "
            "Face model folder",
        )
        needs = {
            "classification": "a CSV/JSONL file of text and label, or data.builtin: stdlib-topics",
            "sft": "a JSONL file of prompt/response or messages, or data.builtin: stdlib-qa",
            "causal_lm": "a text file, folder, JSONL or Parquet file",
        }[self.task]
        check(
            self.data.train is not None or self.data.builtin is not None,
            f"task {self.task} needs data: set data.train ({needs})",
        )
        check(
            self.data.builtin is None or self.task != "causal_lm",
            "data.builtin holds labelled and SFT sets; for causal_lm set data.train",
        )


# ------------------------------------------------------------------------------- the job


@dataclass
class _Data:
    train: Any
    val: Any
    test: Any = None  # classification: (ids, labels) tensors
    info: dict[str, Any] = field(default_factory=dict)


def run_finetune(
    config_path: str | Path | None,
    overrides=(),
    overwrite: bool = False,
    resume: bool = False,
    config: FinetuneConfig | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """`groundup finetune CONFIG`; returns the headline results (also in results.json)."""
    from groundup.finetune.lora import apply_lora, trainable_parameters
    from groundup.jobs.model_io import build_task_model, load_base, save_finetuned, with_dropout
    from groundup.jobs.run_dir import checkpoint_config, prepare_run_dir, resume_point, wants_resume
    from groundup.seed import set_seed
    from groundup.train.callbacks import ModelCheckpoint
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer

    cfg = config if config is not None else load_config(FinetuneConfig, config_path, overrides)
    run_dir = Path(cfg.run_dir)
    last, best_val_loss = None, None
    if wants_resume(run_dir, cfg, resume):
        last, best_val_loss = resume_point(run_dir, cfg)
    else:
        prepare_run_dir(run_dir, cfg, overwrite=overwrite)
    base = load_base(cfg.base.path, allow_pickle=cfg.base.allow_pickle)
    base.config = with_dropout(base.config, cfg.base.dropout)
    tokenizer = base.tokenizer
    set_seed(cfg.seed)
    data = _load_data(cfg, base, run_dir, verbose)
    labels = data.info.get("labels")
    model = build_task_model(
        base,
        cfg.task,
        num_labels=len(labels) if labels else None,
        pooling=cfg.base.pooling,
        pretrained=cfg.base.init == "pretrained",
    )
    if cfg.method == "lora":
        apply_lora(model, cfg.lora.targets, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout)
        for name, p in model.named_parameters():  # the new head is trained in full
            if name.startswith(("classifier.", "score.", "bert.pooler.")):
                p.requires_grad_(True)
    trainable, total = trainable_parameters(model)
    pad_id = data.info.get("pad_id")
    if verbose:
        print(
            f"model: {base.family} from {base.path} ({cfg.base.init}), task {cfg.task}, "
            f"method {cfg.method}: {trainable:,} of {total:,} parameters trainable "
            f"({100 * trainable / total:.2f}%)",
            flush=True,
        )
    t = cfg.train
    checkpoint = ModelCheckpoint(
        run_dir / "checkpoints",
        monitor="val_loss" if data.val is not None else None,
        every_n_steps=t.checkpoint_every,
    )
    if best_val_loss is not None and checkpoint.tracker is not None:
        checkpoint.tracker.best = best_val_loss
    forward = None
    if cfg.task == "classification" and base.family == "bert":

        def forward(ids: torch.Tensor) -> torch.Tensor:  # padding is masked out of attention
            return model(ids, attention_mask=ids.ne(pad_id))

    trainer = Trainer(
        model,
        loss=SparseCategoricalCrossentropy(from_logits=True),
        optimizer=cfg.optim.optimizer_spec(),
        schedule=cfg.optim.schedule_spec(),
        metrics=["accuracy"] if cfg.task == "classification" else (),
        grad_accum=t.grad_accum,
        clip_grad_norm=t.clip_grad_norm,
        precision=t.precision,
        device=t.device,
        compile=t.compile,
        run_dir=run_dir,
        forward=forward,
        log_every=t.log_every,
        verbose=verbose,
        report_perplexity=cfg.task != "classification",
        callbacks=[checkpoint],
        nan_policy=t.nan_policy,
        keep_last=t.keep_last,
        config=checkpoint_config(cfg),
    )
    trainer.fit(
        data.train,
        data.val,
        epochs=None if cfg.task == "causal_lm" else t.epochs,
        max_steps=t.max_steps,
        eval_every=t.eval_every,
        eval_batches=t.eval_batches,
        resume_from=last,
    )
    meta = {
        "family": base.family,
        "task": cfg.task,
        "method": cfg.method,
        "model": base.config.to_dict(),
        "labels": labels,
        "pad_id": pad_id,
        "pooling": cfg.base.pooling,
        "base": str(Path(base.path).resolve()),
        "template": cfg.data.template,
        "max_len": data.info.get("max_len"),
        "text_field": cfg.data.text_field,
        "label_field": cfg.data.label_field,
    }
    model_dir = save_finetuned(run_dir / "model", model, tokenizer, meta, cfg.method == "lora")
    results: dict[str, Any] = {
        "steps": trainer.step,
        "trainable_params": trainable,
        "total_params": total,
        **{k: v for k, v in data.info.items() if k not in ("labels", "pad_id")},
    }
    if data.val is not None:
        results.update(trainer.evaluate(data.val, prefix="val_"))
    if cfg.task == "classification" and data.test is not None:
        from groundup.jobs.evaluate import classification_results

        results.update(classification_results(trainer, data.test, labels, run_dir, prefix="test_"))
    results["peak_rss_mib"] = _peak_rss_mib()
    (run_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if verbose:
        shown = ", ".join(
            f"{k} {v:.4f}"
            for k, v in results.items()
            if k.startswith(("val_", "test_")) and isinstance(v, float)
        )
        print(f"{shown}\nmodel saved in {model_dir}", flush=True)
    if cfg.sample is not None and cfg.task != "classification":
        if verbose:
            print("--- sample ---", flush=True)
        results["sample"] = _sample(model.eval(), tokenizer, cfg, stream=bool(verbose))
    return results


def _sample(model: Any, tokenizer: Any, cfg: FinetuneConfig, stream: bool) -> str:
    """A generation at the end of a language-model run (SFT: as a chat reply)."""
    from groundup.jobs.pretrain import sample_text

    if cfg.task != "sft":
        return sample_text(model, tokenizer, cfg.sample, stream=stream)
    return sample_reply(model, tokenizer, cfg.sample, cfg.data.template, stream=stream)


def sample_reply(
    model: Any, tokenizer: Any, sample: SampleConfig, template: str, stream: bool = False
) -> str:
    """Answer `sample.prompt` as an SFT model was trained to: the prompt becomes a user turn
    of the chat template, and generation stops at the end of the assistant's turn."""
    from groundup.finetune.sft import Conversation, Message, encode_prompt, stop_ids
    from groundup.generate import generate

    ids = encode_prompt(Conversation([Message("user", sample.prompt)]), tokenizer, template)
    stops = stop_ids(tokenizer, template)
    device = next(model.parameters()).device
    out = generate(
        model,
        torch.tensor([ids], device=device),
        sample.max_new_tokens,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        eos_id=stops[0] if stops else None,
        seed=sample.seed,
        vocab_limit=tokenizer.vocab_size,
    )
    text = tokenizer.decode([t for t in out[0, len(ids) :].tolist() if t not in stops])
    if stream:
        print(f"{tokenizer.decode(ids)}{text}", flush=True)
    return text


def _peak_rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _max_len(cfg: FinetuneConfig, block_size: int) -> int:
    if cfg.data.max_len is None:
        return min(block_size, 512)
    if cfg.data.max_len > block_size:
        raise ConfigError(
            f"data.max_len {cfg.data.max_len} exceeds the model's block size {block_size}; "
            f"set data.max_len <= {block_size}"
        )
    return cfg.data.max_len


def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/val index split (val gets round(n * fraction), at least 1 when > 0)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = 0 if fraction == 0 else max(1, round(n * fraction))
    if n_val >= n:
        raise ConfigError(
            f"only {n} examples: too few to hold out data.val_fraction={fraction}; give a "
            "data.val file or more examples"
        )
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _load_data(cfg: FinetuneConfig, base: Any, run_dir: Path, verbose: int) -> _Data:
    if cfg.task == "causal_lm":
        return _text_data(cfg, base, run_dir, verbose)
    if cfg.task == "sft":
        return _sft_data(cfg, base, verbose)
    return _classification_data(cfg, base, verbose)


def _text_data(cfg: FinetuneConfig, base: Any, run_dir: Path, verbose: int) -> _Data:
    """Continued pretraining: the text is encoded once into token shards, like pretraining."""
    from groundup.data.corpus import Corpus
    from groundup.data.shards import prepare_shards
    from groundup.data.windows import RandomWindows, SequentialWindows

    if cfg.train.max_steps is None:
        raise ConfigError(
            "task causal_lm trains on random windows of the text: set train.max_steps"
        )
    block = _max_len(cfg, base.config.block_size)
    corpus = Corpus(cfg.data.train, text_field=cfg.data.text_field)
    val_fraction = 0.0 if cfg.data.val is not None else cfg.data.val_fraction
    index = prepare_shards(
        corpus,
        base.tokenizer,
        run_dir / "data",
        val_fraction=val_fraction,
        seed=cfg.seed,
        progress=bool(verbose),
    )
    val_tokens = index.val
    if cfg.data.val is not None:
        val_index = prepare_shards(
            Corpus(cfg.data.val, text_field=cfg.data.text_field),
            base.tokenizer,
            run_dir / "data-val",
            val_fraction=0.0,
            seed=cfg.seed,
            progress=False,
        )
        val_tokens = val_index.train
    b = cfg.train.batch_size
    train = RandomWindows(index.train, block, b, seed=cfg.seed)
    val = None
    if val_tokens is not None and len(val_tokens) > block:
        val = SequentialWindows(val_tokens, block, b, max_batches=cfg.train.eval_batches)
    info = {"train_tokens": len(index.train), "max_len": block}
    return _Data(train, val, info=info)


def _builtin_sft(name: str) -> tuple[list, list]:
    from groundup.data.text_builtin import load_sft_dataset
    from groundup.finetune.sft import Conversation

    sets = load_sft_dataset(name)
    return tuple(  # type: ignore[return-value]
        [Conversation.from_pair(r["prompt"], r["response"]) for r in sets[split]]
        for split in ("train", "val")
    )


def _sft_data(cfg: FinetuneConfig, base: Any, verbose: int) -> _Data:
    from groundup.finetune.sft import encode_sft, read_sft_jsonl
    from groundup.train.batches import TensorBatches

    d = cfg.data
    fields = dict(
        prompt_field=d.prompt_field,
        response_field=d.response_field,
        messages_field=d.messages_field,
    )
    # builtin sets come split; a train file is split with the seed unless data.val is given
    train_ex, val_ex = _builtin_sft(d.builtin) if d.builtin is not None else ([], [])
    if d.train is not None:
        train_ex = read_sft_jsonl(d.train, **fields)
        if d.val is None:
            tr, va = _split(len(train_ex), d.val_fraction, cfg.seed)
            train_ex, val_ex = [train_ex[i] for i in tr], [train_ex[i] for i in va]
    if d.val is not None:
        val_ex = read_sft_jsonl(d.val, **fields)
    block = _max_len(cfg, base.config.block_size)
    tok = base.tokenizer
    pad_id = tok.pad_id if tok.pad_id is not None else tok.eot_id

    def encode(exs: list, packing: bool) -> Any:
        return encode_sft(
            exs, tok, template=d.template, block_size=block, packing=packing, pad_id=pad_id
        )

    train_t = encode(train_ex, d.packing)
    b = cfg.train.batch_size
    train = TensorBatches(train_t.input_ids, train_t.labels, batch_size=b, seed=cfg.seed)
    val = None
    if val_ex:
        val_t = encode(val_ex, False)
        val = TensorBatches(val_t.input_ids, val_t.labels, batch_size=b, shuffle=False)
    info = {
        "train_examples": train_t.n_examples,
        "train_rows": train_t.n_rows,
        "train_trainable_tokens": train_t.n_trainable_tokens,
        "truncated": train_t.truncated,
        "dropped": train_t.dropped,
        "val_examples": len(val_ex),
        "max_len": block,
        "pad_id": pad_id,
    }
    if verbose:
        print(
            f"sft data: {train_t.n_examples} train examples in {train_t.n_rows} rows "
            f"({'packed' if d.packing else 'one per row'}), {train_t.n_trainable_tokens:,} "
            f"response tokens; {len(val_ex)} val examples; {train_t.truncated} truncated, "
            f"{train_t.dropped} dropped",
            flush=True,
        )
    return _Data(train, val, info=info)


def _classification_data(cfg: FinetuneConfig, base: Any, verbose: int) -> _Data:
    from groundup.finetune.classification import LabelVocab, encode_texts, read_labelled_text
    from groundup.train.batches import TensorBatches

    d = cfg.data
    splits: dict[str, tuple[list[str], list[str]] | None] = {
        "train": None,
        "val": None,
        "test": None,
    }
    where: dict[str, str] = {}
    if d.builtin is not None:
        from groundup.data.text_builtin import load_text_dataset

        for name, rows in load_text_dataset(d.builtin).items():
            splits[name] = ([r[0] for r in rows], [r[1] for r in rows])
            where[name] = f"builtin {d.builtin} {name}"
    for name in ("train", "val", "test"):
        path = getattr(d, name)
        if path is not None:
            splits[name] = read_labelled_text(path, d.text_field, d.label_field)
            where[name] = str(path)
    if splits["train"] is None:
        raise ConfigError("classification needs data.train or data.builtin")
    if splits["val"] is None and d.val_fraction > 0:
        texts, labels = splits["train"]
        tr, va = _split(len(texts), d.val_fraction, cfg.seed)
        splits["train"] = ([texts[i] for i in tr], [labels[i] for i in tr])
        splits["val"] = ([texts[i] for i in va], [labels[i] for i in va])
        where["val"] = f"{where['train']} (held-out {d.val_fraction:g})"
    vocab = LabelVocab.from_labels(splits["train"][1])
    if len(vocab) < 2:
        raise ConfigError(
            f"the training labels hold one class ({vocab.to_list()[0]!r}); a classifier "
            "needs at least two"
        )
    tok = base.tokenizer
    style = "bert" if base.family == "bert" else "gpt"
    pad_id = tok.pad_id if tok.pad_id is not None else tok.eot_id
    if pad_id is None:
        raise ConfigError(
            "the tokenizer has no padding or end-of-text token; add one (e.g. <|pad|>) so "
            "examples of different lengths can be batched"
        )
    max_len = _max_len(cfg, base.config.block_size)
    tensors, truncated = {}, {}
    for name, split in splits.items():
        if split is None:
            continue
        ids, _, cut = encode_texts(split[0], tok, max_len, style=style, pad_id=pad_id)
        truncated[name] = cut
        y = vocab.encode(split[1], where=where[name])
        tensors[name] = (ids, y)
    b = cfg.train.batch_size
    train = TensorBatches(*tensors["train"], batch_size=b, seed=cfg.seed)
    val = TensorBatches(*tensors["val"], batch_size=b, shuffle=False) if "val" in tensors else None
    test = (
        TensorBatches(*tensors["test"], batch_size=b, shuffle=False) if "test" in tensors else None
    )
    info = {
        "labels": vocab.to_list(),
        "pad_id": pad_id,
        "max_len": max_len,
        **{f"{name}_examples": len(t[1]) for name, t in tensors.items()},
        "truncated": truncated,
    }
    if verbose:
        sizes = ", ".join(f"{name} {len(t[1])}" for name, t in tensors.items())
        print(f"classification data: {len(vocab)} labels; {sizes} examples", flush=True)
    return _Data(train, val, test, info)
