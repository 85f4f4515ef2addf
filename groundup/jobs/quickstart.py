"""`groundup quickstart`: the project's main job on embedded data, no arguments needed.

1. the seed model of the tutorial (Dense 128 relu, Dense 64 relu, Dense 10 softmax, Adam,
   sparse categorical cross-entropy) on scikit-learn's bundled digits, stratified 80/20 split:
   prints the test accuracy;
2. a byte-level BPE tokenizer trained on Python's bundled documentation, token shards, a small
   GPT pretrained on them, and a generated sample;
3. that GPT fine-tuned with LoRA on instruction pairs built from the standard library's
   docstrings ("What does json.dumps do?"), evaluated on held-out pairs against the base model,
   exported to the Hugging Face format, and asked a question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundup.config import apply_overrides, from_dict, to_dict
from groundup.data.prepare import TabularDataConfig
from groundup.jobs.export import run_export
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.jobs.pretrain import PretrainConfig, run_pretrain
from groundup.jobs.train import LoopConfig, OptimConfig, TrainJobConfig, run_train


def seed_mlp_config(run_dir: str | Path) -> TrainJobConfig:
    """The tutorial's seed model on digits (the same as configs/digits-mlp.yaml)."""
    return TrainJobConfig(
        run_dir=str(run_dir),
        seed=0,
        data=TabularDataConfig(dataset="digits", test_size=0.2, val_size=0.1, normalize="standard"),
        layers=[
            {"type": "Dense", "units": 128, "activation": "relu"},
            {"type": "Dense", "units": 64, "activation": "relu"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        optim=OptimConfig(name="adam", lr=1e-3),
        train=LoopConfig(epochs=10, batch_size=32),
    )


def pydocs_gpt_config(run_dir: str | Path) -> PretrainConfig:
    """configs/pretrain-pydocs.yaml, shortened to a few minutes on 2 CPU cores."""
    cfg = from_dict(PretrainConfig, _PYDOCS_QUICK)
    cfg.run_dir = str(run_dir)
    return cfg


_PYDOCS_QUICK = {
    "seed": 1337,
    "data": {"source": "pydocs", "val_fraction": 0.1},
    "tokenizer": {"kind": "bpe", "vocab_size": 4096},
    "model": {
        "flavour": "gpt2",
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 256,
        "block_size": 128,
        "activation": "gelu",
        "dropout": 0.2,
    },
    "optim": {
        "name": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.1,
        "betas": [0.9, 0.99],
        "schedule": "cosine",
        "warmup_steps": 50,
        "min_lr_ratio": 0.1,
    },
    "train": {
        "max_steps": 500,
        "batch_size": 16,
        "eval_every": 250,
        "eval_batches": 10,
        "log_every": 50,
    },
    "sample": {"prompt": "The list", "max_new_tokens": 80},
}


def sft_lora_config(run_dir: str | Path, base: str | Path) -> FinetuneConfig:
    """configs/finetune-sft-lora.yaml on the quickstart's GPT, shortened to one epoch."""
    cfg = from_dict(FinetuneConfig, _SFT_QUICK)
    cfg.run_dir, cfg.base.path = str(run_dir), str(base)
    return cfg


_SFT_QUICK = {
    "seed": 0,
    "task": "sft",
    "method": "lora",
    "base": {"path": "runs/pydocs"},
    "lora": {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.05,
        "targets": ["*.attn.qkv", "*.attn.proj", "*.mlp.up", "*.mlp.down"],
    },
    "data": {"builtin": "stdlib-qa", "template": "auto", "packing": True},
    "optim": {
        "name": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "warmup_steps": 20,
        "min_lr_ratio": 0.1,
    },
    "train": {"epochs": 1, "batch_size": 16, "log_every": 20},
    "sample": {"prompt": "What does os.path.join do?", "max_new_tokens": 60, "temperature": 0.0},
}


def run_quickstart(
    run_dir: str | Path = "runs/quickstart", overrides: Any = (), verbose: int = 1
) -> dict[str, Any]:
    """Run every stage; returns each stage's headline results.

    Overrides apply to the GPT stage (`train.max_steps=100`), except those starting with
    `digits.`, which go to the MLP stage (`digits.train.epochs=5`).
    """
    run_dir = Path(run_dir)
    digits_over = [o.removeprefix("digits.") for o in overrides if o.startswith("digits.")]
    gpt_over = [o for o in overrides if not o.startswith("digits.")]
    results: dict[str, Any] = {}

    print("== 1/3 the seed MLP on digits (groundup train) ==", flush=True)
    cfg = seed_mlp_config(run_dir / "digits-mlp")
    if digits_over:
        cfg = from_dict(TrainJobConfig, apply_overrides(to_dict(cfg), digits_over))
    digits = run_train(None, config=cfg, overwrite=True, verbose=verbose)
    results["digits_test_accuracy"] = digits["test_accuracy"]

    print("\n== 2/3 a GPT pretrained on Python's docs (groundup pretrain) ==", flush=True)
    gpt_cfg = pydocs_gpt_config(run_dir / "pydocs-gpt")
    if gpt_over:
        gpt_cfg = from_dict(PretrainConfig, apply_overrides(to_dict(gpt_cfg), gpt_over))
    gpt = run_pretrain(None, config=gpt_cfg, overwrite=True, verbose=verbose)
    results["gpt_val_loss"] = gpt["final_val_loss"]
    results["gpt_sample"] = gpt["sample"]

    print(
        "\n== 3/3 LoRA instruction tuning of that GPT, then export (groundup finetune) ==",
        flush=True,
    )
    sft_cfg = sft_lora_config(run_dir / "pydocs-sft-lora", run_dir / "pydocs-gpt")
    base_val = _base_sft_loss(run_dir / "pydocs-gpt", sft_cfg)
    sft = run_finetune(None, config=sft_cfg, overwrite=True, verbose=verbose)
    export_dir = run_export(
        sft_cfg.run_dir, run_dir / "pydocs-sft-lora-hf", overwrite=True, verbose=verbose
    )
    results.update(
        sft_base_val_loss=base_val,
        sft_val_loss=sft["val_loss"],
        sft_trainable_share=sft["trainable_params"] / sft["total_params"],
    )

    print("\n== summary ==", flush=True)
    print(f"digits test accuracy: {results['digits_test_accuracy']:.4f}", flush=True)
    print(
        f"GPT validation loss: {results['gpt_val_loss']:.3f} "
        f"(perplexity {gpt['final_val_perplexity']:.1f}); runs in {run_dir}",
        flush=True,
    )
    print(
        f"LoRA SFT ({100 * results['sft_trainable_share']:.1f}% of the weights trained): "
        f"held-out answer loss {results['sft_base_val_loss']:.3f} (base) -> "
        f"{results['sft_val_loss']:.3f}; Hugging Face export in {export_dir}",
        flush=True,
    )
    print(
        f"generate more with: groundup generate {run_dir / 'pydocs-gpt'} --prompt 'The list'\n"
        f"ask the tuned model: groundup generate {run_dir / 'pydocs-sft-lora'} "
        "--prompt 'What does json.dumps do?' --temperature 0",
        flush=True,
    )
    return results


def _base_sft_loss(base: Path, cfg: FinetuneConfig) -> float:
    """The base model's loss on the held-out answers: what fine-tuning has to beat."""
    import json
    import tempfile

    from groundup.data.text_builtin import load_sft_dataset
    from groundup.jobs.evaluate import run_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        val = Path(tmp) / "val.jsonl"
        rows = load_sft_dataset(cfg.data.builtin)["val"]
        val.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return run_evaluate(base, val, task="sft", verbose=0)["loss"]
