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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from groundup.checkpoint import model_tensors
from groundup.config import check, load_config
from groundup.data.masking import BERT_SPECIAL_TOKENS, MaskingConfig
from groundup.distributed import DistributedConfig
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.evals.training import eval_tasks_of, task_evaluators
from groundup.generate import SampleConfig
from groundup.jobs.pretrain_objectives import (
    build_objective,
    model_config,
    sequence_length,
)
from groundup.runs import MODEL_DIR, Run, plan_run
from groundup.train.loop_config import LoopConfig, Precision
from groundup.train.optim_config import OptimConfig

if TYPE_CHECKING:
    from groundup.train.hardware import PeakProbe


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
class PretrainLoopConfig(LoopConfig):
    """Steps, batch geometry, evaluation and checkpoint cadence, precision."""

    max_steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch
    eval_every: int = 250  # steps between evaluations on the validation split
    eval_batches: int | None = 20  # null: the whole validation split
    log_every: int = 10  # steps between train records
    clip_grad_norm: float | None = 1.0  # max global gradient norm; null: no clipping
    precision: Precision = "auto"  # auto: bf16 where the device has it
    tokens_per_step: int | None = None  # when set, grad_accum is derived from it


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
    # clm: a GPT predicting the next token; mlm: a BERT predicting masked tokens
    objective: Literal["clm", "mlm"] = "clm"
    data: TextDataConfig = field(default_factory=TextDataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # a preset name and/or model fields (GPT: n_layer, n_head, n_embd, block_size, flavour,
    # ...; BERT under mlm: n_layer, n_head, n_embd, intermediate_size, block_size);
    # vocab_size defaults to the tokenizer's
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gpt2-tiny"})
    mlm: MaskingConfig = field(default_factory=MaskingConfig)  # objective mlm only
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
            special_tokens=BERT_SPECIAL_TOKENS if cfg.objective == "mlm" else None,
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
    from groundup.distributed import split_sequences

    return split_sequences(t.batch_size, t.grad_accum, world_size)


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
    from groundup import distributed as du

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
    from groundup import distributed as du
    from groundup.jobs.estimate import pretrain_check, print_pretrain_table
    from groundup.seed import set_seed
    from groundup.train.hardware import last_probe, measured_peak_flops
    from groundup.train.losses import SparseCategoricalCrossentropy
    from groundup.train.run_log import append_record, sample_record
    from groundup.train.trainer import Trainer

    rank, world = du.rank(), du.world_size()
    verbose = verbose if rank == 0 else 0
    plan = du.main_first(lambda: plan_run(cfg.run_dir, cfg, overwrite=overwrite, resume=resume))
    device, compute_dtype = check_pretrain(cfg, world, rank_device)
    pretrain_check(cfg, device, world)  # a step that cannot fit stops here, before any file
    tasks = eval_tasks_of(cfg.train, "mlm" if cfg.objective == "mlm" else "causal_lm")
    with Run.begin(plan, verbose=verbose) as run:
        tokenizer, index = prepared_data(cfg, verbose)
        model_cfg = model_config(cfg.objective, cfg.model, tokenizer.vocab_size)
        tokenizer.check_fits(model_cfg.vocab_size)
        seq_len = sequence_length(cfg.objective, model_cfg, cfg.mlm)
        index.check_block_size(seq_len)
        batch_size, grad_accum = split_global_batch(cfg, seq_len, world)
        # The first measurement in a process draws random matrices (from its own generator);
        # seeding after it keeps the init and dropout streams the same whatever came before.
        peak = measured_peak_flops(device.type, compute_dtype)
        peaks = peak_fields(peak, last_probe(device.type, compute_dtype), device, compute_dtype)
        set_seed(cfg.seed)  # the same on every rank: FSDP2 shards each rank's copy of the init
        task = build_objective(cfg, tokenizer, model_cfg, seq_len)
        if verbose:
            print_pretrain_table(cfg, task.model, model_cfg.vocab_size, device, world, peak)
            print(peaks_line(peaks), flush=True)
        trainer = Trainer.from_config(
            task.model,
            cfg.train,
            cfg.optim,
            loss=SparseCategoricalCrossentropy(from_logits=True),
            metrics=task.metrics,
            grad_accum=grad_accum,
            device=device,
            run_dir=run.path,
            verbose=verbose,
            flops_per_sample=task.flops_per_sample(),
            peak_flops=peak,
            datasheet_flops=peaks.get("datasheet_peak_flops"),
            report_perplexity=True,
            # bits per byte for a causal LM; an MLM's masked positions are no text stream
            token_bytes=tokenizer.token_bytes() if cfg.objective != "mlm" else None,
            callbacks=run.callbacks("val_loss"),
            evaluators=task_evaluators(tasks, cfg.train, tokenizer),
            config=plan.config,
            strategy=cfg.distributed.strategy,
            activation_checkpointing=cfg.distributed.activation_checkpointing,
        )
        if verbose and du.active():
            print(du.describe_batch(trainer.strategy, batch_size, grad_accum), flush=True)
        train = task.train_data(index, batch_size, cfg.seed, device, rank, world)
        val = task.val_data(index, batch_size, device, _val_masker(cfg, tokenizer, model_cfg))
        trainer.fit(train, val, resume_from=run.checkpoint, **cfg.train.fit_options())
        tensors = model_tensors(task.model)  # FSDP2: gathered onto rank 0 (a collective)
        model_dir = run.path / MODEL_DIR
        if rank == 0:
            task.save(model_dir, tokenizer, tensors)
        results = {**_results(trainer, task.model, val, run.path), **peaks}  # whole val split
        run.write_results(results)
        if rank == 0 and verbose:
            print(_results_line(results, model_dir), flush=True)
        if rank == 0:
            sharded = trainer.strategy == "fsdp"
            results["sample"] = task.sample(
                model_dir, tokenizer, cfg.sample, device, sharded, stream=bool(verbose)
            )
            append_record(run.path, sample_record(trainer.step, results["sample"]))
        du.barrier()  # rank 0 writes the results and samples; the ranks end together
    return {"sample": "", **results}


def _results(trainer: Any, model: Any, val: Any, run_dir: Path) -> dict[str, Any]:
    """The headline figures: steps, tokens, parameters, the loss over the whole validation
    split (every rank evaluates its share), and throughput from rank 0's log."""
    from groundup import distributed as du

    final = trainer.evaluate(val, prefix="val_")
    return {
        "steps": trainer.step,
        "tokens": trainer.tokens_seen,
        "params": sum(p.numel() for p in model.parameters()),
        "final_val_loss": final.get("val_loss"),
        "final_val_perplexity": final.get("val_perplexity"),
        **({"final_val_bpb": final["val_bpb"]} if "val_bpb" in final else {}),
        **({"final_val_accuracy": final["val_accuracy"]} if "val_accuracy" in final else {}),
        **(_throughput(run_dir / "metrics.jsonl") if du.is_main() else {}),
        **({"world_size": du.world_size()} if du.world_size() > 1 else {}),
    }


def _results_line(results: dict[str, Any], model_dir: Path) -> str:
    bpb = results.get("final_val_bpb")
    return (
        f"val loss (whole split) {results['final_val_loss']:.4f}, perplexity "
        f"{results['final_val_perplexity']:.2f}"
        + (f", bits per byte {bpb:.4f}" if bpb is not None else "")
        + "".join(
            f"; {results[label]} {results[key]:.1%}"
            for key, label in (("mfu", "mfu_label"), ("mfu_datasheet", "mfu_datasheet_label"))
            if key in results and label in results
        )
        + f"; model saved in {model_dir}\n--- sample ---"
    )


def peak_fields(
    peak: float, probe: PeakProbe | None, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """What the run's MFU figures are fractions of, for results.json: the measured peak with
    its label, the matmul size and dtype that gave it (when `probe`, this process's
    measurement, is the one behind `peak`), the device's name, and its datasheet peak and
    label when the table knows the device."""
    from groundup.train.peaks import datasheet_label, device_datasheet_peak, measured_label

    fields: dict[str, Any] = {"peak_flops": peak, "mfu_label": measured_label(peak)}
    if probe is not None and probe.flops == peak:  # else a figure given some other way
        fields["peak_matmul_size"] = probe.size
        fields["peak_dtype"] = str(probe.dtype).removeprefix("torch.")
    name, datasheet = device_datasheet_peak(device, dtype)
    fields["device_name"] = name
    if datasheet:
        fields["datasheet_peak_flops"] = datasheet
        fields["mfu_datasheet_label"] = datasheet_label(datasheet)
    return fields


def peaks_line(fields: dict[str, Any]) -> str:
    """The console's note of what mfu and mfu(datasheet) are fractions of."""
    line = f"mfu: {fields['mfu_label']}"
    if "peak_matmul_size" in fields:
        line += f", {fields['peak_dtype']} matmul, best at N={fields['peak_matmul_size']}"
    if "mfu_datasheet_label" in fields:
        line += f"; mfu(datasheet): {fields['mfu_datasheet_label']}, {fields['device_name']} dense"
    return line


def check_pretrain(
    cfg: PretrainConfig, world: int, rank_device: torch.device | None
) -> tuple[torch.device, torch.dtype]:
    """Everything about a pretrain config that can be wrong, checked before any work (the
    tokenizer training and corpus encoding take minutes): the model section, the vocabulary
    against the tokenizer's, the batch split, the device and precision, the LR schedule over
    the run, and a corpus too short for one window. Returns (device, compute dtype)."""
    from groundup.data.corpus import Corpus
    from groundup.train.device import resolve_device, resolve_precision
    from groundup.train.schedules import build_schedule

    shards = shards_dir(cfg)
    if shards.exists() and not shards.is_dir():
        raise ConfigError(f"data.shards_dir {shards} is a file; give a folder for the token shards")
    vocab = _tokenizer_vocab_bound(cfg)
    model_cfg = model_config(cfg.objective, cfg.model, vocab or 256)
    if vocab is not None and "vocab_size" in cfg.model and model_cfg.vocab_size < vocab:
        raise ConfigError(
            f"model.vocab_size {model_cfg.vocab_size} is below the tokenizer's {vocab} tokens; "
            f"set model.vocab_size >= {vocab} (or drop it: it follows the tokenizer) or lower "
            "tokenizer.vocab_size"
        )
    seq_len = sequence_length(cfg.objective, model_cfg, cfg.mlm)
    if cfg.objective == "mlm" and cfg.tokenizer.path:  # a given tokenizer needs [MASK] & co
        from groundup.data.masking import TokenMasker
        from groundup.data.tokenizers import Tokenizer

        tok = Tokenizer.load(cfg.tokenizer.path)
        TokenMasker(cfg.mlm, tok, max(model_cfg.vocab_size, tok.vocab_size))
    split_global_batch(cfg, seq_len, world)
    device = rank_device if rank_device is not None else resolve_device(cfg.train.device)
    compute_dtype = resolve_precision(cfg.train.precision, device) or torch.float32
    build_schedule(cfg.optim.schedule_spec(), cfg.train.max_steps)
    corpus = Corpus(cfg.data.source, text_field=cfg.data.text_field, bad_rows=cfg.data.bad_rows)
    sized = [f for f in corpus.files or [] if f.suffix.lower() != ".parquet"]
    if (
        sized
        and len(sized) == len(corpus.files)
        and sum(f.stat().st_size for f in sized) <= seq_len
    ):
        for _ in corpus:  # so tiny it costs nothing to read: an empty one says so
            pass
        raise DataError(
            f"the corpus {cfg.data.source} is shorter than one window of model.block_size + 1 "
            f"= {seq_len + 1} tokens; lower model.block_size or give more text"
        )
    return device, compute_dtype


def _tokenizer_vocab_bound(cfg: PretrainConfig) -> int | None:
    """The tokenizer's size where it is known before training: a tokenizer file's, or a BPE's
    target; None for a char tokenizer (its size is the corpus's alphabet)."""
    from groundup.data.tokenizers import Tokenizer

    if cfg.tokenizer.path:
        return Tokenizer.load(cfg.tokenizer.path).vocab_size
    return cfg.tokenizer.vocab_size if cfg.tokenizer.kind == "bpe" else None


def prepared_data(cfg: PretrainConfig, verbose: int) -> tuple[Any, Any]:
    """(tokenizer, token shards): rank 0 trains or loads the tokenizer and encodes (or reuses)
    the shards in the run folder; the other ranks read what it wrote (several nodes: run_dir
    on a shared file system)."""
    from groundup import distributed as du
    from groundup.data.shards import load_shards
    from groundup.data.tokenizers import Tokenizer

    built: dict[str, Any] = {}

    def build() -> None:
        built["tokenizer"] = build_tokenizer(
            cfg, save_to=Path(cfg.run_dir) / "tokenizer.json", verbose=verbose
        )
        built["index"] = build_shards(cfg, built["tokenizer"], verbose=verbose)

    du.main_first(build)
    if built:
        return built["tokenizer"], built["index"]
    return Tokenizer.load(Path(cfg.run_dir) / "tokenizer.json"), load_shards(shards_dir(cfg))


def _val_masker(cfg: PretrainConfig, tokenizer: Any, model_cfg: Any) -> Any:
    """mlm: the masker of the validation batches (its own fixed seed); clm: None."""
    if cfg.objective != "mlm":
        return None
    from groundup.data.masking import TokenMasker

    return TokenMasker(cfg.mlm, tokenizer, model_cfg.vocab_size, seed=cfg.mlm.val_seed)


def _throughput(metrics_file: Path) -> dict[str, float]:
    """Mean tokens/s and MFU over the logged intervals after the first (warm-up) one."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("event") == "train" and "tokens_per_s" in r][1:]
    if not rows:
        return {}
    out = {"tokens_per_s": sum(r["tokens_per_s"] for r in rows) / len(rows)}
    for key in ("mfu", "mfu_datasheet"):  # against the measured and the datasheet peak
        if all(key in r for r in rows):
            out[key] = sum(r[key] for r in rows) / len(rows)
    return out
