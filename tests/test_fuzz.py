"""Fuzz the user-facing parsers: any input, however wrong, ends in a GroundupError or succeeds.

Configs (from_dict, load_yaml, apply_overrides, then the cheap builders), tables (CSV, TSV,
.csv.gz, .npy, .npz through load_table, then prepare_tabular) and JSONL corpora (Corpus) get
arbitrary values, text and bytes. Anything that escapes and is not a GroundupError is a bug:
the CLI would print a raw traceback; a message that spans lines breaks its one-line error.
Deterministic (derandomize) and small, so the whole file stays fast; the explicit regressions
for what it found sit at the end.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groundup.config import apply_overrides, from_dict, load_yaml
from groundup.data.corpus import Corpus
from groundup.data.tabular_pipeline import TabularDataConfig, prepare_tabular
from groundup.data.tabular_readers import load_table
from groundup.errors import ConfigError, DataError, GroundupError
from groundup.jobs.pretrain import PretrainConfig
from groundup.jobs.pretrain_objectives import model_config
from groundup.jobs.train_tabular import TrainJobConfig

# GROUNDUP_FUZZ_EXAMPLES=5000 explores further with fresh random examples (minutes, not CI)
_EXPLORE = int(os.environ.get("GROUNDUP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXPLORE or 200,
    deadline=None,
    derandomize=not _EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------- value strategies
# 10**5000: past Python's 4300-digit int/str limit (repr raises), so made by a map
HUGE = st.sampled_from([400, 5000, 63, 30]).flatmap(
    lambda e: st.sampled_from([10**e, -(10**e), 2**e, 2**e - 1, -(2**e) - 1])
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(
        ["", "1e-3", "nan", "inf", "-1", "0", "true", "null", "1e999", "relu", "a\nb", "x\r"]
    ),
)
SMALL_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
KEYS = st.one_of(st.text(max_size=8), st.integers(-3, 3), st.sampled_from(["type", "units"]))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)

ODD_STRINGS = st.one_of(
    st.sampled_from(["a\nb", "\x85", "\u2028x", "", " ", "relu", "adam", "cosine", "x" * 300]),
    st.text(max_size=6),
)
LAYER_SPECS = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["Dense", "dense", "Dropout", "Flatten"]), ODD_STRINGS)},
    optional={
        "units": st.one_of(st.integers(-2, 4), SCALARS),
        "activation": st.one_of(st.sampled_from(["relu", "softmax"]), ODD_STRINGS),
        "rate": SCALARS,
    },
)
# A layer spec with up to one junk key (a random name, never "type" or "units").
JUNK_KEYS = st.dictionaries(
    ODD_STRINGS.filter(lambda k: k not in ("type", "units")), SCALARS, max_size=1
)
LAYER_LISTS = st.lists(
    st.builds(lambda spec, junk: {**junk, **spec}, LAYER_SPECS, JUNK_KEYS) | VALUES,
    max_size=3,
)


def _field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


@st.composite
def config_dicts(draw, cls: type, depth: int = 0) -> dict[Any, Any]:
    """Mostly known keys (so the checks past the key check are reached), some junk keys."""
    hints = _field_hints(cls)
    out: dict[Any, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(hints)), max_size=5, unique=True)):
        sub = _dataclass_in(hints[name])
        if sub is not None and depth < 2 and draw(st.booleans()):
            out[name] = draw(config_dicts(sub, depth + 1))
        elif str in (hints[name], *typing.get_args(hints[name])) and draw(st.booleans()):
            out[name] = draw(ODD_STRINGS)  # names and paths: where raw text reaches messages
        else:
            out[name] = draw(VALUES)
    if cls is TrainJobConfig and "layers" not in out and draw(st.booleans()):
        out["layers"] = draw(LAYER_LISTS)  # past the empty-layers check, to the builders
    if draw(st.integers(0, 9)) == 0:
        out[draw(KEYS)] = draw(VALUES)
    return out


GPT_KEYS = [
    "preset",
    "flavour",
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "block_size",
    "vocab_size",
    "intermediate_size",
    "dropout",
    "bias",
    "rope_theta",
    "norm_eps",
    "tie_embeddings",
    "init_std",
    "activation",
    "head_dim",
    "qk_norm",
    "norm_unit_offset",
    "embedding_scale",
    "logit_softcap",
    "zero_init_proj",
    "recipe",
]
MODEL_DICTS = st.dictionaries(
    st.one_of(st.sampled_from(GPT_KEYS), st.text(max_size=6)),
    st.one_of(VALUES, st.sampled_from(["gpt2-tiny", "llama", "gpt2", "modern", "relu2", 64, 4, 2])),
    max_size=6,
)


def _only_groundup_errors(fn, *args, one_line: bool = True, **kwargs) -> Any:
    """Run `fn`; a GroundupError is fine (returns None), anything else fails the test.

    one_line: the message must also be one line. Off for the builders outside config/data
    (registry lookups print a name as given, so a name holding a newline splits the line).
    """
    try:
        return fn(*args, **kwargs)
    except GroundupError as exc:
        message = str(exc)
        assert message.strip(), "empty message"
        if one_line:
            assert len(message.strip().splitlines()) == 1, f"not one line: {message!r}"
        return None


# ---------------------------------------------------------------- configs
@FUZZ
@given(data=config_dicts(TrainJobConfig))
def test_train_config_from_dict_raises_only_groundup_errors(data) -> None:
    cfg = _only_groundup_errors(from_dict, TrainJobConfig, data)
    if cfg is not None:  # the cheap parts of building must not crash either
        from groundup.keras.layers import layer_from_config
        from groundup.train.losses import get_loss
        from groundup.train.metrics import get_metric
        from groundup.train.optim import optimizer_spec
        from groundup.train.schedules import build_schedule

        spec, schedule = cfg.optim.optimizer_spec(), cfg.optim.schedule_spec()
        _only_groundup_errors(optimizer_spec, spec, one_line=False)
        _only_groundup_errors(build_schedule, schedule, total_steps=100, one_line=False)
        _only_groundup_errors(get_loss, cfg.loss, one_line=False)
        for metric in cfg.metrics:
            _only_groundup_errors(get_metric, metric, one_line=False)
        for layer in cfg.layers:
            if "type" in layer:  # as run_train: a spec without a type is refused before this
                _only_groundup_errors(layer_from_config, layer, one_line=False)
        _only_groundup_errors(cfg.data.validate)


@FUZZ
@given(data=config_dicts(PretrainConfig), model=st.one_of(st.none(), MODEL_DICTS))
def test_pretrain_config_from_dict_and_gpt_config(data, model) -> None:
    if model is not None:
        data["model"] = model
    cfg = _only_groundup_errors(from_dict, PretrainConfig, data)
    if cfg is not None:
        _only_groundup_errors(model_config, "clm", cfg.model, 100, one_line=False)


@FUZZ
@given(data=VALUES)
def test_from_dict_on_any_top_level_value(data) -> None:
    _only_groundup_errors(from_dict, TrainJobConfig, data)
    _only_groundup_errors(from_dict, PretrainConfig, data)


YAML_TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(
        st.sampled_from(
            [
                "optim:",
                "  lr: ",
                "1e-3",
                "[",
                "]",
                "{",
                "}",
                "- ",
                ": ",
                "&a",
                "*a",
                "!!python/int",
                "\t",
                "'",
                '"',
                "\n",
                "layers:",
                "- {type: Dense, units: 4}",
                "<<: *a",
                "%YAML 1.1",
                "---",
                "...",
                "? ",
                "!!binary",
                "@",
                "`",
                "\x00",
                "\ufeff",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@FUZZ
@given(text=YAML_TEXT, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_load_yaml_on_any_text_or_bytes(text, raw) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        data = _only_groundup_errors(load_yaml, path)
        if data is not None:
            assert isinstance(data, dict)
            _only_groundup_errors(from_dict, TrainJobConfig, data)


OVERRIDES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="ab.=\n\r [{:", max_size=12),
    st.tuples(
        st.sampled_from(
            ["optim.lr", "train.epochs", "data", "model.n_layer", "a.b.c", ".", "x.", ""]
        ),
        st.sampled_from(["=", "==", ":", ""]),
        st.one_of(st.text(max_size=10), st.sampled_from(["[1, 2", "{a: 1}", "1e999", "!!x", "&a"])),
    ).map("".join),
)


@FUZZ
@given(base=config_dicts(PretrainConfig), overrides=st.lists(OVERRIDES, max_size=4))
def test_apply_overrides_with_any_strings(base, overrides) -> None:
    data = _only_groundup_errors(apply_overrides, base, overrides)
    if data is not None:
        _only_groundup_errors(from_dict, PretrainConfig, data)


# ---------------------------------------------------------------- tables
CSV_PIECES = st.sampled_from(
    [
        "a",
        "b",
        "x",
        "y",
        ",",
        ";",
        "\t",
        "|",
        "\n",
        "\r\n",
        '"',
        "1",
        "2.5",
        "-3",
        "nan",
        "NA",
        "?",
        "inf",
        "1e999",
        " ",
        "",
        "é",
        "\x00",
        "\ufeff",
        "0",
        "1",
        "cat",
        "dog",
    ]
)
CELLS = st.one_of(
    st.integers(-3, 3).map(str),
    st.sampled_from(
        ["0", "1", "2.5", "-1e3", "nan", "NA", "", "?", "inf", "-inf", "1e999", "1e-320"]
    ),
    st.sampled_from(["cat", "dog", "é", " x ", '"q,"', "1,5"]),
    st.text(max_size=4),
)


@st.composite
def csv_tables(draw) -> str:
    """Header + rows, mostly well formed, so parsing, cleaning and splitting are all reached."""
    width = draw(st.integers(1, 4))
    names = st.sampled_from(["a", "b", "c", "y", "target", "", " a", '"x\ny"'])
    unique = draw(st.integers(0, 5)) > 0  # mostly distinct names: duplicates stop at the header
    header = draw(st.lists(names, min_size=width, max_size=width, unique=unique))
    sep = draw(st.sampled_from([",", ";", "\t"]))
    rows = []
    for _ in range(draw(st.integers(0, 25))):
        n = width if draw(st.integers(0, 40)) else draw(st.integers(0, width + 2))
        rows.append(sep.join(draw(st.lists(CELLS, min_size=n, max_size=n))))
    return "\n".join([sep.join(header), *rows]) + draw(st.sampled_from(["", "\n", "\n\n"]))


CSV_TEXT = st.one_of(
    csv_tables(),
    csv_tables(),
    st.lists(CSV_PIECES, max_size=40).map("".join),
    st.text(max_size=80),
)
CSV_BYTES = st.one_of(
    st.binary(max_size=80), CSV_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
)


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass", newline="")


@FUZZ
@given(
    content=st.one_of(CSV_TEXT, CSV_BYTES),
    suffix=st.sampled_from([".csv", ".tsv", ".csv.gz"]),
    bad_rows=st.sampled_from(["fail", "skip"]),
    target=st.one_of(st.none(), st.text(max_size=3)),
    stratify=st.booleans(),
    missing=st.sampled_from(["impute_mean", "impute_most_frequent", "drop", "error"]),
    compress=st.integers(0, 4).map(bool),
    whole=st.booleans(),
)
def test_load_table_and_prepare_tabular_on_any_file(
    content, suffix, bad_rows, target, stratify, missing, compress, whole
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        _write(path, content)
        if suffix == ".csv.gz" and compress:  # else: bytes that are not gzip at all
            path.write_bytes(gzip.compress(path.read_bytes())[: None if whole else -5])
        table = _only_groundup_errors(load_table, path, bad_rows=bad_rows)
        if table is None:
            return
        assert table.n_rows > 0 and table.columns
        if target is None or not target:
            target = table.names[-1]  # a real column, so the pipeline runs past the lookup
        cfg = TabularDataConfig(
            path=str(path), target=target, bad_rows=bad_rows, stratify=stratify, missing=missing
        )
        data = _only_groundup_errors(prepare_tabular, cfg)
        if data is not None:
            assert len(data.x_train) == len(data.y_train) > 0
            assert np.isfinite(data.x_train).all()


def _npy_bytes(header: str, body: bytes) -> bytes:
    raw = header.encode("latin-1", "replace")
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + body


NPY_BYTES = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda b: b"\x93NUMPY" + b, st.binary(max_size=40)),
    st.builds(
        _npy_bytes,
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                [
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }",
                    "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }",
                    "{'descr': 'zz', 'fortran_order': False, 'shape': (1,), }",
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (10**30,), }",
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2, 2), }",
                    "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,), }",
                    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
                ]
            ),
        ),
        st.binary(max_size=40),
    ),
    st.builds(lambda b: b"PK\x03\x04" + b, st.binary(max_size=40)),
)


@FUZZ
@given(content=NPY_BYTES, suffix=st.sampled_from([".npy", ".npz"]))
def test_load_table_on_any_numpy_bytes(content, suffix) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(content)
        _only_groundup_errors(load_table, path)


# ---------------------------------------------------------------- corpora
DEEP = "[" * 100_000 + "]" * 100_000  # past the json decoder's recursion limit
JSONL_LINE = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            '{"text": "hello"}',
            '{"text": 1}',
            '{"text": null}',
            '{"body": "x"}',
            "[1, 2]",
            "null",
            '"just a string"',
            '{"text": "\\ud800"}',
            "{",
            '{"text": "a", "text": 2}',
            "1e999",
            "NaN",
            '{"text": "\\u0000"}',
            "",
            "\ufeff{}",
        ]
    ),
    st.sampled_from([5000, 10]).map(lambda n: '{"text": "a", "n": 1' + "0" * n + "}"),
    st.sampled_from([DEEP]).map(lambda d: '{"text": ' + d + "}"),
    st.dictionaries(st.sampled_from(["text", "body"]), SMALL_VALUES, max_size=2).map(json.dumps),
)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            JSONL_LINE.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=12)
        ),
        max_size=6,
    ),
    text_field=st.sampled_from(["text", "body", "", "é"]),
    bad_rows=st.sampled_from(["error", "skip"]),
)
def test_jsonl_corpus_on_any_lines(lines, text_field, bad_rows) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.jsonl"
        path.write_bytes(b"\n".join(lines))
        corpus = _only_groundup_errors(Corpus, path, text_field=text_field, bad_rows=bad_rows)
        if corpus is not None:
            docs = _only_groundup_errors(list, corpus)
            if docs is not None:
                assert all(isinstance(d, str) and d.strip() for d in docs)
                assert corpus.documents == len(docs)


# ---------------------------------------------------------------- regressions (found by fuzzing)
def _yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_integer_past_the_4300_digit_limit_is_a_config_error(tmp_path) -> None:
    # was: ValueError from PyYAML's int constructor (Python's int/str conversion limit)
    with pytest.raises(ConfigError, match="more than 4300 digits"):
        load_yaml(_yaml_file(tmp_path, "seed: " + "9" * 5000))
    with pytest.raises(ConfigError, match="more than 4300 digits"):
        apply_overrides({}, ["seed=" + "9" * 5000])


def test_deeply_nested_yaml_is_a_config_error(tmp_path) -> None:
    # was: RecursionError from the YAML parser
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml(_yaml_file(tmp_path, "a: " + "[" * 1000 + "]" * 1000))
    with pytest.raises(ConfigError, match="nested too deeply"):
        apply_overrides({}, ["model.x=" + "[" * 1000])
    nested: list = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(ConfigError, match="nested more than 64 levels"):
        apply_overrides({"a": nested}, [])  # was: RecursionError in deepcopy


def test_recursive_yaml_alias_is_a_config_error(tmp_path) -> None:
    # was: RecursionError in to_dict when the run saved its resolved config
    with pytest.raises(ConfigError, match="contains itself"):
        load_yaml(_yaml_file(tmp_path, "model: &a {preset: gpt2-tiny, x: *a}"))
    cyclic: dict = {"preset": "gpt2-tiny"}
    cyclic["x"] = cyclic
    with pytest.raises(ConfigError, match="contains itself"):
        from_dict(PretrainConfig, {"model": cyclic})


def test_yaml_alias_bomb_is_a_config_error(tmp_path) -> None:
    lines = ["a: &a [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 8):  # 10**8 values once expanded; a few hundred nodes as parsed
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml(_yaml_file(tmp_path, "\n".join(lines)))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"run_dir": 10**5000}, "'run_dir' must be a string, got int of"),  # was: ValueError
        ({"optim": {"lr": 10**400}}, "'optim.lr' is out of range"),  # was: OverflowError
        ({"train": {"epochs": -(10**400)}}, "'train.epochs' is out of range"),
        ({"seed": "1e20"}, "'seed' is out of range"),
        ({"loss": [10**5000]}, "'loss' must be a string"),  # was: ValueError in repr
    ],
)
def test_huge_numbers_in_a_config_are_config_errors(data, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(TrainJobConfig, {"layers": [{"type": "Dense", "units": 2}], **data})
    assert fragment in str(info.value)


def test_huge_model_sizes_are_config_errors() -> None:
    # was: accepted, then a 10**400-wide GPT would be built
    with pytest.raises(ConfigError, match="'model.n_embd' is out of range"):
        model_config("clm", {"preset": "gpt2-tiny", "n_embd": 10**400, "n_head": 1}, 100)


def test_damaged_gzip_csv_is_a_data_error(tmp_path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_bytes(b"a,b\n1,2\n")  # not compressed at all; was: gzip.BadGzipFile
    with pytest.raises(DataError, match="the file is damaged"):
        load_table(path)
    path.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n")[:-6])  # cut short; was: EOFError
    with pytest.raises(DataError, match="the file is damaged"):
        load_table(path)


def test_a_directory_as_a_table_says_so(tmp_path) -> None:
    # was: "data file not found", which is false and sends the user looking for a typo
    with pytest.raises(DataError, match="is a directory"):
        load_table(tmp_path)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"text": "a", "n": 1' + "0" * 5000 + "}", "more than 4300 digits"),  # was: ValueError
        ('{"text": ' + DEEP + "}", "nested too deeply"),  # was: RecursionError
    ],
)
def test_jsonl_lines_the_json_module_rejects_oddly(tmp_path, line, fragment) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=fragment):
        list(Corpus(path))
    corpus = Corpus(path, bad_rows="skip")
    assert list(corpus) == ["fine"] and corpus.skipped == 1


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: apply_overrides({}, ["ab\ncd"]), r"override 'ab\ncd' must look like"),
        (lambda: apply_overrides({"a": 1}, ["a.b\n=1"]), "'a' is not a section"),
        (lambda: from_dict(PretrainConfig, {"\x85": 1}), r"unknown config key '\x85'"),
        (lambda: from_dict(PretrainConfig, {"tokenizer": {"kind": "a\nb"}}), r"got 'a\nb'"),
        (lambda: from_dict(PretrainConfig, {"tokenizer": {"kind": 10**5000}}), "got int of"),
        (lambda: TabularDataConfig(task="a\u2028b"), r"data.task 'a\u2028b' is not valid"),
    ],
    ids=["override", "override section", "key", "literal", "literal huge int", "data.task"],
)
def test_messages_with_line_breaks_in_the_input_stay_one_line(call, fragment) -> None:
    # was: the raw text split the CLI's one-line error (or, for the huge int, a ValueError)
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and fragment in message, message


def test_a_csv_header_spanning_lines_gives_one_line_names(tmp_path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('a,"price\n(USD)"\n1,2\n', encoding="utf-8")
    table = load_table(path)
    assert table.names == ["a", "price (USD)"]
    with pytest.raises(DataError) as info:
        table.check_columns(["pric"])
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_garbage_numpy_file_names_the_format(tmp_path, suffix) -> None:
    # was: numpy's "contains pickled (object) data" for any non-NumPy bytes
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"garbage, not an array")
    with pytest.raises(DataError, match=f"is not a NumPy \\{suffix} file"):
        load_table(path)


def test_damaged_npy_header_is_a_data_error(tmp_path) -> None:
    path = tmp_path / "d.npy"
    path.write_bytes(_npy_bytes("[", b""))  # was: SyntaxError / tokenize.TokenError from numpy
    with pytest.raises(DataError, match="its NumPy header is damaged"):
        load_table(path)
