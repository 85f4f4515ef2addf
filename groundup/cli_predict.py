"""The `groundup predict` command's arguments and handler, and the options it adds to
`groundup evaluate`; `cli.py` registers them (`COMMANDS["predict"] = PREDICT_COMMAND`)."""

from __future__ import annotations

import argparse
from typing import Any

PREDICT_HELP = "predict new rows, texts or prompts with a trained model (CSV or JSONL out)"


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="a run directory (train, pretrain, finetune), its model/ folder or a HF folder"
    )
    parser.add_argument(
        "--data",
        required=True,
        help="rows (CSV/TSV/Parquet/NumPy/JSONL) for a train run; JSONL/CSV of texts for a "
        "classifier, of prompts for a language model",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="the predictions file, .csv or .jsonl (default: DATA's name + .predictions.csv, "
        ".jsonl for language models)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--text-field", default=None, help="default: the one used in training")
    parser.add_argument(
        "--prompt-field", default=None, help="default: prompt (SFT runs: their trained field)"
    )
    parser.add_argument("--id-column", default=None, help="an input column to copy to the output")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    add_unseen_arg(parser)
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (weights_only) when there is no safetensors",
    )


def add_unseen_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unseen-category",
        choices=["error", "ignore"],
        default="error",
        help="train runs: a category training never saw is an error (default), or with ignore "
        "is encoded as the run encoded its test split (all-zero one-hot, -1 ordinal)",
    )


def add_evaluate_extras(parser: argparse.ArgumentParser) -> None:
    """The options predict adds to `groundup evaluate`."""
    parser.add_argument(
        "--predictions",
        default=None,
        help="also write per-row predictions (classifiers, train runs) or losses (language "
        "models) to this .csv or .jsonl file",
    )
    add_unseen_arg(parser)


def evaluate_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments `run_evaluate` takes from `add_evaluate_extras`'s options."""
    return {"predictions": args.predictions, "unseen_category": args.unseen_category}


def run_predict_command(args: argparse.Namespace) -> None:
    from groundup.jobs.predict import run_predict

    run_predict(
        args.run,
        args.data,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        allow_pickle=args.allow_pickle,
        text_field=args.text_field,
        prompt_field=args.prompt_field,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        unseen_category=args.unseen_category,
        id_column=args.id_column,
    )


# (help, add_arguments, run): the shape of an entry of cli.COMMANDS
PREDICT_COMMAND = (PREDICT_HELP, add_predict_args, run_predict_command)
