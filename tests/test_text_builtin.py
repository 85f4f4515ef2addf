"""The built-in text-classification dataset: deterministic, leak-free splits, valid files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest

from groundup.data import text_builtin
from groundup.data.text_builtin import (
    MAX_PER_CLASS,
    STDLIB_TOPICS,
    TEXT_DATASETS,
    clean_docstring,
    load_text_dataset,
    near_duplicate_groups,
    write_text_dataset,
)
from groundup.errors import ConfigError, DataError

NAME = "stdlib-topics"


@pytest.fixture(scope="module")
def splits() -> dict[str, list[tuple[str, str]]]:
    return load_text_dataset(NAME)


def _digest(splits: dict[str, list[tuple[str, str]]]) -> str:
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()


def test_registry_and_case_insensitive_name(splits):
    assert list(TEXT_DATASETS) == [NAME]
    assert load_text_dataset("STDLIB-Topics") == splits


def test_deterministic_in_process_and_across_hash_seeds(splits):
    assert load_text_dataset(NAME) == splits
    # Set order depends on PYTHONHASHSEED: a fresh process with another seed must agree.
    code = (
        "import hashlib, json; from groundup.data.text_builtin import load_text_dataset; "
        "print(hashlib.sha256(json.dumps(load_text_dataset('stdlib-topics'), "
        "sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == _digest(splits)


def test_splits_are_disjoint_by_text_and_have_no_duplicates(splits):
    texts = {name: [t for t, _ in rows] for name, rows in splits.items()}
    for rows in texts.values():
        assert len(rows) == len(set(rows))
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["val"]) & set(texts["test"])


def test_labels_sizes_and_proportions(splits):
    labels = set(STDLIB_TOPICS)
    assert len(labels) == 9
    total = Counter()
    for name, rows in splits.items():
        counts = Counter(label for _, label in rows)
        assert set(counts) == labels, name  # every class in every split
        total.update(counts)
    assert all(n <= MAX_PER_CLASS for n in total.values())
    n = sum(total.values())
    assert 1500 <= n <= 5000
    # 70/10/20 by class, give or take whole near-duplicate groups
    assert abs(len(splits["test"]) / n - 0.2) < 0.03
    assert abs(len(splits["val"]) / n - 0.1) < 0.03


def test_texts_are_clean_one_line_prose(splits):
    for rows in splits.values():
        for text, _ in rows:
            assert 20 <= len(text) <= 600
            assert "\n" not in text and text == text.strip()
            assert not text.startswith(">>>")


def test_no_near_duplicates_across_splits(splits):
    # Grouping all texts of a label must never put one group in two splits.
    for label in STDLIB_TOPICS:
        where = {t: name for name, rows in splits.items() for t, lab in rows if lab == label}
        for group in near_duplicate_groups(sorted(where)):
            assert len({where[t] for t in group}) == 1, group


def test_clean_docstring_drops_signatures_and_code():
    doc = """accept() -> (socket object, address info)

        Wait for an incoming connection.  Return a new
        socket representing the connection.

          sep
            The separator.
        """
    assert clean_docstring(doc) == (
        "Wait for an incoming connection. Return a new socket representing the connection."
    )
    assert clean_docstring("D.count(value) -- return number of occurrences") == (
        "return number of occurrences"
    )
    assert clean_docstring("First part.\n\n>>> f(1)\n2\n") == "First part."
    long = " ".join(["word"] * 200)
    assert len(clean_docstring(long)) <= 600


def test_near_duplicate_groups_join_siblings_only():
    groups = near_duplicate_groups(
        [
            "Return the hyperbolic sine of x.",
            "Return the hyperbolic sine of z.",
            "Open a socket connection to a remote host.",
        ]
    )
    assert sorted(len(g) for g in groups) == [1, 2]


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'stdlib-topics'"):
        load_text_dataset("stdlib-topic")


def test_stripped_docstrings_raise_a_clear_error(monkeypatch):
    # `python -OO` sets sys.flags.optimize = 2; faked here to spare a slow subprocess.
    fake_sys = SimpleNamespace(flags=SimpleNamespace(optimize=2))
    monkeypatch.setattr(text_builtin, "sys", fake_sys)
    with pytest.raises(DataError, match="-OO"):
        load_text_dataset(NAME)


def test_write_text_dataset_writes_jsonl(tmp_path, splits):
    paths = write_text_dataset(NAME, tmp_path / "data")
    assert sorted(paths) == ["test", "train", "val"]
    for name, path in paths.items():
        assert path.name == f"{name}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        assert all(set(row) == {"text", "label"} for row in rows)
        assert [(r["text"], r["label"]) for r in rows] == splits[name]


def test_stdlib_qa_pairs_are_stable_disjoint_and_named() -> None:
    from groundup.data.text_builtin import load_sft_dataset

    first, again = load_sft_dataset("stdlib-qa"), load_sft_dataset("STDLIB-QA")
    assert first == again
    assert 2000 < len(first["train"]) and 100 < len(first["val"]) < len(first["train"])
    prompts = [r["prompt"] for split in first.values() for r in split]
    assert len(prompts) == len(set(prompts))  # each name asked once, in one split
    train_answers = {r["response"] for r in first["train"]}
    assert not train_answers & {r["response"] for r in first["val"]}
    row = next(
        r for r in first["train"] + first["val"] if r["prompt"] == "What does json.dumps do?"
    )
    assert "JSON" in row["response"]
    with pytest.raises(ConfigError, match="did you mean 'stdlib-qa'"):
        load_sft_dataset("stdlib-q")


def test_methods_a_library_patches_into_stdlib_classes_are_left_out(monkeypatch):
    """transformers adds `logging.Logger.warning_once` when imported: the dataset must be what
    the standard library holds, whatever else the process imported before."""
    import logging

    from groundup.data.text_builtin import collect_stdlib_docstrings

    before = collect_stdlib_docstrings()

    def warning_twice(self, msg):
        """Log a warning, then log it a second time for emphasis, every single time it is called."""

    warning_twice.__module__ = "somelibrary.logging_utils"
    monkeypatch.setattr(logging.Logger, "warning_twice", warning_twice, raising=False)
    assert collect_stdlib_docstrings() == before
