"""The `groundup evaluate` command: a data file (loss, bpb, classifier and train-run metrics)
and evaluation tasks (several runs, one table); `cli.py` registers `EVALUATE_COMMAND`."""

from __future__ import annotations

import argparse

from groundup.cli_predict import add_evaluate_extras, evaluate_extras

EVALUATE_HELP = "score models on a data file or on evaluation tasks (several runs: one table)"


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="+", help="run directories (pretrain/finetune/train) or model folders"
    )
    parser.add_argument(
        "--data",
        default=None,
        help="text file/folder (language models), SFT JSONL, or labelled CSV/JSONL "
        "(classifiers, train runs)",
    )
    parser.add_argument(
        "--task",
        choices=["causal_lm", "sft", "classification"],
        default=None,
        help="read the data as this task (e.g. sft to score a base model on an SFT file)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="evaluation tasks, comma-separated: built-in names (stdlib-describe,...), task "
        "spec files, or builtin for all of them",
    )
    parser.add_argument(
        "--harness-tasks",
        default=None,
        help="lm-evaluation-harness tasks, comma-separated: names or task YAML files "
        '(pip install "groundup[eval]")',
    )
    parser.add_argument("--limit", type=int, default=None, help="tasks: items per task")
    parser.add_argument("--num-fewshot", type=int, default=None, help="tasks: few-shot examples")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "fp64"], default="fp32", help="tasks: precision"
    )
    parser.add_argument("--out", default=None, help="tasks: write the results as JSON here")
    parser.add_argument(
        "--task-predictions",
        default=None,
        metavar="DIR",
        help="tasks: write each item's prediction (JSONL per run and task) into DIR",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--text-field", default=None, help="default: the one used in training")
    parser.add_argument("--label-field", default=None, help="default: the one used in training")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a Hugging Face pytorch_model.bin (weights_only) when there is no safetensors",
    )
    add_evaluate_extras(parser)


def run_evaluate_command(args: argparse.Namespace) -> None:
    from groundup.errors import ConfigError
    from groundup.jobs.evaluate import run_evaluate
    from groundup.jobs.evaluate_tasks import run_task_evaluation

    if args.data is None and not args.tasks and not args.harness_tasks:
        raise ConfigError(
            "nothing to evaluate: give --data FILE, --tasks (built-in names, spec files, or "
            "builtin) or --harness-tasks (lm-eval tasks)"
        )
    if args.data is not None:
        for run in args.run:
            run_evaluate(
                run,
                args.data,
                batch_size=args.batch_size,
                device=args.device,
                text_field=args.text_field,
                label_field=args.label_field,
                allow_pickle=args.allow_pickle,
                task=args.task,
                **evaluate_extras(args),
            )
    if args.tasks or args.harness_tasks:
        run_task_evaluation(
            args.run,
            args.tasks,
            args.harness_tasks,
            limit=args.limit,
            num_fewshot=args.num_fewshot,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            out=args.out,
            predictions=args.task_predictions,
            allow_pickle=args.allow_pickle,
        )


# (help, add_arguments, run): the shape of an entry of cli.COMMANDS
EVALUATE_COMMAND = (EVALUATE_HELP, add_evaluate_args, run_evaluate_command)
