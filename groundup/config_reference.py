"""The config reference, generated from the config dataclasses themselves.

For every key of a command's config: its dotted name, a readable type (`int | null`,
`one of: stop, skip, rollback`), its default and one line of meaning. The meaning is read from
the source: the `# comment` on the field's line (or the comment lines right above it), and for a
section its dataclass docstring. Nothing is written twice, so the reference cannot drift from the
code; `docs/config.md` is this module's output and a test fails when it is out of date:

    python -m groundup.config_reference > docs/config.md

The walker is generic over dataclasses, nested dataclass sections (also `X | None`), lists and
mappings, so a restructured config needs no change here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from groundup.config import from_dict, to_dict
from groundup.errors import ConfigError
from groundup.registry import lookup

# command -> (module, config dataclass); imported only when asked for (the jobs import torch)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("groundup.jobs.train_tabular", "TrainJobConfig"),
    "pretrain": ("groundup.jobs.pretrain", "PretrainConfig"),
    "finetune": ("groundup.jobs.finetune", "FinetuneConfig"),
}
REGENERATE = "python -m groundup.config_reference > docs/config.md"


class _Required:
    """The default of a field that has none (the config must give it)."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED = _Required()
_NONE_TYPE = type(None)


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a config, as the reference shows it."""

    name: str  # dotted: optim.lr; the fields of list items: layers[].units
    type: str  # readable: int | null, one of: stop, skip, rollback, section
    default: Any  # a plain value (lists, dicts, scalars); REQUIRED when there is none
    meaning: str  # one line, from the source; "" when the field has no comment
    section: bool = False  # a nested dataclass: its keys follow
    live: bool = True  # False under a null section or in list items: not in the defaults
    depth: int = 0


def config_class(command: str) -> type:
    """The config dataclass of `command` (train, pretrain, finetune)."""
    module, name = lookup(COMMANDS, command, "config command")
    return getattr(importlib.import_module(module), name)


def config_keys(cls: type) -> list[Key]:
    """Every key of dataclass `cls`, sections before their keys, in declaration order."""
    return list(_walk(cls, class_defaults(cls), "", 0, live=True))


def class_defaults(cls: type) -> dict[str, Any]:
    """The defaults of `cls`'s fields as plain values, without building `cls` itself (a
    config's own checks may refuse its defaults: `layers` must be given)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_dict(f.default_factory())
        else:
            out[f.name] = REQUIRED
    return out


def _walk(
    cls: type, defaults: Mapping[str, Any], prefix: str, depth: int, live: bool
) -> Iterator[Key]:
    hints = typing.get_type_hints(cls)
    meanings = field_meanings(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, name = hints[f.name], prefix + f.name
        default = defaults.get(f.name, REQUIRED)
        meaning = meanings.get(f.name, "")
        section = _section_class(tp)
        if section is not None:
            yield Key(
                name,
                type_name(tp),
                default,
                _join(doc_line(section), meaning),
                section=True,
                live=live,
                depth=depth,
            )
            # a null (or missing) section shows the defaults its keys take once it is given
            nested = default if isinstance(default, dict) else class_defaults(section)
            yield from _walk(section, nested, name + ".", depth + 1, live and nested is default)
            continue
        yield Key(name, type_name(tp), default, meaning, live=live, depth=depth)
        item = _item_class(tp)
        if item is not None:  # list[X] or dict[str, X] of sections: X's keys, for reference
            marker = "[]" if get_origin(_strip_none(tp)) in (list, Sequence, tuple) else ".<name>"
            yield from _walk(item, class_defaults(item), name + marker + ".", depth + 1, False)


def _strip_none(tp: Any) -> Any:
    """`X | None` -> X; other types unchanged."""
    if _is_union(tp):
        args = [a for a in get_args(tp) if a is not _NONE_TYPE]
        if len(args) == 1:
            return args[0]
    return tp


def _section_class(tp: Any) -> type | None:
    """The dataclass of a section typed `X` or `X | None`, else None."""
    tp = _strip_none(tp)
    return tp if dataclasses.is_dataclass(tp) and isinstance(tp, type) else None


def _item_class(tp: Any) -> type | None:
    """The dataclass of the items of `list[X]` / the values of `dict[str, X]`, else None."""
    tp = _strip_none(tp)
    args = get_args(tp)
    if get_origin(tp) in (list, Sequence, tuple) and args:
        return _section_class(args[0])
    if get_origin(tp) in (dict, Mapping) and len(args) == 2:
        return _section_class(args[1])
    return None


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or isinstance(tp, types.UnionType)


def type_name(tp: Any) -> str:
    """A readable type: `int | null`, `list of str`, `one of: stop, skip`, `section`."""
    if tp is _NONE_TYPE or tp is None:
        return "null"
    if tp is Any:
        return "any"
    if _is_union(tp):
        args = get_args(tp)
        names = [type_name(a) for a in args if a is not _NONE_TYPE]
        return " | ".join(names + (["null"] if _NONE_TYPE in args else []))
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of: " + ", ".join("null" if c is None else str(c) for c in args)
    if dataclasses.is_dataclass(tp):
        return "section"
    if tp in (list, tuple) or origin in (list, Sequence, tuple):
        if not args or args[0] is Any:
            return "list"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return "list of [" + ", ".join(type_name(a) for a in args) + "]"
        item = type_name(args[0])
        return f"list of ({item})" if " " in item else f"list of {item}"
    if tp is dict or origin in (dict, Mapping):
        if len(args) == 2 and args[1] is not Any:
            value = type_name(args[1])
            return f"mapping of ({value})" if " " in value else f"mapping of {value}"
        return "mapping"
    return getattr(tp, "__name__", str(tp))


# ------------------------------------------------------------------------ meanings from source
def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> the comment that explains it, from the source of `cls` and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if dataclasses.is_dataclass(klass):
            out.update({k: v for k, v in _own_comments(klass).items() if v or k not in out})
    return out


@functools.cache
def _own_comments(klass: type) -> dict[str, str]:
    """The comments of the fields that `klass` itself declares: those on the lines of the field
    (a field may span lines), else the comment lines right above it. {} without source."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
        comments: dict[int, str] = {}
        code_lines: set[int] = set()
        skip = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
            elif tok.type not in skip:
                code_lines.update(range(tok.start[0], tok.end[0] + 1))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):  # no source: no meanings
        return {}
    classdef = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if classdef is None:
        return {}
    out: dict[str, str] = {}
    for node in classdef.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        end = node.end_lineno or node.lineno
        found = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        if not found:  # a comment block right above the field
            line = node.lineno - 1
            while line in comments and line not in code_lines:
                found.insert(0, comments[line])
                line -= 1
        out[node.target.id] = " ".join(c for c in found if c)
    return out


def doc_line(cls: type) -> str:
    """The first paragraph of `cls`'s own docstring on one line ("" for dataclass's
    generated `Name(field: type = ...)` signature)."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _join(first: str, second: str) -> str:
    """Two meanings as one line: a section's docstring, then the comment on its field."""
    if not (first and second):
        return first or second
    if first.endswith((".", "!", "?")):
        return f"{first} {second[0].upper()}{second[1:]}"
    return f"{first}; {second}"


# ------------------------------------------------------------------------ rendering
def yaml_value(value: Any) -> str:
    """`value` as one line of YAML that loads back to the same value."""
    if value is REQUIRED:
        return "(required)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")
    if "\n" in text or yaml.safe_load(text) != value:  # e.g. "\n": a JSON string is YAML too
        text = json.dumps(value, ensure_ascii=False)
    return text


def _shown_default(key: Key) -> str:
    if key.section and isinstance(key.default, dict):
        return ""  # its keys follow
    return yaml_value(key.default)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_code(text: str) -> str:
    if not text:
        return ""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def command_markdown(command: str) -> str:
    """The reference of one command as a markdown section with a table."""
    cls = config_class(command)
    return class_markdown(f"## `groundup {command}` ({cls.__name__})", cls)


def model_markdown() -> str:
    """The fields of the `model:` mapping of a GPT (pretrain, and finetune's new heads)."""
    from groundup.models.gpt import GPTConfig

    return class_markdown(
        "## `model:` of a GPT (GPTConfig)", GPTConfig,
        "The fields of `model:` in `groundup pretrain` (beside `preset`, whose fields they "
        "override). `null` fields take the flavour's (or the recipe's) default.",
    )  # fmt: skip


def class_markdown(title: str, cls: type, intro: str = "") -> str:
    """One dataclass's keys as a markdown section with a table."""
    lines = [title, ""]
    if intro:
        lines += [intro, ""]
    if doc_line(cls):
        lines += [doc_line(cls), ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key in config_keys(cls):
        name = _md_code(key.name)
        lines.append(
            f"| {f'**{name}**' if key.section else name} | {_md_cell(key.type)} "
            f"| {_md_cell(_md_code(_shown_default(key)))} | {_md_cell(key.meaning)} |"
        )
    return "\n".join(lines) + "\n"


def command_text(command: str) -> str:
    """The reference of one command as aligned plain-text columns."""
    cls = config_class(command)
    rows = [("KEY", "TYPE", "DEFAULT", "MEANING")]
    rows += [(k.name, k.type, _shown_default(k), k.meaning) for k in config_keys(cls)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    head = f"groundup {command} ({cls.__name__})" + (f": {doc_line(cls)}" if doc_line(cls) else "")
    body = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows
    ]
    return "\n".join([head, "", *(line.rstrip() for line in body)]) + "\n"


def reference(command: str, format: Literal["text", "markdown"] = "text") -> str:
    """`groundup config show CMD`: one command's reference, as text or markdown."""
    return command_markdown(command) if format == "markdown" else command_text(command)


def reference_markdown() -> str:
    """docs/config.md: the reference of every command."""
    parts = [
        "# Config reference",
        "",
        "Generated from the config dataclasses (their field comments and docstrings) by",
        f"`{REGENERATE}`; do not edit it by hand: a test fails",
        "when it is out of date. Every key can be set in the YAML config or as a dotted override",
        "on the command line (`optim.lr=3e-4`). `groundup config show CMD` prints one command's",
        "table; `groundup config init CMD > my.yaml` writes a commented YAML of every default to",
        "start from.",
        "",
    ]
    for command in COMMANDS:
        parts.append(command_markdown(command))
    parts.append(model_markdown())
    return "\n".join(parts)


def default_yaml(command: str) -> str:
    """`groundup config init CMD`: a YAML config of every key at its default, each explained
    by a comment; it loads back to exactly the defaults."""
    cls = config_class(command)
    header = [
        f"# groundup {command}: every key at its default (groundup config init {command}).",
        f"# Edit what you need and delete the rest; `groundup config show {command}` explains "
        "each key.",
    ]
    if doc_line(cls):
        header.append(f"# {doc_line(cls)}")
    problem = _defaults_problem(cls)
    if problem:
        header.append(f"# To fill in before it runs: {' '.join(problem.split())}")
    body: list[tuple[str, str]] = []  # (line, trailing comment)
    for key in config_keys(cls):
        indent = "  " * key.depth
        leaf = key.name.rsplit(".", 1)[-1]
        hash_ = "" if key.live else "# "
        if key.section and isinstance(key.default, dict) and key.live:
            if key.meaning:
                body.append((f"{indent}# {key.meaning}", ""))
            body.append((f"{indent}{leaf}:" + (" {}" if not key.default else ""), ""))
        elif key.default is REQUIRED:
            body.append((f"{indent}# {leaf}: ", f"(required) {key.meaning}".strip()))
        else:
            value = "" if key.section and not key.live else " " + yaml_value(key.default)
            body.append((f"{indent}{hash_}{leaf}:{value}", key.meaning))
    column = min(max((len(line) for line, note in body if note), default=0), 44) + 2
    lines = [f"{line.ljust(column)}# {note}" if note else line for line, note in body]
    return "\n".join(header + lines) + "\n"


def _defaults_problem(cls: type) -> str:
    """What the config's own checks say about its defaults ("" when they pass)."""
    data = {k: v for k, v in class_defaults(cls).items() if v is not REQUIRED}
    try:
        from_dict(cls, data)
    except (ConfigError, TypeError) as exc:  # TypeError: a required field without a default
        return str(exc)
    return ""


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
