"""`groundup evaluate RUN [RUN ...] --tasks ...`: several runs scored on the same tasks, one
table and one JSON; bad task lists refused before any model is scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from groundup.cli import main
from tests.test_eval_tasks_training import corpus_task
from tests.test_pretrain import error_line, write_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A byte-level GPT after 30 steps and one after 6 steps, and a task in the corpus's words."""
    folder = tmp_path_factory.mktemp("evaluate-tasks")
    runs = []
    for name, steps in (("trained", 30), ("barely", 6)):
        config = write_config(
            folder,
            f"{name}.yaml",
            run_dir=str(folder / name),
            tokenizer={"kind": "bytes"},
            train={"max_steps": steps, "eval_every": 30},
        )
        assert main(["pretrain", str(config)]) == 0
        runs.append(folder / name)
    return runs[0], runs[1], corpus_task(folder)


def test_two_runs_on_builtin_and_file_tasks_give_one_table(two_runs, tmp_path, capsys) -> None:
    trained, barely, spec = two_runs
    out = tmp_path / "compare.json"
    argv = ["evaluate", str(trained), str(barely), "--tasks", f"stdlib-cloze,{spec}"]
    assert (
        main([*argv, "--limit", "4", "--out", str(out), "--task-predictions", str(tmp_path)]) == 0
    )
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("task"))
    assert "trained" in header and "barely" in header
    assert "mean centered" in printed
    results = json.loads(out.read_text())
    assert list(results) == ["trained", "barely"]
    for entry in results.values():
        assert set(entry["tasks"]) == {"stdlib-cloze", "corpus-mc"}
        assert entry["tasks"]["stdlib-cloze"]["n"] == 4
        assert entry["tasks"]["corpus-mc"]["baseline"] == pytest.approx(1 / 3)
    # the two models are different, and so are their log-likelihoods of the same items
    logliks = [r["tasks"]["stdlib-cloze"]["loglik"] for r in results.values()]
    assert logliks[0] != logliks[1]
    rows = (tmp_path / "trained" / "corpus-mc.jsonl").read_text().splitlines()
    assert len(rows) == 3


def test_one_run_saves_its_results_in_the_run(two_runs, capsys) -> None:
    trained, _, spec = two_runs
    assert main(["evaluate", str(trained), "--tasks", str(spec)]) == 0
    saved = json.loads((trained / "eval" / "tasks.json").read_text())
    assert saved["trained"]["tasks"]["corpus-mc"]["n"] == 3


def test_data_and_tasks_together(two_runs, tmp_path, capsys) -> None:
    trained, _, spec = two_runs
    text = tmp_path / "held.txt"
    text.write_text("the cat sat on the mat.\na dog ran to the river.\n", encoding="utf-8")
    assert main(["evaluate", str(trained), "--data", str(text), "--tasks", str(spec)]) == 0
    saved = json.loads((trained / "eval" / "held.json").read_text())
    # bytes tokenizer: every token is one byte of text, so bpb is the loss in bits
    assert saved["bpb"] == pytest.approx(saved["loss"] / 0.6931471805599453, rel=1e-6)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tasks", "stdlib-clozee"], "did you mean"),
        (["--tasks", "missing.yaml"], "missing.yaml"),
        ([], "nothing to evaluate"),
        (["--tasks", "stdlib-cloze", "--limit", "0"], "--limit"),
    ],
)
def test_bad_task_lists_fail_before_scoring(two_runs, capsys, args, expected) -> None:
    trained, _, _ = two_runs
    assert main(["evaluate", str(trained), *args]) == 2
    line = error_line(capsys)
    assert expected in line
    assert "== trained ==" not in capsys.readouterr().out  # no model was scored


def test_a_missing_second_run_fails_before_the_first_is_scored(two_runs, tmp_path, capsys) -> None:
    trained, _, spec = two_runs
    argv = ["evaluate", str(trained), str(tmp_path / "nope"), "--tasks", str(spec)]
    assert main(argv) == 2
    assert "nope" in error_line(capsys)
