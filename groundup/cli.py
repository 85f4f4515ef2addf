"""The `groundup` command: parses arguments, then calls the library. Nothing else lives here.

Every command takes a YAML config and dotted overrides (`optim.lr=3e-4`). User mistakes
(`GroundupError`) print one line and exit with code 2; anything else is a bug and keeps its
traceback (exit code 1). SIGINT/SIGTERM during training save a checkpoint and exit with 130/143
and the command that resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence

from groundup.cli_evaluate import EVALUATE_COMMAND
from groundup.cli_predict import PREDICT_COMMAND
from groundup.cli_serve import CHAT_COMMAND, SERVE_COMMAND, add_repetition_args
from groundup.errors import GroundupError, TrainingInterrupted


def _train(args: argparse.Namespace) -> None:
    from groundup.jobs.train_tabular import run_train

    _resolve_resume(args)
    run_train(args.config, args.overrides, overwrite=args.overwrite, resume=args.resume)


def _quickstart(args: argparse.Namespace) -> None:
    from groundup.jobs.quickstart import run_quickstart

    run_quickstart(run_dir=args.run_dir, overrides=args.overrides, resume=args.resume)


def _tokenizer(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import run_tokenizer

    run_tokenizer(args.config, args.overrides, out=args.out)


def _prepare(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import run_prepare

    run_prepare(args.config, args.overrides)


def _pretrain(args: argparse.Namespace) -> int | None:
    from groundup.jobs.pretrain import run_pretrain

    return _job_on_ranks(args, run_pretrain)


def _finetune(args: argparse.Namespace) -> int | None:
    from groundup.jobs.finetune import run_finetune

    return _job_on_ranks(args, run_finetune)


def _job_on_ranks(args: argparse.Namespace, run: Callable) -> int | None:
    """Run a training job here, or with --nproc N start torchrun to re-run this very command
    on N processes of this machine (and return torchrun's exit code)."""
    _resolve_resume(args)
    if args.nproc is not None:
        from groundup.distributed import launch_torchrun

        return launch_torchrun(args.argv, args.nproc)
    run(args.config, args.overrides, overwrite=args.overwrite, resume=args.resume)
    return None


def _resolve_resume(args: argparse.Namespace) -> None:
    """`--resume` alone continues the run of CONFIG; `--resume RUN_DIR` continues the run in
    that folder with its own config.yaml (the overrides it started with included), wherever
    the folder now is. Later overrides (train.max_steps=...) still apply."""
    from pathlib import Path

    from groundup.errors import ConfigError, MissingFileError

    value = args.resume
    if isinstance(value, str) and "=" in value and not Path(value).exists():
        args.overrides = [value, *args.overrides]  # `CONFIG --resume key=value`
        value = True
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        args.overrides = [args.config, *args.overrides]  # `--resume RUN_DIR key=value`
        args.config = None
    if isinstance(value, str):
        run_dir = Path(value)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise MissingFileError(
                f"--resume {run_dir}: no config.yaml there; give the run folder a command "
                "wrote (or CONFIG --resume)"
            )
        if args.config is not None:
            raise ConfigError(
                f"give CONFIG --resume or --resume {run_dir}, not both (the run's own "
                "config.yaml is used)"
            )
        args.config = str(saved)
        # quoted: a folder named `2024-01-01`, `on` or `run #2` is a string, not YAML
        args.overrides = [f"run_dir={json.dumps(str(run_dir))}", *args.overrides]
        value = True
    if args.config is None:
        raise ConfigError(
            f"groundup {args.command} needs a config file: groundup {args.command} CONFIG "
            "(or --resume RUN_DIR)"
        )
    args.resume = bool(value)


def _export(args: argparse.Namespace) -> None:
    from groundup.jobs.export import run_export

    run_export(
        args.run,
        args.out,
        format=args.format,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
        dtype=args.dtype,
    )


def _generate(args: argparse.Namespace) -> None:
    from groundup.generate import SampleConfig
    from groundup.jobs.generate import run_generate

    sample = SampleConfig(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        seed=args.seed,
    )
    run_generate(args.run, sample, device=args.device, allow_pickle=args.allow_pickle)


def _report(args: argparse.Namespace) -> None:
    from groundup.jobs.report import run_report

    run_report(args.runs, args.out)


def _lr_find(args: argparse.Namespace) -> int | None:
    from groundup.jobs.lr_find import check_launch, run_lr_find

    if args.nproc is not None:
        from groundup.distributed import launch_torchrun

        check_launch(args.config, args.overrides, args.cmd)
        return launch_torchrun(args.argv, args.nproc)
    run_lr_find(
        args.config,
        args.overrides,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        num_steps=args.steps,
        command=args.cmd,
    )
    return None


def _sweep(args: argparse.Namespace) -> None:
    from groundup.jobs.sweep import run_sweep

    run_sweep(
        args.config,
        args.overrides,
        args.space,
        args.trials,
        args.pruner,
        sweep_dir=args.out,
        seed=args.seed,
        command=args.cmd,
        report=not args.no_report,
    )


def _estimate(args: argparse.Namespace) -> None:
    from groundup.jobs.estimate import run_estimate

    run_estimate(
        args.config,
        args.overrides,
        command=args.cmd,
        world_size=args.nproc,
        steps=args.steps,
        timing=not args.no_timing,
    )


def _config(args: argparse.Namespace) -> None:
    from groundup.config_reference import default_yaml, reference

    text = default_yaml(args.cmd) if args.action == "init" else reference(args.cmd, args.format)
    sys.stdout.write(text)


def _add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train"], help="train: fit a tokenizer on the corpus")
    parser.add_argument("config", help="YAML config (its data and tokenizer sections are used)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. tokenizer.vocab_size=8192"
    )
    parser.add_argument(
        "--out", help="where to write tokenizer.json (default: <run_dir>/tokenizer.json)"
    )


def _add_pretrain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run directory that holds another run"
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue from the newest complete checkpoint: of CONFIG's run, or of the run in "
        "RUN_DIR (with its own config.yaml); train.max_steps/epochs may be raised",
    )


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    _add_pretrain_args(parser)
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="start torchrun with N processes on this machine (one per GPU); for several "
        "nodes run torchrun yourself (see the README)",
    )


def _add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="a run directory (pretrain, finetune), its model/ folder or a HF folder"
    )
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--top-p", type=float, default=None)
    add_repetition_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (weights_only) when there is no safetensors",
    )


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory (pretrain/finetune) or a model folder")
    parser.add_argument(
        "--format",
        default="hf",
        choices=["hf", "gguf", "peft"],
        help="hf: a Hugging Face folder; gguf: one file for llama.cpp/Ollama; peft: a LoRA "
        "run's adapter in PEFT's layout",
    )
    parser.add_argument("--out", required=True, help="the folder (hf, peft) or .gguf file to write")
    parser.add_argument(
        "--dtype", default=None, choices=["f16", "q8_0", "f32"], help="gguf weights (default f16)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")
    parser.add_argument("--allow-pickle", action="store_true", help=argparse.SUPPRESS)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run directory that holds another run"
    )


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (several: compared)")
    parser.add_argument(
        "--out",
        default=None,
        help="the HTML file (default: RUN/report.html for one run, ./compare-report.html for "
        "several)",
    )


def _add_job_config_args(parser: argparse.ArgumentParser) -> None:
    """CONFIG, overrides and --command: for the commands that run (or plan) another
    command's job (lr-find, sweep, estimate)."""
    parser.add_argument("config", help="YAML config of groundup train, pretrain or finetune")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=64")
    # dest "cmd": "command" is the subcommand's own dest
    parser.add_argument(
        "--command",
        dest="cmd",
        choices=["train", "pretrain", "finetune"],
        default=None,
        help="the config's command, when its keys do not tell",
    )


def _add_lr_find_args(parser: argparse.ArgumentParser) -> None:
    _add_job_config_args(parser)
    parser.add_argument("--min-lr", type=float, default=1e-7, help="the first step's LR")
    parser.add_argument("--max-lr", type=float, default=10.0, help="the last step's LR")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of the test")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="start torchrun with N processes on this machine (pretrain, finetune)",
    )


def _add_sweep_args(parser: argparse.ArgumentParser) -> None:
    from groundup.sweep.study import PRUNERS

    _add_job_config_args(parser)
    parser.add_argument(
        "--space",
        required=True,
        help="YAML search space of dotted keys, e.g. 'optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}'",
    )
    parser.add_argument(
        "--trials", type=int, default=12, help="trials to finish (a rerun goes on to N)"
    )
    parser.add_argument(
        "--pruner", choices=PRUNERS, default="median", help="stop weak trials early by val_loss"
    )
    parser.add_argument("--out", default=None, help="the sweep folder (default <run_dir>-sweep)")
    parser.add_argument(
        "--seed", type=int, default=None, help="the sampler's seed (default: the config's)"
    )
    parser.add_argument("--no-report", action="store_true", help="skip the trials' report.html")


def _add_estimate_args(parser: argparse.ArgumentParser) -> None:
    _add_job_config_args(parser)
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="plan for N ranks: the batch split and the DDP/FSDP2 memory per rank (the steps "
        "are timed on this one device)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="timed steps after one warm-up step (more while they take under a second)",
    )
    parser.add_argument("--no-timing", action="store_true", help="memory only: no timed steps")


def _add_config_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.source=my.txt")


def _add_config_reference_args(parser: argparse.ArgumentParser) -> None:
    from groundup.config_reference import COMMANDS as CONFIG_COMMANDS

    parser.add_argument(
        "action",
        choices=["show", "init"],
        help="show: every key with its type, default and meaning; init: a commented YAML of "
        "every default (groundup config init train > my.yaml)",
    )
    parser.add_argument("cmd", metavar="CMD", choices=list(CONFIG_COMMANDS), help="the command")
    parser.add_argument(
        "--format", choices=["text", "markdown"], default="text", help="show: the output format"
    )


# name -> (help, add_arguments, run); a plain dict like every registry
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "train": ("train a tabular/image model from a YAML config", _add_pretrain_args, _train),
    "tokenizer": (
        "train a tokenizer (BPE, char, bytes) on a corpus",
        _add_tokenizer_args,
        _tokenizer,
    ),
    "prepare": ("encode a corpus into memory-mapped token shards", _add_config_only, _prepare),
    "pretrain": ("pretrain a GPT from scratch on token shards", _add_distributed_args, _pretrain),
    "finetune": (
        "fine-tune a pretrained model (full or LoRA): causal LM, SFT, classification",
        _add_distributed_args,
        _finetune,
    ),
    "evaluate": EVALUATE_COMMAND,
    "predict": PREDICT_COMMAND,
    "chat": CHAT_COMMAND,
    "serve": SERVE_COMMAND,
    "generate": ("generate text from a pretrained model", _add_generate_args, _generate),
    "export": (
        "export a model: Hugging Face folder, GGUF file or PEFT adapter",
        _add_export_args,
        _export,
    ),
    "lr-find": (
        "the learning-rate range test on a config: a suggested optim.lr",
        _add_lr_find_args,
        _lr_find,
    ),
    "sweep": (
        "a hyper-parameter search on Optuna (TPE, pruning, resumable after a kill)",
        _add_sweep_args,
        _sweep,
    ),
    "estimate": (
        "memory and time of a run before it runs (refused when it cannot fit)",
        _add_estimate_args,
        _estimate,
    ),
    "report": (
        "write a run's HTML report (curves, diagnosis), or compare several runs",
        _add_report_args,
        _report,
    ),
    "config": (
        "show a command's config reference, or print its defaults as YAML",
        _add_config_reference_args,
        _config,
    ),
    "quickstart": (
        "run the whole lifecycle on embedded data (no arguments needed)",
        lambda p: (
            p.add_argument("--run-dir", default="runs/quickstart", help="where the runs go"),
            p.add_argument("overrides", nargs="*", help="dotted overrides for the quickstart"),
            p.add_argument(
                "--resume",
                action="store_true",
                help="keep finished stages, continue an interrupted one from its checkpoint",
            ),
        ),
        _quickstart,
    ),
}


def _resume_hint(args: argparse.Namespace, exc: TrainingInterrupted) -> str:
    """A command that continues the interrupted run, overrides and all (they are in the run's
    config.yaml, which `--resume RUN_DIR` reads)."""
    from pathlib import Path

    if args.command == "quickstart":
        return f"resume with: groundup quickstart --resume --run-dir {args.run_dir}"
    if args.command == "sweep":
        return "resume with: the same groundup sweep command (the study goes on where it stopped)"
    if exc.checkpoint is None:
        return "no run_dir, so nothing to resume"
    run_dir = Path(exc.checkpoint).parent.parent  # <run_dir>/checkpoints/step-N
    nproc = f" --nproc {args.nproc}" if getattr(args, "nproc", None) else ""
    return f"resume with: groundup {args.command} --resume {shlex.quote(str(run_dir))}{nproc}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groundup",
        description="Build, pretrain from scratch and fine-tune deep-learning models on PyTorch.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `groundup finetune c.yaml --overwrite optim.lr=1e-4`: overrides after a flag still count
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # --nproc re-runs this command under torchrun
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.version:
        from groundup import __version__

        print(f"groundup {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = args.handler(args)
    except TrainingInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank stopped at one step: one line
            print(f"{exc}; {_resume_hint(args, exc)}", file=sys.stderr)
        return exc.exit_code
    except GroundupError as exc:
        # one line, whatever a user-supplied name inside the message contains
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
