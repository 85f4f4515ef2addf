"""Built-in text-classification datasets, built from text that ships with every Python.

"stdlib-topics": the opening prose of a standard-library docstring (a function, class, method
or property) -> the topic area of the module it lives in, 9 classes (see `STDLIB_TOPICS`).
It is real English written by people, the labels come from where the code lives (no
hand-labelling), and the task needs the meaning of words ("a TCP connection", "the
arithmetic mean", "a temporary directory"): a fair test of a pretrained encoder against the
same architecture trained from scratch.

Why not `pydoc_data.topics`: it holds only 79 language-reference topics (syntax, data
model), so examples would be paragraphs of the same few long documents, their labels would
have to be hand-made groupings of those topics, and it is already the default pretraining
corpus (`groundup.data.corpus`): a model pretrained on it would have read the test texts.

How it is built, and the traps it avoids:
- Only documented public modules of a fixed list, imported defensively: one that fails to
  import (platform-specific, a Python built without it) is skipped.
- Objects are taken from a module's `__all__` (or public names), plus the attributes a
  class defines itself (`vars(cls)`): inherited docstrings never appear twice. An object
  whose home module belongs to another topic (a re-export) is left to that topic; one whose
  home is outside the standard library (a tool patched it in) is skipped.
- Signature lines ("accept() -> (socket object, address info)") are dropped: not prose.
  The text is the first paragraph, plus following prose paragraphs while it stays <= 600
  characters; whitespace is collapsed to one line. Texts under 20 characters are dropped.
- Duplicates: a text (compared lower-cased, letters and digits only) that occurs under two
  topics ("Return repr(self).") is dropped from both; one under a single topic is kept once.
  So no text is in two splits.
- Near-duplicates (word-set Jaccard >= 0.7 within a topic: "the sine of x" in math, "of z"
  in cmath) are grouped, and a group goes to one split whole.
- Each topic keeps at most `MAX_PER_CLASS` examples, and the split is stratified 70/10/20,
  ordered by a SHA-256 hash of the text: deterministic for a given Python version and
  platform (docstrings change between versions), independent of PYTHONHASHSEED, and with
  no random generator involved.
- `python -OO` strips docstrings: that raises DataError instead of an empty dataset.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from groundup.data.heldout import is_heldout, object_name
from groundup.errors import DataError
from groundup.registry import lookup

Splits = dict[str, list[tuple[str, str]]]

# label -> the modules whose docstrings carry it. A module sits under one label only.
STDLIB_TOPICS: dict[str, tuple[str, ...]] = {
    "concurrency": (
        "_thread", "asyncio", "concurrent.futures", "contextvars", "multiprocessing",
        "multiprocessing.connection", "multiprocessing.context", "multiprocessing.managers",
        "multiprocessing.pool", "multiprocessing.process", "multiprocessing.shared_memory",
        "queue", "sched", "signal", "subprocess", "threading",
    ),
    "data_formats": (
        "base64", "binascii", "bz2", "configparser", "csv", "dbm", "gzip", "json", "lzma",
        "marshal", "netrc", "pickle", "plistlib", "quopri", "shelve", "sqlite3", "struct",
        "tarfile", "tomllib", "xml.dom.minidom", "xml.etree.ElementTree", "xml.sax", "zipfile",
        "zlib",
    ),
    "data_structures": (
        "array", "bisect", "collections", "collections.abc", "copy", "dataclasses", "enum",
        "functools", "graphlib", "heapq", "itertools", "pprint", "reprlib", "weakref",
    ),
    "dates_time": ("calendar", "datetime", "time", "zoneinfo"),
    "dev_tools": (
        "abc", "argparse", "ast", "atexit", "bdb", "cProfile", "code", "codeop", "contextlib",
        "dis", "doctest", "faulthandler", "gc", "importlib", "importlib.metadata",
        "importlib.resources", "inspect", "logging", "logging.handlers", "pdb", "pkgutil",
        "pstats", "symtable", "sys", "timeit", "trace", "traceback", "tracemalloc", "types",
        "typing", "unittest", "unittest.mock", "warnings", "zipimport",
    ),
    "files_os": (
        "filecmp", "fileinput", "fnmatch", "glob", "io", "linecache", "mmap", "os", "os.path",
        "pathlib", "shutil", "stat", "tempfile",
    ),
    "math_numbers": (
        "cmath", "decimal", "fractions", "math", "numbers", "random", "statistics",
    ),
    "networking_web": (
        "email", "email.charset", "email.generator", "email.header", "email.headerregistry",
        "email.message", "email.parser", "email.policy", "email.utils", "ftplib",
        "http.client", "http.cookiejar", "http.cookies", "http.server", "imaplib", "ipaddress",
        "mimetypes", "poplib", "select", "selectors", "smtplib", "socket", "socketserver",
        "ssl", "urllib.parse", "urllib.request", "urllib.robotparser", "webbrowser",
        "wsgiref.handlers", "wsgiref.headers", "wsgiref.util", "xmlrpc.client",
        "xmlrpc.server",
    ),
    "text": (
        "builtins.str", "codecs", "difflib", "gettext", "html", "html.parser", "locale", "re",
        "shlex", "string", "textwrap", "unicodedata",
    ),
}  # fmt: skip
MAX_PER_CLASS = 400
MIN_CHARS, MAX_CHARS = 20, 600
SPLIT_FRACTIONS = {"test": 0.2, "val": 0.1}  # the rest is train
NEAR_DUPLICATE = 0.7  # word-set Jaccard above which two texts stay in the same split
_SALT = "groundup/stdlib-topics/v1"  # part of the split hash: changing it reshuffles splits

# Platform implementation modules that public modules re-export (os.stat lives in posix).
_IMPLEMENTATIONS = frozenset({"posix", "nt", "posixpath", "ntpath", "genericpath"})
# "name(args)" or "name(args) -> result", with an optional dotted prefix.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
# "D.count(value) -- return number of ..." on the same line as the prose.
_INLINE_SIGNATURE = re.compile(r"^[\w.]+\([^()]*\)( -> [^-]+?)?( --|:) ")


def _module_label() -> dict[str, str]:
    return {mod: label for label, mods in STDLIB_TOPICS.items() for mod in mods}


def _import(name: str) -> object | None:
    """The module (or `builtins.str`), or None when this Python or platform lacks it."""
    if name == "builtins.str":
        return str
    try:
        with warnings.catch_warnings():  # some modules warn on import (deprecations)
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # ImportError, or an OSError from a missing system library
        return None


def _own_doc(obj: object) -> str | None:
    """The docstring an object carries itself (class attributes: functions, properties)."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    documented = (
        inspect.isclass(obj)
        or inspect.isroutine(obj)
        or isinstance(obj, property)
        or inspect.isgetsetdescriptor(obj)
        or inspect.ismemberdescriptor(obj)
    )
    # Trap: getattr(3, "__doc__") is int's docstring; only these kinds document themselves.
    doc = getattr(obj, "__doc__", None) if documented else None
    compiled = _code_doc(obj) if inspect.isfunction(obj) else None
    if (
        compiled is not None
        and isinstance(doc, str)
        and _opening(compiled) not in " ".join(doc.split())
    ):
        # Trap: a library may replace a stdlib function's __doc__ when imported (keras sets
        # collections.abc.Mapping.get's); the code object keeps the docstring it was defined
        # with. The stdlib's own rewrites (email.policy's extended docstrings) keep its text.
        doc = compiled
    return doc if isinstance(doc, str) else None


def _opening(doc: str) -> str:
    """The first words of a docstring, as a stdlib rewrite of it keeps them."""
    return " ".join(doc.strip().lstrip("+").split()[:6])


def _code_doc(fn: types.FunctionType) -> str | None:
    """The docstring compiled into a Python function (the first constant of its code)."""
    consts = fn.__code__.co_consts
    return consts[0] if consts and isinstance(consts[0], str) else None


def _members(owner: object, keep: Callable[[object], bool]) -> Iterator[object]:
    """A module's public objects that `keep` accepts, then the attributes each class defines."""
    if inspect.isclass(owner):  # builtins.str: its own methods only
        yield from (vars(owner)[n] for n in sorted(vars(owner)) if not n.startswith("_"))
        return
    names = getattr(owner, "__all__", None) or [n for n in dir(owner) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(owner, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not keep(obj):
            continue  # constants, submodules, instances (their __doc__ is their type's)
        yield obj
        if inspect.isclass(obj):  # trap: only a kept class's members (not `str` re-exported)
            for attr, value in sorted(vars(obj).items()):
                if (attr == "__init__" or not attr.startswith("_")) and _from_stdlib(value):
                    yield value


def _from_stdlib(obj: object) -> bool:
    """False for a method a library patched into a stdlib class (transformers adds
    `logging.Logger.warning_once` when imported): the data must not depend on what else the
    process imported."""
    target = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    home = getattr(target, "__module__", None)
    return not isinstance(home, str) or home.split(".")[0] in sys.stdlib_module_names


def _at_home(obj: object, modname: str, label: str, module_label: dict[str, str]) -> bool:
    """False for an object re-exported from a module outside this topic (counted there)."""
    home = getattr(obj, "__module__", None)
    if isinstance(home, str) and home.split(".")[0] not in sys.stdlib_module_names:
        return False  # trap: a tool patched it in (pytest replaces pdb.set_trace)
    if not isinstance(home, str) or home.startswith("_") or home in _IMPLEMENTATIONS:
        return True  # no home, or a private/C implementation module (_io, posix, _socket)
    if home.split(".")[0] == modname.split(".")[0]:
        return True
    return module_label.get(home) == label


def clean_docstring(doc: str) -> str:
    """The opening prose of a docstring on one line: signature lines and code dropped."""
    lines = inspect.cleandoc(doc).splitlines()
    while lines and (_SIGNATURE.match(lines[0].strip()) or lines[0].strip() in ("", "--")):
        lines.pop(0)
    paragraphs = re.split(r"\n\s*\n", "\n".join(lines))
    text = ""
    for i, para in enumerate(paragraphs):
        prose = not any(ln.startswith((" ", "\t", ">>>")) for ln in para.splitlines())
        para = " ".join(para.split())
        if i and (not prose or len(text) + 1 + len(para) > MAX_CHARS):
            break
        text = f"{text} {para}" if text else para
    text = _INLINE_SIGNATURE.sub("", text)
    if len(text) > MAX_CHARS:  # a long first paragraph: cut at the last word that fits
        text = text[: MAX_CHARS + 1].rsplit(" ", 1)[0]
    return text


def _dedup_key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _hash(text: str) -> str:
    return hashlib.sha256(f"{_SALT}\n{text}".encode()).hexdigest()


def _documented_objects() -> Iterator[tuple[str, str, object, str]]:
    """(module name, label, object, cleaned docstring) for each documented public object."""
    if sys.flags.optimize >= 2:
        raise DataError(
            "this Python runs with -OO, which strips docstrings, so the stdlib datasets would "
            "be empty; run without -OO (or unset PYTHONOPTIMIZE)"
        )
    module_label = _module_label()
    seen: dict[int, object] = {}  # objects already taken: one object, one example
    for label, modules in sorted(STDLIB_TOPICS.items()):
        for modname in modules:
            owner = _import(modname)
            if owner is None:
                continue
            keep = functools.partial(
                _at_home, modname=modname, label=label, module_label=module_label
            )
            for obj in _members(owner, keep):
                if id(obj) in seen:
                    continue
                # Trap: ids of freed objects are reused; keep every seen object alive.
                seen[id(obj)] = obj
                doc = _own_doc(obj)
                text = clean_docstring(doc) if doc else ""
                if len(text) >= MIN_CHARS:
                    yield modname, label, obj, text


def collect_stdlib_docstrings() -> list[tuple[str, str]]:
    """Every (text, label) pair before balancing and splitting, sorted; duplicates removed."""
    labels_of: dict[str, set[str]] = {}
    text_of: dict[str, str] = {}
    for _, label, _, text in _documented_objects():
        key = _dedup_key(text)
        labels_of.setdefault(key, set()).add(label)
        text_of.setdefault(key, text)  # modules run in a fixed order: stable pick
    pairs = [(text_of[k], next(iter(ls))) for k, ls in labels_of.items() if len(ls) == 1]
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def near_duplicate_groups(texts: list[str], threshold: float = NEAR_DUPLICATE) -> list[list[str]]:
    """Texts grouped so that any two with word-set Jaccard >= threshold share a group.

    Sibling docstrings ("Return the hyperbolic sine of x." in math, "... of z." in cmath)
    are not duplicates, but one in train and one in test would be a near-copy: each group
    goes to a single split. Words of one character are ignored (x, z, 0, 1).
    """
    words = [frozenset(w for w in re.findall(r"[a-z0-9]+", t.lower()) if len(w) > 1) for t in texts]
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(words):  # O(n^2) on <= MAX_PER_CLASS texts: ~0.3 s in all
        for j in range(i):
            b = words[j]
            if min(len(a), len(b)) < threshold * max(len(a), len(b)):
                continue  # the Jaccard index cannot reach the threshold
            shared = len(a & b)
            if shared and shared >= threshold * (len(a) + len(b) - shared):
                parent[root(i)] = root(j)
    groups: dict[int, list[str]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(root(i), []).append(text)
    return list(groups.values())


def _stdlib_topics() -> Splits:
    by_label: dict[str, list[str]] = {}
    for text, label in collect_stdlib_docstrings():
        by_label.setdefault(label, []).append(text)
    splits: Splits = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        texts = sorted(by_label[label], key=_hash)[:MAX_PER_CLASS]  # hash order: a fair cap
        n_test = max(1, round(len(texts) * SPLIT_FRACTIONS["test"]))
        n_val = max(1, round(len(texts) * SPLIT_FRACTIONS["val"]))
        groups = sorted(near_duplicate_groups(texts), key=lambda g: _hash(min(g)))
        for group in groups:  # fill test, then val, then train, a whole group at a time
            if sum(row[1] == label for row in splits["test"]) < n_test:
                split = "test"
            elif sum(row[1] == label for row in splits["val"]) < n_val:
                split = "val"
            else:
                split = "train"
            splits[split] += [(t, label) for t in group]
    for rows in splits.values():
        rows.sort(key=lambda row: _hash(row[0]))  # classes interleaved, not in blocks
    if any(len(rows) == 0 for rows in splits.values()):
        raise DataError("'stdlib-topics' found too few docstrings on this Python to split")
    return splits


TEXT_DATASETS: dict[str, Callable[[], Splits]] = {"stdlib-topics": _stdlib_topics}


def _stdlib_qa() -> dict[str, list[dict[str, str]]]:
    """Instruction pairs "What does json.dumps do?" -> the docstring's opening prose.

    For showing instruction SFT (and LoRA) on a model pretrained on Python's docs. A name is
    asked once; texts that answer two names are dropped (the answer would be ambiguous). Split
    90/10 by a hash of the name, so it is stable and needs no generator. Objects held out for
    evaluation (`groundup.data.heldout`) are in neither split: the built-in evaluation tasks
    ask about them.
    """
    answers: dict[str, str] = {}
    names_of: dict[str, set[str]] = {}
    for modname, _, obj, text in _documented_objects():
        name = object_name(modname, obj)
        if name is None:
            continue  # a property or data descriptor: no name of its own to ask about
        answers.setdefault(name, text)
        # Held-out names count here too: a text shared with a held-out object is dropped.
        names_of.setdefault(_dedup_key(text), set()).add(name)
    rows = sorted(
        (
            {"prompt": f"What does {name} do?", "response": text}
            for name, text in answers.items()
            if len(names_of[_dedup_key(text)]) == 1 and not is_heldout(name)
        ),
        key=lambda r: _hash(r["prompt"]),
    )
    n_val = max(1, len(rows) // 10)
    return {"train": rows[n_val:], "val": rows[:n_val]}


def stdlib_docstring_documents() -> Iterator[str]:
    """ "json.dumps: Serialize obj to a JSON formatted str. ..." for every documented standard-
    library object that is not held out for evaluation (`groundup.data.heldout`): the
    docstring half of the `stdlib-docs` pretraining corpus. Nameless objects (properties)
    are left out: nothing held out can be told from them."""
    from groundup.data.heldout import is_heldout, object_name

    for modname, _, obj, text in _documented_objects():
        name = object_name(modname, obj)
        if name is None or is_heldout(name):
            continue
        shown = name.removeprefix("builtins.str.") if modname == "builtins.str" else name
        yield f"{shown}: {text}"


SFT_DATASETS: dict[str, Callable[[], dict[str, list[dict[str, str]]]]] = {"stdlib-qa": _stdlib_qa}


def load_sft_dataset(name: str) -> dict[str, list[dict[str, str]]]:
    """{"train", "val"} -> lists of {"prompt", "response"} for a built-in SFT dataset."""
    return lookup(SFT_DATASETS, name, "SFT dataset")()


def load_text_dataset(name: str) -> Splits:
    """{"train", "val", "test"} -> lists of (text, label) for a built-in text dataset.

    Built in memory each call (well under a few seconds; nothing is cached on disk).
    """
    return lookup(TEXT_DATASETS, name, "text dataset")()


def write_text_dataset(name: str, out_dir: str | Path) -> dict[str, Path]:
    """Write train.jsonl, val.jsonl, test.jsonl ({"text", "label"} per line) into out_dir.

    Plain files, so a user can read or edit them and fine-tuning reads them like their own.
    """
    splits = load_text_dataset(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, rows in splits.items():
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for text, label in rows:
                f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
        paths[split] = path
    return paths
