"""The arguments and handlers of `groundup chat` and `groundup serve`; `cli.py` registers them
(`COMMANDS["chat"] = CHAT_COMMAND`, `COMMANDS["serve"] = SERVE_COMMAND`)."""

from __future__ import annotations

import argparse
import os

CHAT_HELP = "talk to a model in the terminal (SFT runs in their chat template), streamed"
SERVE_HELP = "serve a model over an OpenAI-compatible HTTP API (FastAPI + uvicorn)"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", help="a run directory (pretrain, finetune), its model/ folder or a HF folder"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (weights_only) when there is no safetensors",
    )


def add_chat_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("--system", default=None, help="the system prompt (SFT runs)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="a reply's tokens at most")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument("--top-p", type=float, default=None)
    add_repetition_args(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="the first reply's seed (the n-th reply: seed + n)"
    )


def add_repetition_args(parser: argparse.ArgumentParser) -> None:
    """--repetition-penalty and --no-repeat-ngram-size (also for `groundup generate`)."""
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the text less likely (1.1-1.3 is usual); 1: off",
    )
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=0,
        help="n > 0: no n tokens in a row appear twice (prompt included); 0: off",
    )


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every one)"
    )
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GROUNDUP_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $GROUNDUP_API_KEY; unset: none)",
    )
    parser.add_argument(
        "--model-name", default=None, help="the model id clients send (default: the run's name)"
    )
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="uvicorn's logging (info: one line a request)",
    )


def run_chat_command(args: argparse.Namespace) -> None:
    from groundup.jobs.chat import run_chat
    from groundup.serve.engine import Options

    options = Options(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        seed=args.seed,
    )
    run_chat(
        args.run, options, system=args.system, device=args.device, allow_pickle=args.allow_pickle
    )


def run_serve_command(args: argparse.Namespace) -> None:
    from groundup.jobs.serve import run_serve

    run_serve(
        args.run,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        device=args.device,
        allow_pickle=args.allow_pickle,
        model_name=args.model_name,
        log_level=args.log_level,
    )


# (help, add_arguments, run): the shape of an entry of cli.COMMANDS
CHAT_COMMAND = (CHAT_HELP, add_chat_args, run_chat_command)
SERVE_COMMAND = (SERVE_HELP, add_serve_args, run_serve_command)
