"""`groundup tokenizer`, `groundup prepare` and `groundup pretrain`: a GPT from raw text.

corpus -> tokenizer (trained, or loaded from a tokenizer.json) -> token shards (encoded once,
memory-mapped) -> GPT -> the one `Trainer` on random windows -> checkpoints, metrics, a saved
model folder (weights, config, tokenizer) and a generated sample.

Under torchrun (`torchrun --nproc_per_node N -m groundup pretrain CONFIG`) the same config runs
on N ranks: rank 0 prepares the run directory, tokenizer and shards while the others wait, every
rank trains on its slice of each global batch (DDP or FSDP2, the `distributed:` section), and
rank 0 logs, writes the results and the final model and prints the sample. The global batch
(tokens per optimizer step) is the config's whatever N is; see `split_global_batch`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from groundup.config import check, from_dict, load_config
from groundup.errors import ConfigError, MissingFileError
from groundup.jobs.train import OptimConfig
from groundup.train.distributed import DistributedConfig


@dataclass
class TextDataConfig:
    """Where the text comes from and where its token shards go."""

    source: str = "pydocs"  # a file, a folder, a .jsonl/.parquet file, or the builtin "pydocs"
    text_field: str = "text"  # JSONL/Parquet field holding the text
    bad_rows: Literal["error", "skip"] = "error"
    val_fraction: float = 0.1
    shards_dir: str | None = None  # default: <run_dir>/data

    def __post_init__(self) -> None:
        check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
        )


@dataclass
class TokenizerConfig:
    """Train a tokenizer on the corpus (kind/vocab_size) or load one (path)."""

    kind: Literal["bpe", "char", "bytes"] = "bpe"
    vocab_size: int = 4096
    min_frequency: int = 2
    byte_fallback: bool = False
    path: str | None = None  # an existing tokenizer.json (or a folder holding one)

    def __post_init__(self) -> None:
        check(self.vocab_size >= 1, f"tokenizer.vocab_size must be >= 1, got {self.vocab_size}")


@dataclass
class PretrainLoopConfig:
    """Steps, batch geometry, evaluation and checkpoint cadence, precision."""

    max_steps: int = 2000
    batch_size: int = 12  # sequences per micro-batch
    grad_accum: int = 1
    tokens_per_step: int | None = None  # when set, grad_accum is derived from it
    eval_every: int = 250
    eval_batches: int | None = 20  # null: the whole validation split
    log_every: int = 10
    checkpoint_every: int | None = None
    keep_last: int | None = 3  # step checkpoints kept besides best/ (null: all)
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"  # on a non-finite loss/grad norm
    clip_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "grad_accum", "eval_every", "log_every"):
            value = getattr(self, key)
            check(value >= 1, f"train.{key} must be >= 1, got {value}")


@dataclass
class SampleConfig:
    """The text generated at the end of a run (and the defaults of `groundup generate`)."""

    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200
    top_p: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            self.max_new_tokens >= 0,
            f"sample.max_new_tokens must be an integer >= 0, got {self.max_new_tokens}",
        )
        check(
            self.temperature >= 0,
            f"sample.temperature must be >= 0 (0 = greedy), got {self.temperature}",
        )
        check(
            self.top_k is None or self.top_k >= 1,
            f"sample.top_k must be an integer >= 1 or null, got {self.top_k}",
        )
        check(
            self.top_p is None or 0.0 < self.top_p <= 1.0,
            f"sample.top_p must be in (0, 1] or null, got {self.top_p}",
        )


def _pretrain_optim() -> OptimConfig:
    return OptimConfig(
        name="adamw",
        lr=1e-3,
        weight_decay=0.1,
        betas=[0.9, 0.99],
        schedule="cosine",
        warmup_steps=100,
        min_lr_ratio=0.1,
    )


@dataclass
class PretrainConfig:
    """The whole `groundup pretrain` config (see configs/pretrain-*.yaml)."""

    run_dir: str = "runs/pretrain"
    seed: int = 1337
    # auto: continue from the newest complete checkpoint when there is one (like --resume)
    resume: Literal["never", "auto"] = "never"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # a preset name and/or GPT fields (n_layer, n_head, n_embd, block_size, flavour, ...);
    # vocab_size defaults to the tokenizer's
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gpt2-tiny"})
    optim: OptimConfig = field(default_factory=_pretrain_optim)
    train: PretrainLoopConfig = field(default_factory=PretrainLoopConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# ---------------------------------------------------------------- building blocks
def build_tokenizer(cfg: PretrainConfig, save_to: Path | None = None, verbose: int = 1):
    """Load `tokenizer.path`, or train one on the corpus; saved as `save_to` when given."""
    from groundup.data.corpus import Corpus
    from groundup.data.tokenizers import Tokenizer

    if cfg.tokenizer.path:
        tokenizer = Tokenizer.load(cfg.tokenizer.path)
    else:
        corpus = Corpus(cfg.data.source, text_field=cfg.data.text_field, bad_rows=cfg.data.bad_rows)
        tokenizer = Tokenizer.train(
            corpus,
            kind=cfg.tokenizer.kind,
            vocab_size=cfg.tokenizer.vocab_size,
            min_frequency=cfg.tokenizer.min_frequency,
            byte_fallback=cfg.tokenizer.byte_fallback,
        )
    if verbose:
        print(f"tokenizer: {tokenizer.kind}, {tokenizer.vocab_size} tokens", flush=True)
    if save_to is not None:
        tokenizer.save(save_to)
    return tokenizer


def shards_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.shards_dir) if cfg.data.shards_dir else Path(cfg.run_dir) / "data"


def build_shards(cfg: PretrainConfig, tokenizer, verbose: int = 1):
    """Reuse the shards in `shards_dir` when they were made with this tokenizer, else encode."""
    from groundup.data.corpus import Corpus
    from groundup.data.shards import load_shards, prepare_shards

    out = shards_dir(cfg)
    if (out / "index.json").is_file():
        index = load_shards(out)
        if _shards_match(index.meta, cfg, tokenizer):
            if verbose:
                print(f"token shards: reusing {out}", flush=True)
            return index
    corpus = Corpus(cfg.data.source, text_field=cfg.data.text_field, bad_rows=cfg.data.bad_rows)
    return prepare_shards(
        corpus,
        tokenizer,
        out,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.seed,
        progress=bool(verbose),
    )


def _shards_match(meta: dict[str, Any], cfg: PretrainConfig, tokenizer) -> bool:
    """True when shards were encoded from this corpus, split and tokenizer.

    The tokenizer alone is not enough: a bytes tokenizer is the same for every corpus, so a
    changed data.source would silently train on the old text.
    """
    from groundup.data.corpus import Corpus

    try:
        source = Corpus(
            cfg.data.source, text_field=cfg.data.text_field, bad_rows=cfg.data.bad_rows
        ).description
    except MissingFileError:
        source = None  # the raw corpus is gone (shards copied elsewhere): trust the shards
    return (
        meta.get("tokenizer", {}).get("sha256") == tokenizer.fingerprint()
        and meta.get("seed") == cfg.seed
        and meta.get("val_fraction") == cfg.data.val_fraction
        and (source is None or meta.get("source") == source)
    )


def build_gpt_config(model: dict[str, Any], vocab_size: int):
    """GPTConfig from the config's `model` mapping: an optional preset plus typed overrides."""
    from groundup.models.gpt import PRESETS, GPTConfig
    from groundup.registry import lookup

    fields = dict(model)
    preset = fields.pop("preset", None)
    # lookup: case-insensitive, and an unknown name gets "did you mean" (not a KeyError)
    base = dict(lookup(PRESETS, preset, "model preset")) if preset is not None else {}
    if "vocab_size" not in fields:
        # a BPE vocabulary is padded to a multiple of 64 (fast matmuls); small ones stay exact
        fields["vocab_size"] = vocab_size if vocab_size <= 256 else 64 * math.ceil(vocab_size / 64)
    merged = {**base, **fields}
    return from_dict(GPTConfig, merged, prefix="model.")


def loop_batches(cfg: PretrainConfig, block_size: int) -> int:
    """grad_accum of one process (see `split_global_batch` for several ranks)."""
    return split_global_batch(cfg, block_size, 1)[1]


def split_global_batch(
    cfg: PretrainConfig, block_size: int, world_size: int = 1
) -> tuple[int, int]:
    """(sequences per micro-batch on each rank, grad_accum) that keep the global batch.

    The global batch is train.tokens_per_step, or else batch_size x grad_accum sequences (what
    one process trains on per step). With tokens_per_step, each rank's micro-batch is
    train.batch_size and grad_accum = tokens_per_step / (world_size x batch_size x block_size).
    Without it, the largest micro-batch <= batch_size that divides the rank's share is used,
    so one process and N ranks draw the same windows per step (and resume into each other).
    """
    t = cfg.train
    if t.tokens_per_step is not None:
        per_micro = world_size * t.batch_size * block_size
        if t.tokens_per_step % per_micro:
            if world_size == 1:
                raise ConfigError(
                    f"train.tokens_per_step {t.tokens_per_step} is not a multiple of batch_size x "
                    f"block_size = {per_micro}; pick a multiple (e.g. "
                    f"{per_micro * max(1, t.tokens_per_step // per_micro)})"
                )
            raise ConfigError(
                f"the global batch train.tokens_per_step {t.tokens_per_step} cannot be split over "
                f"{world_size} ranks x batch_size {t.batch_size} x block_size {block_size} = "
                f"{per_micro} tokens; set tokens_per_step to a multiple of {per_micro} (e.g. "
                f"{per_micro * max(1, round(t.tokens_per_step / per_micro))}) or change batch_size"
            )
        return t.batch_size, t.tokens_per_step // per_micro
    from groundup.train.distributed import split_sequences

    return split_sequences(t.batch_size, t.grad_accum, world_size)


def save_model_dir(
    path: Path, model, tokenizer, tensors: dict[str, torch.Tensor] | None = None
) -> Path:
    """A self-contained model folder: weights, GPT config and tokenizer (what `generate` loads).

    `tensors`: the full weights when gathered already (an FSDP2 model, on rank 0)."""
    from safetensors.torch import save_file

    from groundup.train.checkpoint import model_tensors, unwrap

    path.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        tensors = model_tensors(unwrap(model))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "groundup.gpt"})
    config = {"model_type": "groundup-gpt", **unwrap(model).config.to_dict()}
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save(path / "tokenizer.json")
    return path


def load_model_dir(path: str | Path, device: str = "cpu"):
    """(GPT, tokenizer) saved by `save_model_dir` (a run directory's `model/` or the run)."""
    from groundup.jobs.model_io import load_model

    loaded = load_model(path)
    return loaded.model.to(device), loaded.tokenizer


def sample_text(model, tokenizer, sample: SampleConfig, stream: bool = False) -> str:
    """Generate a continuation of `sample.prompt`; with `stream`, print it as it comes."""
    import sys

    from groundup.generate import generate

    device = next(model.parameters()).device
    ids = tokenizer.encode(sample.prompt) or [tokenizer.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    printed = ""
    new: list[int] = []

    def on_token(token_ids: torch.Tensor) -> None:
        nonlocal printed
        new.append(int(token_ids[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
            return
        sys.stdout.write(text[len(printed) :])
        sys.stdout.flush()
        printed = text

    if stream:
        sys.stdout.write(sample.prompt)
    out = generate(
        model,
        idx,
        sample.max_new_tokens,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        eos_id=tokenizer.eot_id,
        seed=sample.seed,
        on_token=on_token if stream else None,
        vocab_limit=tokenizer.vocab_size,
    )
    if stream:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return tokenizer.decode(out[0, len(ids) :].tolist())


# ---------------------------------------------------------------- the commands
def run_tokenizer(
    config_path: str | Path | None,
    overrides=(),
    out: str | Path | None = None,
    config: PretrainConfig | None = None,
) -> Path:
    """`groundup tokenizer train CONFIG`: train and save a tokenizer.json."""
    cfg = config if config is not None else load_config(PretrainConfig, config_path, overrides)
    target = Path(out) if out is not None else Path(cfg.run_dir) / "tokenizer.json"
    build_tokenizer(cfg, save_to=target)
    print(f"saved {target}", flush=True)
    return target


def run_prepare(config_path: str | Path | None, overrides=(), config: PretrainConfig | None = None):
    """`groundup prepare CONFIG`: tokenizer + token shards, ready for `groundup pretrain`."""
    cfg = config if config is not None else load_config(PretrainConfig, config_path, overrides)
    out = shards_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg, save_to=out / "tokenizer.json")
    index = build_shards(cfg, tokenizer)
    print(
        f"token shards in {out}: {len(index.train):,} train and {len(index.val):,} val tokens "
        f"({index.dtype})",
        flush=True,
    )
    return index


def run_pretrain(
    config_path: str | Path | None,
    overrides=(),
    overwrite: bool = False,
    resume: bool = False,
    config: PretrainConfig | None = None,
    verbose: int = 1,
) -> dict[str, Any]:
    """`groundup pretrain CONFIG`: train a GPT from scratch; returns headline results.

    Under torchrun every rank runs this; errors name the rank ("rank 1: ...")."""
    from groundup.train import distributed as du

    cfg = config if config is not None else load_config(PretrainConfig, config_path, overrides)
    return du.run_job(
        cfg.distributed,
        cfg.train.device,
        lambda device: _pretrain(cfg, overwrite, resume, verbose, device),
    )


def _pretrain(
    cfg: PretrainConfig,
    overwrite: bool,
    resume: bool,
    verbose: int,
    rank_device: torch.device | None,
) -> dict[str, Any]:
    from groundup.data.shards import load_shards
    from groundup.data.tokenizers import Tokenizer
    from groundup.data.windows import RandomWindows, SequentialWindows
    from groundup.jobs.run_dir import (
        checkpoint_config,
        prepare_run_dir,
        resume_point,
        wants_resume,
    )
    from groundup.models.gpt import GPT
    from groundup.seed import set_seed
    from groundup.train import distributed as du
    from groundup.train.callbacks import ModelCheckpoint
    from groundup.train.checkpoint import model_tensors
    from groundup.train.hardware import measured_peak_flops
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.trainer import Trainer, resolve_device, resolve_precision

    rank, world = du.rank(), du.world_size()
    verbose = verbose if rank == 0 else 0
    run_dir = Path(cfg.run_dir)
    built: dict[str, Any] = {}

    def prepare() -> tuple[Path | None, float | None]:
        """Rank 0's file-system work: the run directory, the tokenizer, the token shards."""
        if wants_resume(run_dir, cfg, resume):
            # the newest complete checkpoint; a changed config is refused, fields named
            last, best = resume_point(run_dir, cfg)
        else:
            prepare_run_dir(run_dir, cfg, overwrite=overwrite)
            last, best = None, None
        # Check the model section now, before minutes of tokenizer training and encoding
        # (256 stands in for the vocabulary size the tokenizer will decide).
        build_gpt_config(cfg.model, 256)
        built["tokenizer"] = build_tokenizer(
            cfg, save_to=run_dir / "tokenizer.json", verbose=verbose
        )
        built["index"] = build_shards(cfg, built["tokenizer"], verbose=verbose)
        return last, best

    last, best_val_loss = du.main_first(prepare)
    if rank == 0:
        tokenizer, index = built["tokenizer"], built["index"]
    else:  # what rank 0 wrote (for several nodes: run_dir on a shared file system)
        tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
        index = load_shards(shards_dir(cfg))
    gpt_cfg = build_gpt_config(cfg.model, tokenizer.vocab_size)
    tokenizer.check_fits(gpt_cfg.vocab_size)
    index.check_block_size(gpt_cfg.block_size)
    batch_size, grad_accum = split_global_batch(cfg, gpt_cfg.block_size, world)

    device = rank_device if rank_device is not None else resolve_device(cfg.train.device)
    autocast = resolve_precision(cfg.train.precision, device)
    compute_dtype = autocast or torch.float32
    # Trap: the first measurement in a process draws random matrices. Seeding after it keeps
    # the init and dropout streams the same whether or not a run came earlier in the process.
    peak = measured_peak_flops(device.type, compute_dtype)
    set_seed(cfg.seed)  # the same on every rank: FSDP2 shards each rank's own copy of the init
    model = GPT(gpt_cfg)
    flops_per_token = model.flops_per_token()
    if verbose:
        print(
            f"model: {gpt_cfg.flavour}, {model.num_params() / 1e6:.2f}M parameters, "
            f"{flops_per_token / 1e6:.1f} MFLOPs/token; device {device}, "
            f"{'bf16' if compute_dtype == torch.bfloat16 else str(compute_dtype).removeprefix('torch.')}, "
            f"measured peak {peak / 1e9:.0f} GFLOP/s",
            flush=True,
        )
    t = cfg.train
    checkpoint = ModelCheckpoint(
        run_dir / "checkpoints", monitor="val_loss", every_n_steps=t.checkpoint_every
    )
    if best_val_loss is not None:  # resumed: best/ holds this value, beat it to replace it
        checkpoint.tracker.best = best_val_loss
    trainer = Trainer(
        model,
        loss=SparseCategoricalCrossentropy(from_logits=True),
        optimizer=cfg.optim.optimizer_spec(),
        schedule=cfg.optim.schedule_spec(),
        grad_accum=grad_accum,
        clip_grad_norm=t.clip_grad_norm,
        precision=t.precision,
        device=device,
        compile=t.compile,
        run_dir=run_dir,
        log_every=t.log_every,
        verbose=verbose,
        flops_per_sample=flops_per_token * gpt_cfg.block_size,
        peak_flops=peak,
        report_perplexity=True,
        callbacks=[checkpoint],
        nan_policy=t.nan_policy,
        keep_last=t.keep_last,
        config=checkpoint_config(cfg),
        strategy=cfg.distributed.strategy,
        activation_checkpointing=cfg.distributed.activation_checkpointing,
    )
    if verbose and du.active():
        print(
            f"distributed: {world} rank(s), backend {du.backend()}, strategy "
            f"{trainer.strategy}; global batch {world * batch_size * grad_accum} sequences = "
            f"{world} rank(s) x {batch_size} x {grad_accum} micro-step(s)",
            flush=True,
        )
    train = RandomWindows(
        index.train,
        gpt_cfg.block_size,
        batch_size,
        seed=cfg.seed,
        device=device,
        rank=rank,
        world_size=world,
    )
    val = SequentialWindows(
        index.val, gpt_cfg.block_size, batch_size, max_batches=t.eval_batches, device=device
    )
    trainer.fit(
        train,
        val,
        max_steps=t.max_steps,
        eval_every=t.eval_every,
        resume_from=last,
    )
    tensors = model_tensors(model)  # FSDP2: gathered onto rank 0 (a collective)
    model_dir = run_dir / "model"
    if rank == 0:
        save_model_dir(model_dir, model, tokenizer, tensors)
    final = trainer.evaluate(
        SequentialWindows(index.val, gpt_cfg.block_size, batch_size, device=device),
        prefix="val_",
    )
    results: dict[str, Any] = {
        "steps": trainer.step,
        "tokens": trainer.tokens_seen,
        "params": model.num_params(),
        "final_val_loss": final.get("val_loss"),
        "final_val_perplexity": final.get("val_perplexity"),
    }
    if rank != 0:
        du.barrier()  # rank 0 writes the results and samples; the ranks end together
        return {**results, "sample": ""}
    results.update(_throughput(run_dir / "metrics.jsonl"))
    if world > 1:
        results["world_size"] = world
    (run_dir / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    if verbose:
        print(
            f"val loss (whole split) {results['final_val_loss']:.4f}, perplexity "
            f"{results['final_val_perplexity']:.2f}; model saved in {model_dir}",
            flush=True,
        )
        print("--- sample ---", flush=True)
    # a sharded model cannot run alone on rank 0: sample from the saved full copy
    sampler = load_model_dir(model_dir, device=device)[0] if trainer.strategy == "fsdp" else model
    results["sample"] = sample_text(sampler, tokenizer, cfg.sample, stream=bool(verbose))
    du.barrier()
    return results


def _throughput(metrics_file: Path) -> dict[str, float]:
    """Mean tokens/s and MFU over the logged intervals after the first (warm-up) one."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("event") == "train" and "tokens_per_s" in r][1:]
    if not rows:
        return {}
    out = {"tokens_per_s": sum(r["tokens_per_s"] for r in rows) / len(rows)}
    if all("mfu" in r for r in rows):
        out["mfu"] = sum(r["mfu"] for r in rows) / len(rows)
    return out
