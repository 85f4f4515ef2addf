"""Typed configs: dataclasses loaded from YAML, with dotted overrides and clear errors.

Every command's config is a tree of dataclasses. `from_dict` checks each key against the
dataclass fields (an unknown key gets "did you mean"), each value against the field's type
(the error names the dotted key and the expected type), and the dataclass's own
`__post_init__` checks ranges. Nothing is `exec`'d and nothing is global: the resolved config is
passed down and saved beside every run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from groundup.errors import ConfigError, MissingFileError
from groundup.registry import did_you_mean

T = TypeVar("T")

_NONE_TYPE = type(None)
MAX_DEPTH = 64  # nesting a config may have; deeper is a YAML mistake (or an attack)
MAX_NODES = 1_000_000  # values after expanding YAML aliases ("billion laughs" guard)
INT_LIMIT = 2**63  # integers beyond int64 fit no tensor, index or step counter


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or malformed YAML is a ConfigError, not a traceback."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give the YAML config file inside it")
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; give a YAML config") from None
    data = _safe_load(text, f"{path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a YAML mapping (key: value lines), got {type(data).__name__}"
        )
    check_tree(data, str(path))
    return data


def _safe_load(text: str, where: str, lenient: bool = False) -> Any:
    """yaml.safe_load with every parser failure turned into a one-line ConfigError.

    lenient: malformed YAML comes back as the text itself (an override value like `a:b`).
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if lenient:
            return text
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"malformed YAML in {where}{at}: {problem}; fix the syntax") from None
    except RecursionError:
        raise ConfigError(
            f"YAML in {where} is nested too deeply; flatten its lists and mappings"
        ) from None
    except (ValueError, OverflowError, TypeError) as exc:
        # Trap: PyYAML's constructors raise plain ValueError, e.g. for an integer of more
        # than 4300 digits (Python's int/str conversion limit).
        if "integer string conversion" in str(exc):
            raise ConfigError(
                f"YAML in {where} holds an integer of more than 4300 digits; use a smaller number"
            ) from None
        raise ConfigError(
            f"invalid value in YAML {where}: {_short(str(exc), 80)}; fix it"
        ) from None


def check_tree(data: Any, where: str = "config") -> None:
    """ConfigError for a config tree that is cyclic, too deep or too big once aliases expand.

    YAML anchors and aliases can build a list that contains itself (`&a [*a]`) or an
    exponential tree of shared nodes; both would recurse or blow up memory later (deepcopy,
    saving the resolved config), far from the cause.
    """
    sizes: dict[int, int] = {}

    def visit(node: Any, depth: int, path: list[int]) -> int:
        if not isinstance(node, (dict, list, tuple)):
            return 1
        if id(node) in path:
            raise ConfigError(
                f"{where} contains a value that contains itself (a recursive YAML alias); "
                "copy the values instead of aliasing their own parent"
            )
        if id(node) in sizes:
            return sizes[id(node)]
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep; flatten it")
        path.append(id(node))
        children = node.values() if isinstance(node, dict) else node
        size = 1 + sum(visit(child, depth + 1, path) for child in children)
        path.pop()
        if size > MAX_NODES:
            raise ConfigError(
                f"{where} expands to more than {MAX_NODES:,} values (YAML aliases of aliases); "
                "write the values out instead"
            )
        sizes[id(node)] = size
        return size

    visit(data, 0, [])


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is parsed as YAML so numbers, lists and null work."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override '{_short(text, 60)}' must look like key.sub=value, e.g. optim.lr=3e-4"
        )
    # an unparsable value stays a string (lenient); the type check decides
    value = _safe_load(raw, f"override '{_short(text)}'", lenient=True) if raw.strip() else None
    check_tree(value, f"override '{_short(text)}'")
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each dotted override set (intermediate mappings created)."""
    import copy

    check_tree(data)  # deepcopy recurses: a cyclic or very deep tree must fail clearly first
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override '{_short(text, 60)}': '{_short(prefix)}' is not a section"
                )
            node = child
        node[parts[-1]] = value
    return data


def from_dict(
    cls: type[T], data: Mapping[str, Any] | None, prefix: str = "", kind: str = "config"
) -> T:
    """Build dataclass `cls` from a mapping, checking keys and types recursively.

    `kind` names the mapping in the unknown-key error ("unknown GPT config key ...")."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = prefix[:-1] if prefix else "config"
        raise ConfigError(f"'{where}' must be a mapping of keys, got {_describe(data)}")
    if not prefix:
        check_tree(data)  # a cyclic tree would recurse in to_dict when the run saves it
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown {kind} key '{_short(dotted)}'{did_you_mean(str(key), fields)}; "
                f"valid keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}"
            )
        kwargs[key] = coerce(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not str(exc).startswith(prefix):
            raise ConfigError(f"{prefix[:-1]}: {exc}") from None
        raise


def to_dict(obj: Any) -> Any:
    """The inverse of `from_dict`: plain dicts/lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """YAML file (optional) + dotted overrides -> validated dataclass."""
    data = load_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(obj: Any, path: str | Path) -> None:
    """Write a resolved config as YAML (the run directory keeps what actually ran)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False), encoding="utf-8")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting only where it is lossless and expected."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        args = get_args(tp)
        if value is None:
            if _NONE_TYPE in args:
                return None
            raise ConfigError(f"'{key}' must not be null; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is _NONE_TYPE:
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        shown = ", ".join(repr(c) for c in choices)
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        got = _short(repr(value), 60) if isinstance(value, str) else _describe(value)
        raise ConfigError(f"'{key}' must be one of {shown}, got {got}{hint}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, Sequence) or tp is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {_describe(value)}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"'{key}' must have {len(args)} items, got {len(value)}")
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {_describe(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {_describe(value)}")
    if tp is int:
        number: Any = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                parsed = float(value)
                if parsed.is_integer():
                    number = int(parsed)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"'{key}' must be an integer, got {_describe(value)}")
        if not -INT_LIMIT <= number < INT_LIMIT:
            raise ConfigError(
                f"'{key}' is out of range ({_describe(value)}); use an integer below 2**63"
            )
        return number
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int too big for a float (more than ~1e308)
                raise ConfigError(
                    f"'{key}' is out of range ({_describe(value)}); use a number below 1e308"
                ) from None
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{key}' must be a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
            if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
                raise ConfigError(f"'{key}' must be a string, got {_describe(value)}")
            return str(value)
        raise ConfigError(f"'{key}' must be a string, got {_describe(value)}")
    return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        names = [_type_name(a) for a in get_args(tp) if a is not _NONE_TYPE]
        return " or ".join(names) + (" or null" if _NONE_TYPE in get_args(tp) else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    if origin in (list, Sequence):
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        # Trap: repr() of an int over 4300 digits raises ValueError; name its size instead.
        return f"int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge int deep inside, or a cyclic container
        text = f"<{type(value).__name__}>"
    return f"{type(value).__name__} {_short(text)}"


# what str.splitlines() breaks on: each would split the CLI's one-line error
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _short(text: str, limit: int = 40) -> str:
    """Keep messages one short line: long or multi-line values are cut."""
    text = "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(condition: bool, message: str) -> None:
    """Range checks in `__post_init__`: raise a ConfigError with `message` when false."""
    if not condition:
        raise ConfigError(message)


def config_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested config dicts differ (`train.max_steps`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}{key}"
            if key not in saved or key not in current:
                out.append(name)
            else:
                out.extend(config_diff(saved[key], current[key], name + "."))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [prefix.rstrip(".") or "<config>"]
