"""Evaluation tasks: what one is (`Task`, `Item`), and loading one by built-in name or from a file.

A task of your own is a small YAML (or JSON) spec beside a JSONL data file:

    name: my-task
    kind: multiple_choice          # multiple_choice | cloze | generation
    data: my-task.jsonl            # relative to the spec; one JSON object per line
    context_field: question        # default "context"
    choices_field: choices         # multiple_choice only; default "choices"
    answer_field: answer           # MC: an index or the choice's text; else a string or a list
    fewshot_data: train.jsonl      # optional: the examples few-shot prompts draw from

Every line of both files is checked when the task loads, so a bad spec or row fails with one
line naming the file, the line, the problem and the fix before any model is scored. A bare
.jsonl is refused rather than guessed at: its kind and field names would be guesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from groundup.config import from_dict, load_yaml
from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.registry import did_you_mean, lookup

Kind = Literal["multiple_choice", "cloze", "generation"]
KINDS: tuple[str, ...] = ("multiple_choice", "cloze", "generation")
# kind -> the metrics its score may be taken from; the first is the default
METRICS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("acc_norm", "acc"),
    "cloze": ("acc",),
    "generation": ("f1", "exact_match"),
}
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Item:
    """One scored example.

    context: the prompt text; choices and gold: the options and the index of the right one
    (multiple choice); references: the accepted answers (cloze, generation; the first is the
    one few-shot examples show). chat_prompt: what a chat model is asked instead of `context`
    (generation). doc: the source row, kept for the per-item predictions.
    """

    context: str
    choices: tuple[str, ...] = ()
    gold: int = 0
    references: tuple[str, ...] = ()
    chat_prompt: str | None = None
    doc: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def target(self) -> str:
        """The right answer's text: what a few-shot example shows after its context."""
        return self.choices[self.gold] if self.choices else self.references[0]


@dataclass
class Task:
    """A named list of items of one kind, and how prompts are built from them.

    Few-shot examples come from `fewshot` only, never from `items`. `source` says where the
    task came from (a built-in name and the Python version, or the spec's path).
    """

    name: str
    kind: str
    items: list[Item]
    fewshot: list[Item] = field(default_factory=list)
    target_delimiter: str = " "  # between a context and its continuation (choice, answer)
    fewshot_delimiter: str = "\n\n"  # between few-shot examples, and before the scored context
    num_fewshot: int = 0  # the default number of examples; the runner may override it
    until: tuple[str, ...] = ("\n",)  # generation: stop strings
    max_gen_toks: int = 32  # generation: the most tokens generated per item
    metric: str = ""  # the score averaged across tasks; "" = the kind's default
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "\n" in self.name:
            raise ConfigError(f"a task name must be one line of text, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(
                f"task '{self.name}': unknown kind '{self.kind}'{did_you_mean(self.kind, KINDS)}"
                f"; valid kinds: {', '.join(KINDS)}"
            )
        valid = METRICS[self.kind]
        self.metric = self.metric or valid[0]
        if self.metric not in valid:
            raise ConfigError(
                f"task '{self.name}': metric '{self.metric}' does not apply to {self.kind} "
                f"tasks{did_you_mean(self.metric, valid)}; valid metrics: {', '.join(valid)}"
            )
        if self.num_fewshot < 0 or self.max_gen_toks < 1:
            raise ConfigError(
                f"task '{self.name}': num_fewshot must be >= 0 and max_gen_toks >= 1, got "
                f"{self.num_fewshot} and {self.max_gen_toks}"
            )
        self.until = tuple(self.until)
        if not self.items:
            raise DataError(f"task '{self.name}' has no items; give it at least one example")
        for what, items in (("item", self.items), ("few-shot example", self.fewshot)):
            for i, item in enumerate(items):
                _check_item(self.name, self.kind, item, f"{what} {i}")


def _check_item(task: str, kind: str, item: Item, where: str) -> None:
    """The checks a Task built in Python gets (a file's rows get them with line numbers)."""
    if kind == "multiple_choice":
        if len(item.choices) < 2 or not 0 <= item.gold < len(item.choices):
            raise DataError(
                f"task '{task}', {where}: needs >= 2 choices and a gold index among them, got "
                f"{len(item.choices)} choices and gold {item.gold}"
            )
    elif not item.references:
        raise DataError(f"task '{task}', {where}: a {kind} item needs at least one reference")


@dataclass
class TaskSpec:
    """The fields of a task spec file (see the module docstring)."""

    kind: Kind  # multiple_choice | cloze | generation
    data: str  # the JSONL file of items, relative to the spec file
    name: str | None = None  # default: the spec file's name without its suffix
    context_field: str = "context"  # the field holding the prompt text
    choices_field: str = "choices"  # multiple_choice: the field holding the list of options
    answer_field: str = "answer"  # MC: index or choice text; else a string or list of strings
    chat_field: str | None = None  # generation: what chat models are asked (default: context)
    target_delimiter: str = " "  # between the context and the continuation
    fewshot_delimiter: str = "\n\n"  # between few-shot examples
    fewshot_data: str | None = None  # a JSONL file of few-shot examples (same fields)
    num_fewshot: int = 0  # the default number of few-shot examples
    until: list[str] | str = field(default_factory=lambda: ["\n"])  # generation: stop strings
    max_gen_toks: int = 32  # generation: the most tokens to generate
    metric: str | None = None  # the score: acc_norm/acc (MC), acc (cloze), f1/exact_match


_REQUIRED = [
    f.name
    for f in dataclasses.fields(TaskSpec)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


def load_task(ref: str | os.PathLike[str]) -> Task:
    """A built-in task by name ("stdlib-describe"), or the task a spec file describes."""
    text = str(ref)
    path = Path(ref)
    suffix = path.suffix.lower()
    if suffix in (*SPEC_SUFFIXES, ".jsonl") or os.sep in text or "/" in text:
        return read_task_spec(path)
    from groundup.evals.builtin_tasks import BUILTIN_TASKS

    try:
        builder = lookup(BUILTIN_TASKS, text, "evaluation task")
    except ConfigError as exc:
        hint = " (a file of that name exists: give its path with ./)" if path.exists() else ""
        raise ConfigError(
            f"{exc}; or give the path of a task spec file ({', '.join(SPEC_SUFFIXES)}){hint}"
        ) from None
    return builder()


def load_tasks(refs: Sequence[str | os.PathLike[str] | Task]) -> list[Task]:
    """Every task loaded (and so checked) before any is scored; names must not repeat."""
    tasks = [ref if isinstance(ref, Task) else load_task(ref) for ref in refs]
    if not tasks:
        raise ConfigError("no evaluation tasks given; name a built-in task or a spec file")
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise ConfigError(f"two tasks are named '{task.name}'; give each spec its own `name:`")
        seen.add(task.name)
    return tasks


def read_task_spec(path: str | os.PathLike[str]) -> Task:
    """Read a YAML/JSON spec and its JSONL data, checking every field and every line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        raise ConfigError(
            f"{path} is a data file, not a task spec; write a YAML spec beside it, e.g. "
            f"'kind: multiple_choice' and 'data: {path.name}' (fields: context, choices, answer)"
        )
    if suffix not in SPEC_SUFFIXES:
        raise ConfigError(
            f"task spec {path} must be a {', '.join(SPEC_SUFFIXES)} file, got {suffix!r}"
        )
    raw = _read_json_spec(path) if suffix == ".json" else load_yaml(path)
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise ConfigError(
            f"{path}: no '{missing[0]}' field (fields present: {', '.join(map(str, raw)) or 'none'})"
            f"; add {missing[0]}: ... (kind is one of {', '.join(KINDS)}; data the JSONL file)"
        )
    try:
        spec = from_dict(TaskSpec, raw, kind="task spec")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check_spec(spec, path)
    folder = path.parent
    data = folder / spec.data
    fewshot_path = folder / spec.fewshot_data if spec.fewshot_data else None
    if fewshot_path is not None and _same_file(fewshot_path, data):
        raise ConfigError(
            f"{path}: fewshot_data is the scored data file; few-shot examples must come from "
            "another split (a training file), or leave fewshot_data out"
        )
    items = read_items(data, spec, path)
    fewshot = read_items(fewshot_path, spec, path) if fewshot_path is not None else []
    if spec.num_fewshot > len(fewshot):
        have = f"fewshot_data holds {len(fewshot)} examples" if fewshot else "no fewshot_data"
        raise ConfigError(
            f"{path}: num_fewshot is {spec.num_fewshot} but there is {have}; lower num_fewshot "
            "or give fewshot_data more rows"
        )
    try:
        return Task(
            name=spec.name or path.stem,
            kind=spec.kind,
            items=items,
            fewshot=fewshot,
            target_delimiter=spec.target_delimiter,
            fewshot_delimiter=spec.fewshot_delimiter,
            num_fewshot=spec.num_fewshot,
            until=tuple(spec.until),
            max_gen_toks=spec.max_gen_toks,
            metric=spec.metric or "",
            source=str(path),
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _read_json_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"task spec not found: {path}; check the path")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must hold a JSON object of spec fields, got {type(raw).__name__}"
        )
    return raw


def _check_spec(spec: TaskSpec, path: Path) -> None:
    if spec.name is not None and (not spec.name.strip() or "\n" in spec.name):
        raise ConfigError(f"{path}: name must be one line of text, got {spec.name!r}")
    if spec.chat_field is not None and spec.kind != "generation":
        raise ConfigError(
            f"{path}: chat_field is used by generation tasks only (a {spec.kind} task is "
            "scored on raw text); remove it"
        )
    valid = METRICS[spec.kind]
    if spec.metric is not None and spec.metric not in valid:
        raise ConfigError(
            f"{path}: metric '{spec.metric}' does not apply to {spec.kind} tasks"
            f"{did_you_mean(spec.metric, valid)}; valid metrics: {', '.join(valid)}"
        )
    if spec.max_gen_toks < 1 or spec.num_fewshot < 0:
        raise ConfigError(f"{path}: max_gen_toks must be >= 1 and num_fewshot >= 0")
    if isinstance(spec.until, str):
        spec.until = [spec.until]
    if any(not stop for stop in spec.until):
        raise ConfigError(f"{path}: until holds an empty stop string; remove it")


def _same_file(a: Path, b: Path) -> bool:
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def read_items(path: Path, spec: TaskSpec, spec_path: Path) -> list[Item]:
    """The items of one JSONL file, every line checked against the spec's kind and fields."""
    if not path.is_file():
        raise MissingFileError(
            f"{spec_path}: data file {path} not found; fix the path (it is relative to the spec)"
        )
    items = [_item(row, spec, f"{path}:{n}", spec_path) for n, row in _rows(path)]
    if not items:
        raise DataError(f"{path} holds no rows; write one JSON object per line")
    return items


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 ({e.reason}); convert it to UTF-8") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "unreadable JSON"
            raise DataError(
                f"{path}:{n}: invalid JSON ({reason}); one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: a line must be a JSON object, got {type(row).__name__}")
        yield n, row


def _field(row: Mapping[str, Any], key: str, where: str, setting: str, spec_path: Path) -> Any:
    if key not in row:
        raise DataError(
            f"{where}: no '{key}' field{did_you_mean(key, row)} (fields present: "
            f"{', '.join(map(str, row)) or 'none'}); set {setting} in {spec_path} to the right one"
        )
    return row[key]


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        got = "empty text" if isinstance(value, str) else type(value).__name__
        raise DataError(f"{where}: '{key}' must be non-empty text, got {got}")
    return value


def _item(row: dict[str, Any], spec: TaskSpec, where: str, spec_path: Path) -> Item:
    ctx_key, ans_key = spec.context_field, spec.answer_field
    context = _text(_field(row, ctx_key, where, "context_field", spec_path), ctx_key, where)
    answer = _field(row, ans_key, where, "answer_field", spec_path)
    if spec.kind == "multiple_choice":
        choices = _choices(
            _field(row, spec.choices_field, where, "choices_field", spec_path),
            spec.choices_field,
            where,
        )
        return Item(context, choices=choices, gold=_gold(answer, choices, ans_key, where), doc=row)
    if isinstance(answer, str):
        answer = [answer]
    if not isinstance(answer, list) or not answer:
        raise DataError(
            f"{where}: '{ans_key}' must be a string or a non-empty list of strings, got "
            f"{type(answer).__name__ if not isinstance(answer, list) else 'an empty list'}"
        )
    refs = tuple(_text(a, f"{ans_key}[{i}]", where) for i, a in enumerate(answer))
    chat = None
    if spec.chat_field is not None:
        key = spec.chat_field
        chat = _text(_field(row, key, where, "chat_field", spec_path), key, where)
    return Item(context, references=refs, chat_prompt=chat, doc=row)


def _choices(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 2:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise DataError(f"{where}: '{key}' must be a list of at least 2 choices, got {got}")
    choices = tuple(_text(c, f"{key}[{i}]", where) for i, c in enumerate(value))
    repeated = next((c for i, c in enumerate(choices) if c in choices[:i]), None)
    if repeated is not None:
        raise DataError(f"{where}: choice {repeated!r} is listed twice; make the choices distinct")
    return choices


def _gold(answer: Any, choices: tuple[str, ...], key: str, where: str) -> int:
    if isinstance(answer, str):
        if answer in choices:
            return choices.index(answer)
        raise DataError(
            f"{where}: '{key}' {answer!r} is not one of the choices"
            f"{did_you_mean(answer, choices)}; give the choice's exact text or its index"
        )
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(
            f"{where}: '{key}' must be a choice index (int) or a choice's text, got "
            f"{type(answer).__name__}"
        )
    if not 0 <= answer < len(choices):
        raise DataError(
            f"{where}: '{key}' {answer} is out of range for {len(choices)} choices; give an "
            f"index from 0 to {len(choices) - 1} (or the choice's text)"
        )
    return answer
