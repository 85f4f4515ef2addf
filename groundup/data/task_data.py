"""The data of `groundup finetune`: text windows (causal_lm), SFT rows with response-only
labels (sft), and encoded labelled texts (classification), each split into train/val(/test)
and, under torchrun, into this rank's part of every global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from groundup.errors import ConfigError

if TYPE_CHECKING:
    from groundup.jobs.finetune import FinetuneConfig


@dataclass
class Data:
    """What the job trains and evaluates on, and figures about it for results.json."""

    train: Any
    val: Any
    test: Any = None  # classification: (ids, labels) tensors
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    """This rank's share of the training data: sequences per micro-batch, and the rank and
    world size to slice each global batch by (world_size None: one process, nothing split)."""

    batch_size: int
    rank: int = 0
    world_size: int | None = None


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


def load_data(cfg: FinetuneConfig, base: Any, run_dir: Path, verbose: int, part: Part) -> Data:
    """The task's data; the training source gives this rank its part of each global batch,
    validation and test data stay whole (the Trainer's evaluation shares them out)."""
    if cfg.task == "causal_lm":
        return _text_data(cfg, base, run_dir, verbose, part)
    if cfg.task == "sft":
        return _sft_data(cfg, base, verbose, part)
    return _classification_data(cfg, base, verbose, part)


def _text_data(cfg: FinetuneConfig, base: Any, run_dir: Path, verbose: int, part: Part) -> Data:
    """Continued pretraining: the text is encoded once into token shards, like pretraining
    (by rank 0; the other ranks then open what it wrote)."""
    from groundup.data.corpus import Corpus
    from groundup.data.shards import load_shards, prepare_shards
    from groundup.data.windows import RandomWindows, SequentialWindows
    from groundup.train import distributed as du

    if cfg.train.max_steps is None:
        raise ConfigError(
            "task causal_lm trains on random windows of the text: set train.max_steps"
        )
    block = _max_len(cfg, base.config.block_size)
    built: dict[str, Any] = {}

    def encode() -> None:
        corpus = Corpus(cfg.data.train, text_field=cfg.data.text_field)
        val_fraction = 0.0 if cfg.data.val is not None else cfg.data.val_fraction
        built["index"] = prepare_shards(
            corpus,
            base.tokenizer,
            run_dir / "data",
            val_fraction=val_fraction,
            seed=cfg.seed,
            progress=bool(verbose),
        )
        if cfg.data.val is not None:
            built["val"] = prepare_shards(
                Corpus(cfg.data.val, text_field=cfg.data.text_field),
                base.tokenizer,
                run_dir / "data-val",
                val_fraction=0.0,
                seed=cfg.seed,
                progress=False,
            )

    du.main_first(encode)  # the shards are files: one writer, the others wait
    if not built:  # rank > 0 (several nodes: run_dir on a shared file system)
        built["index"] = load_shards(run_dir / "data")
        if cfg.data.val is not None:
            built["val"] = load_shards(run_dir / "data-val")
    index = built["index"]
    val_tokens = built["val"].train if "val" in built else index.val
    b = cfg.train.batch_size  # validation: as in one process (the same windows)
    train = RandomWindows(
        index.train,
        block,
        part.batch_size,
        seed=cfg.seed,
        rank=part.rank,
        world_size=part.world_size,
    )
    val = None
    if val_tokens is not None and len(val_tokens) > block:
        val = SequentialWindows(val_tokens, block, b, max_batches=cfg.train.eval_batches)
    info = {"train_tokens": len(index.train), "max_len": block}
    return Data(train, val, info=info)


def _builtin_sft(name: str) -> tuple[list, list]:
    from groundup.data.text_builtin import load_sft_dataset
    from groundup.finetune.sft import Conversation

    sets = load_sft_dataset(name)
    return tuple(  # type: ignore[return-value]
        [Conversation.from_pair(r["prompt"], r["response"]) for r in sets[split]]
        for split in ("train", "val")
    )


def _sft_data(cfg: FinetuneConfig, base: Any, verbose: int, part: Part) -> Data:
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
    train = _train_batches(train_t.input_ids, train_t.labels, seed=cfg.seed, part=part)
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
    return Data(train, val, info=info)


def _classification_data(cfg: FinetuneConfig, base: Any, verbose: int, part: Part) -> Data:
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
    train = _train_batches(*tensors["train"], seed=cfg.seed, part=part)
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
    return Data(train, val, test, info)


def _train_batches(x: torch.Tensor, y: torch.Tensor, seed: int, part: Part) -> Any:
    """Shuffled training batches; under several ranks, this rank's part of each global one."""
    from groundup.train.batches import TensorBatches

    return TensorBatches(
        x, y, batch_size=part.batch_size, seed=seed, rank=part.rank, world_size=part.world_size
    )
