"""The `groundup` command: parses arguments, then calls the library. Nothing else lives here.

Every command takes a YAML config and dotted overrides (`optim.lr=3e-4`). User mistakes
(`GroundupError`) print one line and exit with code 2; anything else is a bug and keeps its
traceback (exit code 1). SIGINT/SIGTERM during training save a checkpoint and exit with 130/143
and the command that resumes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from groundup.errors import GroundupError, TrainingInterrupted


def _train(args: argparse.Namespace) -> None:
    from groundup.jobs.train import run_train

    run_train(args.config, args.overrides, overwrite=args.overwrite, resume=args.resume)


def _quickstart(args: argparse.Namespace) -> None:
    from groundup.jobs.quickstart import run_quickstart

    run_quickstart(run_dir=args.run_dir, overrides=args.overrides)


def _tokenizer(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import run_tokenizer

    run_tokenizer(args.config, args.overrides, out=args.out)


def _prepare(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import run_prepare

    run_prepare(args.config, args.overrides)


def _pretrain(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import run_pretrain

    run_pretrain(args.config, args.overrides, overwrite=args.overwrite, resume=args.resume)


def _generate(args: argparse.Namespace) -> None:
    from groundup.jobs.pretrain import SampleConfig, load_model_dir, sample_text
    from groundup.train.trainer import resolve_device

    model, tokenizer = load_model_dir(args.run, device=resolve_device(args.device))
    sample = SampleConfig(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    sample_text(model, tokenizer, sample, stream=True)


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
    _add_config_args(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in <run_dir>/checkpoints",
    )


def _add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory of groundup pretrain, or its model/ folder")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a run directory that holds another run"
    )


def _add_config_only(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.source=my.txt")


# name -> (help, add_arguments, run); checked at import like every registry
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {
    "train": ("train a tabular/image model from a YAML config", _add_pretrain_args, _train),
    "tokenizer": (
        "train a tokenizer (BPE, char, bytes) on a corpus",
        _add_tokenizer_args,
        _tokenizer,
    ),
    "prepare": ("encode a corpus into memory-mapped token shards", _add_config_only, _prepare),
    "pretrain": ("pretrain a GPT from scratch on token shards", _add_pretrain_args, _pretrain),
    "generate": ("generate text from a pretrained model", _add_generate_args, _generate),
    "quickstart": (
        "run the whole lifecycle on embedded data (no arguments needed)",
        lambda p: (
            p.add_argument("--run-dir", default="runs/quickstart", help="where the runs go"),
            p.add_argument("overrides", nargs="*", help="dotted overrides for the quickstart"),
        ),
        _quickstart,
    ),
}


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
    args = parser.parse_args(argv)
    if args.version:
        from groundup import __version__

        print(f"groundup {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except TrainingInterrupted as exc:
        resume = f"groundup {args.command} {getattr(args, 'config', '')} --resume".replace(
            "  ", " "
        )
        print(f"{exc}; resume with: {resume}", file=sys.stderr)
        return exc.exit_code
    except GroundupError as exc:
        # one line, whatever a user-supplied name inside the message contains
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
