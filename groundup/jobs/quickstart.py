"""`groundup quickstart`: the project's main job on embedded data, no arguments needed.

1. the seed model of the tutorial (Dense 128 relu, Dense 64 relu, Dense 10 softmax, Adam,
   sparse categorical cross-entropy) on scikit-learn's bundled digits, stratified 80/20 split:
   prints the test accuracy;
2. a byte-level BPE tokenizer trained on Python's bundled documentation, token shards, a small
   GPT pretrained on them, and a generated sample;
3. that GPT instruction-tuned (all its weights) on pairs built from the standard library's
   docstrings ("What does json.dumps do?"), evaluated on held-out pairs against the base model,
   exported to the Hugging Face format, and asked a question.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from groundup.config import load_config, to_dict
from groundup.configs import shipped_config
from groundup.errors import ConfigError
from groundup.jobs.export import run_export
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.jobs.pretrain import PretrainConfig, run_pretrain
from groundup.jobs.pretrain_objectives import model_config
from groundup.jobs.train_tabular import TrainJobConfig, run_train

# What the quickstart changes in each shipped config, in one place: shorter runs, so the whole
# lifecycle takes about 7 minutes on 2 CPU cores. Dotted keys, applied like command-line
# overrides after the stage's run_dir (and before the user's own overrides).
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    # configs/digits-mlp.yaml: ten epochs in full, the accuracy alone
    "digits": {"metrics": ["accuracy"], "early_stopping": None},
    # configs/pretrain-pydocs.yaml: 500 steps instead of 800
    "gpt": {
        "optim.warmup_steps": 50,
        "train.max_steps": 500,
        "train.eval_every": 250,
        "train.eval_batches": 10,
        "sample.max_new_tokens": 80,
    },
    # configs/finetune-sft.yaml: its two epochs (one leaves answers that repeat a token),
    # evaluated at each epoch's end
    "sft": {"train.eval_every": None, "train.log_every": 20},
}
TASK_LIMIT = 100  # items per built-in task in the quickstart's comparison (a few seconds each)
# stage -> (shipped config, its dataclass, the run folder inside the quickstart's run_dir)
STAGES: dict[str, tuple[str, type, str]] = {
    "digits": ("digits-mlp.yaml", TrainJobConfig, "digits-mlp"),
    "gpt": ("pretrain-pydocs.yaml", PretrainConfig, "pydocs-gpt"),
    "sft": ("finetune-sft.yaml", FinetuneConfig, "pydocs-sft"),
}
# a user override starting with one of these goes to that stage; the rest to the GPT stage
STAGE_PREFIXES = {"digits.": "digits", "sft.": "sft"}


def stage_config(
    stage: str, run_dir: str | Path, overrides: Any = (), sets: dict[str, Any] | None = None
) -> Any:
    """The shipped config of `stage` with its run_dir, shortened by QUICK_OVERRIDES, then
    `sets` (more dotted keys: `{"base.path": ...}`) and the user's `overrides` (`a.b=1`)."""
    name, cls, _ = STAGES[stage]
    values = {"run_dir": str(run_dir), **QUICK_OVERRIDES[stage], **(sets or {})}
    # JSON is YAML: each value reads back exactly as it is written here
    quick = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    return load_config(cls, shipped_config(name), [*quick, *overrides])


def seed_mlp_config(run_dir: str | Path) -> TrainJobConfig:
    """The tutorial's seed model on digits: configs/digits-mlp.yaml without early stopping."""
    return stage_config("digits", run_dir)


def pydocs_gpt_config(run_dir: str | Path) -> PretrainConfig:
    """configs/pretrain-pydocs.yaml, shortened to a few minutes on 2 CPU cores."""
    return stage_config("gpt", run_dir)


def sft_config(run_dir: str | Path, base: str | Path) -> FinetuneConfig:
    """configs/finetune-sft.yaml on the quickstart's GPT."""
    return stage_config("sft", run_dir, sets={"base.path": str(base)})


def stage_configs(run_dir: str | Path, overrides: Any = ()) -> dict[str, Any]:
    """Every stage's config, built and checked before anything runs: a wrong override fails
    here, not after the first stage has trained. The SFT stage tunes the GPT stage's run."""
    run_dir = Path(run_dir)
    split: dict[str, list[str]] = {stage: [] for stage in STAGES}
    typed: dict[str, list[str]] = {stage: [] for stage in STAGES}  # as the user wrote them
    for text in overrides:
        prefix = next((p for p in STAGE_PREFIXES if text.startswith(p)), None)
        stage = STAGE_PREFIXES.get(prefix, "gpt")
        split[stage].append(text.removeprefix(prefix or ""))
        typed[stage].append(text)
    configs: dict[str, Any] = {}
    for stage, (name, _, folder) in STAGES.items():
        sets = {"base.path": configs["gpt"].run_dir} if stage == "sft" else None
        try:
            configs[stage] = cfg = stage_config(stage, run_dir / folder, split[stage], sets)
            if stage == "digits":
                cfg.data.validate()  # dataset or path, and target
            if stage == "gpt":
                model_config(
                    cfg.objective, cfg.model, 256
                )  # the model section (256: any vocabulary)
        except ConfigError as exc:
            given = f" (overrides: {' '.join(typed[stage])})" if typed[stage] else ""
            raise ConfigError(
                f"quickstart {stage} stage, configs/{name}{given}: {exc}; overrides go to the "
                "GPT stage, or to the others with a digits. or sft. prefix"
            ) from None
    return configs


def run_quickstart(
    run_dir: str | Path = "runs/quickstart",
    overrides: Any = (),
    verbose: int = 1,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every stage; returns each stage's headline results.

    Overrides apply to the GPT stage (`train.max_steps=100`), except those starting with
    `digits.` (the MLP stage: `digits.train.epochs=5`) or `sft.` (the SFT stage:
    `sft.train.epochs=2`). Every stage's config is checked before the first one trains.
    `resume`: a stage that finished keeps its results, an interrupted one goes on from its
    newest checkpoint, the others run.
    """
    run_dir = Path(run_dir)
    configs = stage_configs(run_dir, overrides)
    results: dict[str, Any] = {}

    print("== 1/3 the seed MLP on digits (groundup train) ==", flush=True)
    digits = _stage(run_train, configs["digits"], resume, verbose)[0]
    results["digits_test_accuracy"] = digits["test_accuracy"]

    print("\n== 2/3 a GPT pretrained on Python's docs (groundup pretrain) ==", flush=True)
    gpt, kept = _stage(run_pretrain, configs["gpt"], resume, verbose)
    results["gpt_val_loss"] = gpt["final_val_loss"]
    results["gpt_sample"] = gpt.get("sample", "")

    print(
        "\n== 3/3 instruction tuning of that GPT, then export (groundup finetune) ==",
        flush=True,
    )
    sft_cfg = configs["sft"]
    base_val = _base_sft_loss(Path(sft_cfg.base.path), sft_cfg)
    sft = _stage(run_finetune, sft_cfg, resume and kept, verbose)[0]  # a new base: tune again
    export_dir = run_export(
        sft_cfg.run_dir, run_dir / "pydocs-sft-hf", overwrite=True, verbose=verbose
    )
    results.update(
        sft_base_val_loss=base_val,
        sft_val_loss=sft["val_loss"],
        sft_trainable_share=sft["trainable_params"] / sft["total_params"],
        gpt_val_bpb=gpt.get("final_val_bpb"),
    )
    print("\n== the built-in evaluation tasks (groundup evaluate --tasks builtin) ==", flush=True)
    scores = _task_scores(configs["gpt"].run_dir, sft_cfg.run_dir, run_dir / "tasks.json")
    results["tasks_mean_centered"] = {k: v["mean_centered"] for k, v in scores.items()}
    qa = {k: v["tasks"]["stdlib-qa"] for k, v in scores.items()}
    results["qa_f1"] = {k: v["f1"] for k, v in qa.items()}
    results["qa_distinct_2"] = {k: v["distinct_2"] for k, v in qa.items()}

    print("\n== summary ==", flush=True)
    print(f"digits test accuracy: {results['digits_test_accuracy']:.4f}", flush=True)
    bpb = results["gpt_val_bpb"]
    print(
        f"GPT validation loss: {results['gpt_val_loss']:.3f} "
        f"(perplexity {gpt['final_val_perplexity']:.1f}"
        + (f", {bpb:.3f} bits per byte" if bpb is not None else "")
        + f"); runs in {run_dir}",
        flush=True,
    )
    means = results["tasks_mean_centered"]
    print(
        "evaluation tasks, mean centered score (0 = chance): "
        + ", ".join(f"{name} {value:+.3f}" for name, value in means.items()),
        flush=True,
    )
    print(
        f"SFT ({100 * results['sft_trainable_share']:.0f}% of the weights trained): "
        f"held-out answer loss {results['sft_base_val_loss']:.3f} (base) -> "
        f"{results['sft_val_loss']:.3f}; Hugging Face export in {export_dir}",
        flush=True,
    )
    f1, distinct = results["qa_f1"], results["qa_distinct_2"]
    print(
        f"held-out questions (stdlib-qa, greedy): token F1 {f1['pretrained']:.3f} (base) -> "
        f"{f1['tuned (SFT)']:.3f}; distinct-2 of the answers {distinct['pretrained']:.2f} -> "
        f"{distinct['tuned (SFT)']:.2f} (near 0: the answers repeat themselves)",
        flush=True,
    )
    print(
        f"generate more with: groundup generate {configs['gpt'].run_dir} --prompt 'The list'\n"
        f"ask the tuned model: groundup generate {sft_cfg.run_dir} "
        "--prompt 'What does json.dumps do?' --temperature 0\n"
        f"talk to it: groundup chat {sft_cfg.run_dir} --temperature 0 --repetition-penalty 1.2\n"
        f"serve it (OpenAI's API): groundup serve {sft_cfg.run_dir}; run it in llama.cpp: "
        f"groundup export {sft_cfg.run_dir} --format gguf --out sft.gguf",
        flush=True,
    )
    stages = [configs[k].run_dir for k in ("digits", "gpt", "sft")]
    pages = [str(Path(d) / "report.html") for d in stages if (Path(d) / "report.html").is_file()]
    if pages:
        print("each run's report (open in a browser): " + " ".join(pages), flush=True)
    print(
        f"score models on tasks: groundup evaluate {configs['gpt'].run_dir} {sft_cfg.run_dir} "
        "--tasks builtin; predict: groundup predict RUN --data FILE",
        flush=True,
    )
    print(
        f"compare runs: groundup report {configs['gpt'].run_dir} RUN_B ...; "
        f"find a learning rate: groundup lr-find {shipped_config('digits-mlp')}",
        flush=True,
    )
    return results


def _stage(run: Any, cfg: Any, resume: bool, verbose: int) -> tuple[dict[str, Any], bool]:
    """One stage: run it afresh (replacing what an earlier quickstart left), or with `resume`
    keep a finished stage's results and continue an interrupted one from its checkpoint.
    Returns (results, whether the finished results were kept as they were)."""
    from groundup.checkpoint import find_latest
    from groundup.runs import RESULTS_FILE, comparable, read_saved_config

    path = Path(cfg.run_dir)
    if resume:
        same = comparable(read_saved_config(path)) == comparable(to_dict(cfg))
        if same and (path / RESULTS_FILE).is_file():
            if verbose:
                print(f"finished before: results from {path / RESULTS_FILE}", flush=True)
            return json.loads((path / RESULTS_FILE).read_text(encoding="utf-8")), True
        if same and find_latest(path / "checkpoints") is not None:
            return run(None, config=cfg, resume=True, verbose=verbose), False
    return run(None, config=cfg, overwrite=True, verbose=verbose), False


def _task_scores(gpt_dir: str | Path, sft_dir: str | Path, out: Path) -> dict[str, Any]:
    """The built-in tasks (held out from every built-in training set) on an untrained GPT of
    the same shape, the pretrained GPT and the tuned one: what each training stage bought."""
    import torch

    from groundup.evals.lm import LMScorer
    from groundup.evals.runner import evaluate_tasks, format_table
    from groundup.evals.training import chat_formatter
    from groundup.files import write_text_atomic
    from groundup.jobs.evaluate_tasks import task_refs
    from groundup.models.folders import load_model

    base, tuned = load_model(gpt_dir), load_model(sft_dir)
    torch.manual_seed(0)
    untrained = type(base.model)(base.model.config)
    models = {
        "untrained": (untrained, base.tokenizer, None),
        "pretrained": (base.model, base.tokenizer, None),
        "tuned (SFT)": (
            tuned.model,
            tuned.tokenizer,
            chat_formatter(tuned.tokenizer, tuned.meta.get("template", "auto")),
        ),
    }
    tasks = task_refs("builtin")
    scores: dict[str, Any] = {}
    for name, (model, tokenizer, chat) in models.items():
        scorer = LMScorer(model, tokenizer, device="cpu", batch_size=32)
        scores[name] = evaluate_tasks(scorer, tasks, limit=TASK_LIMIT, format_prompt=chat)
        scores[name].pop("predictions")
    print(format_table(scores), flush=True)
    write_text_atomic(out, json.dumps(scores, indent=2))
    return scores


def _base_sft_loss(base: Path, cfg: FinetuneConfig) -> float:
    """The base model's loss on the held-out answers: what fine-tuning has to beat."""
    import tempfile

    from groundup.data.text_builtin import load_sft_dataset
    from groundup.jobs.evaluate import run_evaluate

    with tempfile.TemporaryDirectory() as tmp:
        val = Path(tmp) / "val.jsonl"
        rows = load_sft_dataset(cfg.data.builtin)["val"]
        val.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return run_evaluate(base, val, task="sft", verbose=0)["loss"]
