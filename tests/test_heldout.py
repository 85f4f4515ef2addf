"""The held-out rule, and the promise it makes: no built-in training set holds an evaluation item.

Every built-in task's item must be absent from the built-in SFT set (`stdlib-qa`, train and
val) and from the built-in pretraining corpora (`pydocs`), and every held-out object's name
and docstring must be absent from the SFT set.
"""

from __future__ import annotations

import pytest

from groundup.data.corpus import BUILTIN_CORPORA, Corpus
from groundup.data.heldout import HELDOUT_FRACTION, is_heldout, object_name
from groundup.data.text_builtin import _dedup_key, _documented_objects, load_sft_dataset
from groundup.evals.builtin_tasks import BUILTIN_TASKS, NGRAM

SFT_PROMPT = "What does {} do?"


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def documented() -> list[tuple[str, str]]:
    """(name, text) of every named documented object."""
    out = []
    for modname, _, obj, text in _documented_objects():
        name = object_name(modname, obj)
        if name is not None:
            out.append((name, text))
    return out


@pytest.fixture(scope="module")
def sft() -> list[dict[str, str]]:
    sets = load_sft_dataset("stdlib-qa")
    return sets["train"] + sets["val"]


@pytest.fixture(scope="module")
def tasks():
    return {name: build() for name, build in BUILTIN_TASKS.items()}


def test_rule_is_a_stable_hash_holding_out_about_15_percent(documented):
    names = sorted({name for name, _ in documented})
    held = [n for n in names if is_heldout(n)]
    assert abs(len(held) / len(names) - HELDOUT_FRACTION) < 0.03  # ~3,800 names
    synthetic = [f"mod{i}.func{i % 7}" for i in range(20_000)]
    assert abs(sum(map(is_heldout, synthetic)) / len(synthetic) - HELDOUT_FRACTION) < 0.01
    # Golden values of the rule: if these change, models trained before read the new test items.
    assert [is_heldout(n) for n in ("json.loads", "json.dumps", "os.path.join")] == [
        True,
        False,
        False,
    ]
    assert object_name("json", __import__("json").loads) == "json.loads"
    assert object_name("builtins", property(lambda self: 0)) is None


def test_sft_set_holds_no_heldout_object(documented, sft):
    prompts = {row["prompt"] for row in sft}
    responses = {_dedup_key(row["response"]) for row in sft}
    held = [(name, text) for name, text in documented if is_heldout(name)]
    assert len(held) > 300
    assert not [n for n, _ in held if SFT_PROMPT.format(n) in prompts]
    assert not [n for n, t in held if _dedup_key(t) in responses]
    # and nothing else was lost: every named object that is not held out and whose text is
    # unambiguous is still asked about
    assert all(not is_heldout(row["prompt"][10:-4]) for row in sft)
    assert len(sft) > 2500


def test_no_builtin_task_item_is_in_the_sft_set_or_the_pretraining_corpora(tasks, sft):
    corpora = [normalize("\n".join(Corpus(name))) for name in BUILTIN_CORPORA]
    grams = {
        " ".join(words[i : i + NGRAM])
        for words in (c.split() for c in corpora)
        for i in range(len(words) - NGRAM + 1)
    }
    prompts = {row["prompt"] for row in sft}
    responses = "\n".join(normalize(row["response"]) for row in sft)
    for task_name, task in tasks.items():
        for item in task.items:
            sentence = normalize(item.doc["sentence"])
            # the sentence is what the item asks about: its words are all in the scored text
            scored = normalize(f"{item.context} {' '.join(item.choices or item.references)}")
            assert set(sentence.replace(".", " ").split()) <= set(scored.replace(".", " ").split())
            assert SFT_PROMPT.format(item.doc["name"]) not in prompts, (task_name, item)
            assert sentence not in responses, (task_name, item)
            for corpus in corpora:
                assert sentence not in corpus, (task_name, item)
            words = sentence.split()
            shared = [
                " ".join(words[i : i + NGRAM])
                for i in range(len(words) - NGRAM + 1)
                if " ".join(words[i : i + NGRAM]) in grams
            ]
            assert not shared, (task_name, item, shared)


def test_the_docstring_corpus_leaves_the_heldout_objects_out(documented):
    docs = list(Corpus("stdlib-docs"))
    named = {doc.split(": ", 1)[0] for doc in docs}
    held = {name for name, _ in documented if is_heldout(name)}
    shown = {n.removeprefix("builtins.str.") for n in held}  # how str's methods are named
    assert not (held | shown) & named
    kept = {name for name, _ in documented if not is_heldout(name)}
    assert len(named & {n.removeprefix("builtins.str.") for n in kept}) > 2500
