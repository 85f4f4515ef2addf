"""`train.eval_tasks`: tasks scored at each evaluation of a pretraining run, in its records,
without changing what is trained; bad task lists refused before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groundup.cli import main
from tests.test_pretrain import error_line, read_metrics, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def corpus_task(folder: Path) -> Path:
    """A 3-choice task in the tiny corpus's own words (a char tokenizer covers it)."""
    rows = [
        {"context": "the cat sat on", "choices": ["the mat.", "the river.", "a dog."], "answer": 0},
        {"context": "a dog ran to", "choices": ["the garden wall.", "jumped", "sat"], "answer": 0},
        {"context": "my friend looked at", "choices": ["the red door.", "on", "a"], "answer": 0},
    ]
    data = folder / "corpus-mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = folder / "corpus-mc.yaml"
    spec.write_text(f"name: corpus-mc\nkind: multiple_choice\ndata: {data.name}\n", "utf-8")
    return spec


def test_eval_tasks_join_the_evaluation_records_and_change_no_training(tmp_path) -> None:
    spec = corpus_task(tmp_path)
    tasks = write_config(
        tmp_path,
        "tasks.yaml",
        run_dir=str(tmp_path / "tasks"),
        train={"eval_tasks": [str(spec)], "max_steps": 20},
    )
    plain = write_config(
        tmp_path, "plain.yaml", run_dir=str(tmp_path / "plain"), train={"max_steps": 20}
    )
    assert main(["pretrain", str(plain)]) == 0
    assert main(["pretrain", str(tasks)]) == 0
    with_tasks = read_metrics(tmp_path / "tasks")
    without = read_metrics(tmp_path / "plain")
    evals = [r for r in with_tasks if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20]
    for r in evals:
        assert 0.0 <= r["val_corpus-mc_acc_norm"] <= 1.0
        # one task: the mean centered score is its own, (score - 1/3) / (1 - 1/3)
        assert r["val_tasks_centered"] == pytest.approx((r["val_corpus-mc_acc_norm"] - 1 / 3) * 1.5)
    # scoring is greedy and in eval mode: the training records are the same, value for value
    losses = [(r["step"], r["loss"]) for r in with_tasks if r["event"] == "train"]
    assert losses == [(r["step"], r["loss"]) for r in without if r["event"] == "train"]
    assert [r["val_loss"] for r in evals] == [
        r["val_loss"] for r in without if r["event"] == "eval"
    ]


def test_a_task_the_char_tokenizer_cannot_encode_stops_before_training(tmp_path, capsys) -> None:
    config = write_config(tmp_path, train={"eval_tasks": ["stdlib-describe"]})
    assert main(["pretrain", str(config)]) == 2
    line = error_line(capsys)
    assert "stdlib-describe" in line and "byte_fallback" in line
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def test_an_unknown_task_is_refused_before_the_run_folder(tmp_path, capsys) -> None:
    config = write_config(tmp_path, train={"eval_tasks": ["stdlib-describ"]})
    assert main(["pretrain", str(config)]) == 2
    line = error_line(capsys)
    assert "stdlib-describ" in line and "did you mean" in line and "stdlib-describe" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["stdlib-qa", [""], ["  "]])
def test_eval_tasks_must_be_a_list_of_names(tmp_path, capsys, value) -> None:
    config = write_config(tmp_path, train={"eval_tasks": value})
    assert main(["pretrain", str(config)]) == 2
    line = error_line(capsys)
    assert "train.eval_tasks" in line and "must be a list" in line


def test_groundup_train_refuses_eval_tasks(tmp_path, capsys) -> None:
    import yaml

    config = tmp_path / "digits.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "digits"),
                "data": {"dataset": "digits"},
                "train": {"epochs": 1, "eval_tasks": ["stdlib-qa"]},
            }
        ),
        encoding="utf-8",
    )
    assert main(["train", str(config)]) == 2
    assert "train.eval_tasks scores language models" in error_line(capsys)
