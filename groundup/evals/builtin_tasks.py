"""Built-in evaluation tasks made from the standard library's docstrings: offline, on any Python.

Each task asks about the objects `groundup.data.heldout` holds out, so no built-in training
set has them. The items are each object's first docstring sentence:

- stdlib-describe (multiple choice): "json.loads:" -> its first sentence, against the first
  sentences of three other objects of the same topic (so the words alone do not give it away).
- stdlib-module (multiple choice): a first sentence -> the module it documents, against three
  modules of three other topics.
- stdlib-cloze (cloze, LAMBADA style): "name: a first sentence without its last word" -> that
  word (three letters or more); right when the model's greedy continuation is that word.
- stdlib-qa (generation): "Question: What does json.loads do?\\nAnswer:" -> the first sentence
  (or the whole opening prose); token F1 and exact match. Chat models are asked "What does
  json.loads do?", the prompt the SFT set `stdlib-qa` trains on.

What keeps them clean: a sentence that occurs in any docstring that is not held out (what an
SFT or docstring corpus may train on), in the `pydocs` pretraining corpus (as a whole, or
sharing a run of `NGRAM` words with it, GPT-3's contamination test), or under two held-out
names is dropped. Few-shot examples come from objects that are not held out. The order is a
SHA-256 hash of the name, so the items are the same on every run of a given Python version
(docstrings change between versions: the task's `source` names the version).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from groundup.data.heldout import is_heldout, object_name
from groundup.evals.tasks import Item, Task

MAX_ITEMS = 500  # per task: enough for a +-2% standard error, small enough to score quickly
FEWSHOT_POOL = 64  # few-shot examples each task keeps (from objects that are not held out)
N_CHOICES = 4
NGRAM = 13  # a run of this many words shared with the pretraining corpus counts as a leak
MIN_CHARS, MAX_CHARS, MIN_WORDS = 20, 200, 4  # a first sentence worth asking about
_SALT = "groundup/evals/stdlib/v1"

# The first sentence ends at . ! or ? before a capital letter (or the end), not after e.g./i.e.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[A-Z`'\"(]|$)")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})\.$")


@dataclass(frozen=True)
class Record:
    """A documented object the tasks can ask about."""

    name: str  # the qualified name the held-out rule keys on ("json.loads")
    shown: str  # how a prompt names it ("str.join", not "builtins.str.str.join")
    module: str  # the module (or "builtins.str") it is listed under
    topic: str  # its STDLIB_TOPICS label
    sentence: str  # the first sentence of its docstring
    text: str  # the docstring's opening prose (what stdlib-qa's SFT answers hold)


def normalize(text: str) -> str:
    """Lower case with whitespace collapsed: how texts are compared for leaks."""
    return " ".join(text.lower().split())


def first_sentence(text: str) -> str | None:
    """The text up to its first sentence end, or None when that is not a plain short sentence."""
    end = _SENTENCE_END.search(text)
    if end is None:
        return None
    sentence = text[: end.end()]
    ok = MIN_CHARS <= len(sentence) <= MAX_CHARS and len(sentence.split()) >= MIN_WORDS
    return sentence if ok else None


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join((_SALT, *parts)).encode()).hexdigest()


def _shown(modname: str, name: str) -> str:
    # builtins.str's members are named "builtins.str.str.join" by the SFT set: show "str.join"
    prefix = "builtins.str."
    return name[len(prefix) :] if modname == "builtins.str" else name


class _Leaks:
    """Where a sentence must not occur: the pretraining corpus and the training docstrings."""

    def __init__(self, corpus: Iterable[str], training_texts: Iterable[str]) -> None:
        self.corpus = normalize("\n".join(corpus))
        words = self.corpus.split()
        self.ngrams = {" ".join(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}
        self.training = "\n".join(normalize(t) for t in training_texts)

    def __call__(self, sentence: str) -> bool:
        norm = normalize(sentence)
        if norm in self.corpus or norm in self.training:
            return True
        words = norm.split()
        return any(
            " ".join(words[i : i + NGRAM]) in self.ngrams for i in range(len(words) - NGRAM + 1)
        )


def _pretraining_corpora() -> list[str]:
    """The built-in pretraining corpora's documents (pydocs); none when this Python lacks it."""
    from groundup.data.corpus import BUILTIN_CORPORA
    from groundup.errors import DependencyError

    docs: list[str] = []
    for build in BUILTIN_CORPORA.values():
        try:
            docs.extend(build())
        except DependencyError:  # pydoc_data split out by a distribution: nothing to leak into
            pass
    return docs


@functools.lru_cache(maxsize=1)
def records() -> tuple[tuple[Record, ...], tuple[Record, ...]]:
    """(held-out records the items come from, other records few-shot examples come from),
    each in hash order. Cached: reading every docstring takes ~2 s, and four tasks share it."""
    from groundup.data.text_builtin import _documented_objects

    named: dict[str, Record | None] = {}
    training_texts: list[str] = []
    for modname, topic, obj, text in _documented_objects():
        name = object_name(modname, obj)
        if name is None or not is_heldout(name):
            training_texts.append(text)  # nameless objects are not held out: train-side text
        if name is None:
            continue
        sentence = first_sentence(text)
        if name in named or sentence is None:
            named[name] = None  # a name listed twice is ambiguous; no plain sentence: unused
            continue
        named[name] = Record(name, _shown(modname, name), modname, topic, sentence, text)
    leaks = _Leaks(_pretraining_corpora(), training_texts)
    held, train = [], []
    for rec in named.values():
        if rec is None:
            continue
        if not is_heldout(rec.name):
            train.append(rec)
        elif not leaks(rec.sentence):
            held.append(rec)
    return _unique(held), _unique(train)


def _unique(recs: list[Record]) -> tuple[Record, ...]:
    """Records whose sentence no other record has (a repeated sentence has no single answer)."""
    count: dict[str, int] = {}
    for rec in recs:
        count[normalize(rec.sentence)] = count.get(normalize(rec.sentence), 0) + 1
    kept = [rec for rec in recs if count[normalize(rec.sentence)] == 1]
    return tuple(sorted(kept, key=lambda rec: _hash(rec.name)))


def _doc(rec: Record) -> dict[str, str]:
    return {"name": rec.name, "module": rec.module, "topic": rec.topic, "sentence": rec.sentence}


def _shuffled(name: str, options: list[str], gold: str) -> tuple[tuple[str, ...], int]:
    """The options in an order set by a hash, and the gold's index in it."""
    order = sorted(options, key=lambda option: _hash("order", name, option))  # not the pick hash
    return tuple(order), order.index(gold)


def _describe_items(recs: tuple[Record, ...]) -> list[Item]:
    items = []
    for rec in recs:
        same_topic = [o for o in recs if o.topic == rec.topic and o is not rec]
        others = (
            same_topic if len(same_topic) >= N_CHOICES - 1 else [o for o in recs if o is not rec]
        )
        others.sort(key=lambda o: _hash(rec.name, o.name))
        distractors = [o.sentence for o in others[: N_CHOICES - 1]]
        if len(distractors) < N_CHOICES - 1:
            continue  # too few records (a tiny pool): no fair choice
        choices, gold = _shuffled(rec.name, [rec.sentence, *distractors], rec.sentence)
        items.append(Item(f"{rec.shown}:", choices=choices, gold=gold, doc=_doc(rec)))
    return items


def _module_items(recs: tuple[Record, ...]) -> list[Item]:
    recs = tuple(r for r in recs if r.module != "builtins.str")  # a class, not a module
    modules_of: dict[str, set[str]] = {}
    for r in recs:
        modules_of.setdefault(r.topic, set()).add(r.module)
    items = []
    for rec in recs:
        topics = sorted((t for t in modules_of if t != rec.topic), key=lambda t: _hash(rec.name, t))
        if len(topics) < N_CHOICES - 1:
            continue
        distractors = [
            min(modules_of[t], key=lambda m: _hash(rec.name, m)) for t in topics[: N_CHOICES - 1]
        ]
        choices, gold = _shuffled(rec.name, [rec.module, *distractors], rec.module)
        context = f"{rec.sentence}\nThis is documented in the Python module"
        items.append(Item(context, choices=choices, gold=gold, doc=_doc(rec)))
    return items


def _cloze_items(recs: tuple[Record, ...]) -> list[Item]:
    items = []
    for rec in recs:
        match = _LAST_WORD.match(rec.sentence)
        if match is None or len(rec.sentence.split()) < MIN_WORDS + 1:
            continue  # no plain last word (a name, a number, code) or too little context
        head, word = match.groups()
        items.append(Item(f"{rec.shown}: {head}", references=(word,), doc=_doc(rec)))
    return items


def _qa_items(recs: tuple[Record, ...]) -> list[Item]:
    items = []
    for rec in recs:
        refs = (rec.sentence,) if rec.text == rec.sentence else (rec.sentence, rec.text)
        items.append(
            Item(
                f"Question: What does {rec.shown} do?\nAnswer:",
                references=refs,
                chat_prompt=f"What does {rec.name} do?",  # the SFT set's wording, to the letter
                doc=_doc(rec),
            )
        )
    return items


def _builtin(
    name: str, kind: str, make: Callable[[tuple[Record, ...]], list[Item]], **options
) -> Callable[[], Task]:
    def build() -> Task:
        held, train = records()
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return Task(
            name=name,
            kind=kind,
            items=make(held)[:MAX_ITEMS],
            fewshot=make(train[: FEWSHOT_POOL * 2])[:FEWSHOT_POOL],
            source=f"builtin (Python {version} docstrings)",
            **options,
        )

    build.__doc__ = f"The built-in task '{name}' ({kind})."
    return build


BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    "stdlib-describe": _builtin("stdlib-describe", "multiple_choice", _describe_items),
    "stdlib-module": _builtin("stdlib-module", "multiple_choice", _module_items),
    "stdlib-cloze": _builtin("stdlib-cloze", "cloze", _cloze_items),
    "stdlib-qa": _builtin("stdlib-qa", "generation", _qa_items, until=("\n",), max_gen_toks=48),
}
