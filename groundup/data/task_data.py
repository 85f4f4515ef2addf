"""The data of a task, for fine-tuning and evaluation: text windows (causal_lm), SFT rows
with response-only labels (sft), encoded labelled texts (classification), and encoded
preference pairs (dpo, orpo, simpo, reward).

`load_data` gives `groundup finetune` its splits, train/val(/test), the training one cut, under
torchrun, into this rank's part of every global batch. The builders (`labelled_batches`,
`sft_batches`, `pair_batches`, `text_windows`, `pad_id_of`) hold the encoding rules, and
`groundup evaluate` calls them too, so a model is scored on exactly the rows it was trained
and validated on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from groundup.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from groundup.data.windows import SequentialWindows
    from groundup.finetune.classification import LabelVocab
    from groundup.finetune.preference import PairBatches, PairTensors, PreferencePair
    from groundup.finetune.sft import Conversation, SFTTensors
    from groundup.jobs.finetune import FinetuneConfig
    from groundup.train.batches import TensorBatches


@dataclass
class Data:
    """What the job trains and evaluates on, and figures about it for results.json."""

    train: Any
    val: Any
    test: Any = None  # classification: batches of the test split, in order
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
    from groundup.finetune.preference import PAIR_TASKS

    if cfg.task == "sft":
        return _sft_data(cfg, base, verbose, part)
    if cfg.task in PAIR_TASKS:
        return _pair_data(cfg, base, verbose, part)
    return _classification_data(cfg, base, verbose, part)


def _text_data(cfg: FinetuneConfig, base: Any, run_dir: Path, verbose: int, part: Part) -> Data:
    """Continued pretraining: the text is encoded once into token shards, like pretraining
    (by rank 0; the other ranks then open what it wrote)."""
    from groundup import distributed as du
    from groundup.data.corpus import Corpus
    from groundup.data.shards import load_shards, prepare_shards
    from groundup.data.windows import RandomWindows, SequentialWindows

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
    from groundup.finetune.sft import read_sft_jsonl

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
    pad_id = pad_id_of(tok, required=False)  # none: encode_sft pads with 0 (masked anyway)
    train, train_t = sft_batches(
        train_ex,
        tok,
        d.template,
        block,
        pad_id,
        part.batch_size,
        packing=d.packing,
        part=part,
        seed=cfg.seed,
    )
    val = None
    if val_ex:  # validation: as in one process and as `groundup evaluate` reads it
        val, _ = sft_batches(val_ex, tok, d.template, block, pad_id, cfg.train.batch_size)
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


def _pair_data(cfg: FinetuneConfig, base: Any, verbose: int, part: Part) -> Data:
    """Preference pairs: a built-in set (split already), or a JSONL file split with the seed
    unless data.val is given. Every line is checked before any work starts."""
    from groundup.finetune.preference import load_preference_dataset, read_preference_jsonl

    d = cfg.data
    fields = dict(
        prompt_field=d.prompt_field, chosen_field=d.chosen_field, rejected_field=d.rejected_field
    )
    sets = load_preference_dataset(d.builtin) if d.builtin is not None else {}
    train_p, val_p = sets.get("train", []), sets.get("val", [])
    if d.train is not None:
        train_p = read_preference_jsonl(d.train, **fields)
        if d.val is None:
            tr, va = _split(len(train_p), d.val_fraction, cfg.seed)
            train_p, val_p = [train_p[i] for i in tr], [train_p[i] for i in va]
    if d.val is not None:
        val_p = read_preference_jsonl(d.val, **fields)
    reward = cfg.task == "reward"
    # a reward model reads each sequence whole (ids plus the last target): one position less
    block = _max_len(cfg, base.config.block_size) - int(reward)
    tok = base.tokenizer
    pad_id = pad_id_of(tok, required=reward)  # the classifier pools the last non-pad token
    pad_id = pad_id if pad_id is not None else 0  # LM pairs: padding is never a target
    train, train_t = pair_batches(
        train_p, tok, d.template, block, pad_id, part.batch_size, part=part, seed=cfg.seed
    )
    val, val_t = None, None
    if val_p:  # validation: as in one process
        val, val_t = pair_batches(val_p, tok, d.template, block, pad_id, cfg.train.batch_size)
    info = {
        "train_pairs": train_t.n_pairs,
        "train_trainable_tokens": train_t.n_trainable_tokens,
        "truncated": train_t.truncated,
        "dropped": train_t.dropped,
        "val_pairs": val_t.n_pairs if val_t is not None else 0,
        "max_len": block + int(reward),
        "pad_id": pad_id,
    }
    if verbose:
        print(
            f"preference data: {train_t.n_pairs} train pairs, {train_t.n_trainable_tokens:,} "
            f"reply tokens; {info['val_pairs']} val pairs; {train_t.truncated} truncated, "
            f"{train_t.dropped} dropped (reply cut off or identical within data.max_len)",
            flush=True,
        )
    return Data(train, val, info=info)


def _classification_data(cfg: FinetuneConfig, base: Any, verbose: int, part: Part) -> Data:
    from groundup.finetune.classification import LabelVocab, read_labelled_text

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
    pad_id = pad_id_of(tok)
    max_len = _max_len(cfg, base.config.block_size)
    batches, sizes, truncated = {}, {}, {}
    for name, split in splits.items():
        if split is None:
            continue
        train = name == "train"  # the others: in order, as in one process
        batches[name], truncated[name] = labelled_batches(
            *split,
            vocab,
            tok,
            base.family,
            max_len,
            pad_id,
            part.batch_size if train else cfg.train.batch_size,
            where[name],
            part=part if train else None,
            seed=cfg.seed,
        )
        sizes[name] = len(split[1])
    info = {
        "labels": vocab.to_list(),
        "pad_id": pad_id,
        "max_len": max_len,
        **{f"{name}_examples": n for name, n in sizes.items()},
        "truncated": truncated,
    }
    if verbose:
        shown = ", ".join(f"{name} {n}" for name, n in sizes.items())
        print(f"classification data: {len(vocab)} labels; {shown} examples", flush=True)
    return Data(batches["train"], batches.get("val"), batches.get("test"), info)


# ---- the builders: one encoding of each task's data, for fine-tuning and evaluation -------
def pad_id_of(tokenizer: Any, required: bool = True) -> int | None:
    """The id that fills a row past its example's end: the tokenizer's padding token, else its
    end-of-text token (padding is masked, so any real id does). `required`: a ConfigError
    when it has neither (classification); else None, and the encoder picks one itself."""
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eot_id
    if pad_id is None and required:
        raise ConfigError(
            "the tokenizer has no padding or end-of-text token; add one (e.g. <|pad|>) so "
            "examples of different lengths can be batched"
        )
    return pad_id


def labelled_batches(
    texts: Sequence[str],
    labels: Sequence[str],
    vocab: LabelVocab,
    tokenizer: Any,
    family: str,
    max_len: int,
    pad_id: int | None,
    batch_size: int,
    where: str,
    *,
    part: Part | None = None,
    seed: int = 0,
) -> tuple[TensorBatches, int]:
    """Labelled texts as classifier batches of (ids, class ids), and how many texts were cut
    to max_len. A `family` "bert" model reads [CLS] text [SEP], the others text + eot (see
    `encode_texts`); rows are right-padded with pad_id. A label outside `vocab` is a DataError
    naming `where`. Batches of batch_size in order (validation, evaluation), or, given `part`,
    training batches: shuffled with `seed`, and under several ranks this rank's part."""
    from groundup.finetune.classification import encode_texts

    y = vocab.encode(labels, where=where)  # (N,)
    style = "bert" if family == "bert" else "gpt"
    ids, _, truncated = encode_texts(texts, tokenizer, max_len, style=style, pad_id=pad_id)
    return _batches(ids, y, batch_size, part, seed), truncated


def sft_batches(
    examples: Sequence[Conversation],
    tokenizer: Any,
    template: str,
    max_len: int,
    pad_id: int | None,
    batch_size: int,
    packing: bool = False,
    *,
    part: Part | None = None,
    seed: int = 0,
) -> tuple[TensorBatches, SFTTensors]:
    """Conversations as (input ids, response-only labels) batches of rows of max_len, and the
    encoded rows, whose figures (n_examples, n_rows, n_trainable_tokens, truncated, dropped)
    go into results. Batching as in `labelled_batches`. Packed rows carry their document
    ids: the input of a batch is then (B, 2, T), token ids and doc ids, which GPT.forward
    reads as packed rows (attention within each example, positions restarted). Truncating
    many examples, or dropping any, is a warning that names the max_len that keeps them."""
    import warnings

    from groundup.finetune.sft import encode_sft, truncation_warning

    t = encode_sft(
        examples, tokenizer, template=template, block_size=max_len, packing=packing, pad_id=pad_id
    )
    message = truncation_warning(t, max_len)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    return _batches(t.model_inputs, t.labels, batch_size, part, seed), t


def pair_batches(
    pairs: Sequence[PreferencePair],
    tokenizer: Any,
    template: str,
    max_len: int,
    pad_id: int,
    batch_size: int,
    *,
    part: Part | None = None,
    seed: int = 0,
) -> tuple[PairBatches, PairTensors]:
    """Preference pairs as batches of (pairs (B, 2, 2, T), preferred (B,)) cut to each batch's
    longest sequence, and the encoded pairs, whose figures go into results. Batching as in
    `labelled_batches`."""
    from groundup.finetune.preference import PairBatches, encode_pairs

    t = encode_pairs(pairs, tokenizer, max_len=max_len, template=template, pad_id=pad_id)
    if part is None:
        return PairBatches(t.pairs, batch_size=batch_size, shuffle=False), t
    options = dict(batch_size=batch_size, seed=seed, rank=part.rank, world_size=part.world_size)
    return PairBatches(t.pairs, **options), t


def text_windows(
    source: str | Path, tokenizer: Any, text_field: str, block: int, batch_size: int
) -> tuple[SequentialWindows, int]:
    """Every token of the text in `source` scored once, in consecutive windows of `block`
    tokens (fewer when the text is shorter); with the number of tokens. Documents are joined
    by the end-of-text token when the tokenizer has one, as pretraining shards join them."""
    import numpy as np

    from groundup.data.corpus import Corpus
    from groundup.data.windows import SequentialWindows

    eot = tokenizer.eot_id
    pieces: list[np.ndarray] = []
    for doc in Corpus(source, text_field=text_field):
        pieces.append(tokenizer.encode_array(doc))
        if eot is not None:
            pieces.append(np.array([eot], dtype=pieces[-1].dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    block = min(block, max(1, len(tokens) - 1))
    return SequentialWindows(tokens, block, batch_size), int(len(tokens))


def _batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, part: Part | None, seed: int
) -> TensorBatches:
    """In order without `part`; with it shuffled training batches, under several ranks this
    rank's part of each global one."""
    from groundup.train.batches import TensorBatches

    if part is None:
        return TensorBatches(x, y, batch_size=batch_size, shuffle=False)
    return TensorBatches(
        x, y, batch_size=batch_size, seed=seed, rank=part.rank, world_size=part.world_size
    )
