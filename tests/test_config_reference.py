"""The config reference generated from the dataclasses, `groundup config show|init`, the shipped
configs as package data, and the quickstart's stage configs built from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from groundup.cli import main
from groundup.config import from_dict, load_config, to_dict
from groundup.config_reference import (
    COMMANDS,
    REGENERATE,
    command_markdown,
    config_class,
    config_keys,
    reference_markdown,
    type_name,
)
from groundup.configs import SHIPPED, shipped_config
from groundup.errors import ConfigError, MissingFileError

ROOT = Path(__file__).resolve().parents[1]
# what each command's config needs besides its defaults before its own checks pass
REQUIRED = {
    "train": ["layers=[{type: Dense, units: 2}]"],
    "pretrain": [],
    "finetune": ["base.path=runs/base", "data.builtin=stdlib-qa"],
}


def leaf_defaults(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> default of every non-section field of a built config (null sections are
    leaves here: their value is None)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(leaf_defaults(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = to_dict(value)
    return out


def table_rows(markdown: str) -> dict[str, tuple[str, str, str]]:
    """key -> (type, default, meaning) from a reference table."""
    rows = {}
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith("| key "):
            continue
        cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
        key = cells[0].strip("*").strip("`")
        rows[key] = (cells[1], cells[2].strip("`").strip(), cells[3] if len(cells) > 3 else "")
    return rows


# ------------------------------------------------------------------------ the reference
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_key_appears_with_its_default(command) -> None:
    cls = config_class(command)
    built = load_config(cls, None, REQUIRED[command])
    given = {o.split("=")[0] for o in REQUIRED[command]}
    rows = table_rows(command_markdown(command))
    for key, value in leaf_defaults(built).items():
        assert key in rows, f"{command}: {key} missing from the reference"
        if key not in given:
            shown = rows[key][1]
            assert yaml.safe_load(shown) == value, (
                f"{command}: {key} shows {shown!r}, not {value!r}"
            )


def test_types_and_meanings_come_from_the_source() -> None:
    rows = table_rows(command_markdown("pretrain"))
    assert rows["train.nan_policy"][0] == "one of: stop, skip, rollback"
    assert (
        rows["train.nan_policy"][2] == "on a non-finite loss or gradient norm"
    )  # trailing comment
    assert rows["train.eval_batches"][0] == "int | null"
    assert rows["optim.betas"] == (
        "list of float | null",
        "[0.9, 0.99]",
        "adam/adamw: [beta1, beta2], each in [0, 1)",
    )
    assert rows["optim"][0] == "section" and rows["optim"][2].startswith("The optimizer")
    assert rows["model"][0] == "mapping" and "preset" in rows["model"][1]
    assert "newest complete checkpoint" in rows["resume"][2]  # the comment above the field
    assert yaml.safe_load(rows["sample.prompt"][1]) == "\n"  # a newline survives the table
    rows = table_rows(command_markdown("train"))
    assert rows["early_stopping"][:2] == ("section | null", "null")
    assert rows["early_stopping.patience"][1] == "3"  # the default once the section is given


@dataclass
class _Inner:
    """An inner section."""

    depth: int = 1  # how deep


@dataclass
class _Base:
    kind: Literal["a", "b"] | None = None  # a kind, or none


@dataclass
class _Toy(_Base):
    """A config the walker has never seen."""

    # a comment above
    # on two lines
    name: str = "x"
    long: str | None = None  # the comment of a field that spans lines
    inner: _Inner = field(default_factory=_Inner)
    maybe: _Inner | None = None
    items: list[_Inner] = field(default_factory=list)
    table: dict[str, _Inner] = field(default_factory=dict)
    plain: dict[str, Any] = field(default_factory=lambda: {"k": [1, 2]})
    bare: int = 0


def test_the_walker_is_generic() -> None:
    keys = {k.name: k for k in config_keys(_Toy)}
    assert list(keys)[:3] == ["kind", "name", "long"]  # base-class fields first, as dataclasses
    assert (keys["kind"].type, keys["kind"].meaning) == ("one of: a, b | null", "a kind, or none")
    assert keys["name"].meaning == "a comment above on two lines"
    assert keys["long"].meaning == "the comment of a field that spans lines"
    assert keys["inner"].section and keys["inner"].meaning == "An inner section."
    assert keys["inner.depth"].default == 1 and keys["inner.depth"].meaning == "how deep"
    assert keys["maybe"].default is None and keys["maybe"].type == "section | null"
    assert not keys["maybe.depth"].live and keys["maybe.depth"].default == 1
    assert keys["items"].type == "list of section" and "items[].depth" in keys
    assert keys["table"].type == "mapping of section" and "table.<name>.depth" in keys
    assert keys["plain"].type == "mapping" and keys["plain"].default == {"k": [1, 2]}
    assert keys["bare"].meaning == ""
    assert type_name(tuple[int, ...]) == "list of int"
    assert type_name(list[int | None]) == "list of (int | null)"


# ------------------------------------------------------------------------ config init
@pytest.mark.parametrize("command", list(COMMANDS))
def test_config_init_loads_back_to_the_defaults(command, tmp_path, capsys) -> None:
    assert main(["config", "init", command]) == 0
    path = tmp_path / "my.yaml"
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    cls = config_class(command)
    loaded = load_config(cls, path, REQUIRED[command])
    assert to_dict(loaded) == to_dict(load_config(cls, None, REQUIRED[command]))
    if REQUIRED[command]:  # the template says what to fill in: the config's own first check
        with pytest.raises(ConfigError) as exc:
            load_config(cls, path)
        assert " ".join(str(exc.value).split()) in path.read_text()
    else:
        assert to_dict(load_config(cls, path)) == to_dict(from_dict(cls, {}))
    assert all(line.startswith("#") for line in path.read_text().splitlines()[:2])


def test_config_init_comments_out_null_sections(capsys) -> None:
    main(["config", "init", "train"])
    text = capsys.readouterr().out
    assert "\nearly_stopping: null" in text and "  # patience: 3" in text
    assert "nan_policy: stop" in text and "# on a non-finite loss or gradient norm" in text
    assert yaml.safe_load(text)["early_stopping"] is None


# ------------------------------------------------------------------------ docs and CLI
def test_docs_config_md_is_current() -> None:
    doc = ROOT / "docs" / "config.md"
    assert doc.is_file(), f"docs/config.md is missing; generate it: {REGENERATE}"
    assert doc.read_text(encoding="utf-8") == reference_markdown(), (
        f"docs/config.md is out of date with the config dataclasses; regenerate it: {REGENERATE}"
    )
    assert REGENERATE in doc.read_text(encoding="utf-8").splitlines()[3]


def test_config_show(capsys) -> None:
    assert main(["config", "show", "pretrain"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("train.max_steps "))
    assert line.split()[1:3] == ["int", "2000"]
    assert "one of: stop, skip, rollback" in out
    assert main(["config", "show", "finetune", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == command_markdown("finetune")


@pytest.mark.parametrize("argv", [["config", "show", "nope"], ["config", "init"]])
def test_config_bad_command_exits_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    if "nope" in argv:
        assert "invalid choice: 'nope'" in err and all(c in err for c in COMMANDS)


# ------------------------------------------------------------------------ shipped configs
def test_shipped_configs_are_package_data() -> None:
    import groundup.configs

    here = Path(groundup.configs.__file__).parent
    assert {"digits-mlp.yaml", "pretrain-pydocs.yaml", "finetune-sft-lora.yaml"} <= set(SHIPPED)
    assert (
        shipped_config("digits-mlp")
        == shipped_config("digits-mlp.yaml")
        == here / "digits-mlp.yaml"
    )
    assert (ROOT / "configs").resolve() == here.resolve()  # the README's configs/ paths
    with pytest.raises(MissingFileError, match="did you mean 'digits-mlp.yaml'"):
        shipped_config("digits-mpl")
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "*.yaml" in project["tool"]["setuptools"]["package-data"]["groundup.configs"]


# ------------------------------------------------------------------------ quickstart
def test_quickstart_stage_configs_keep_their_values(tmp_path) -> None:
    from groundup.jobs.quickstart import stage_configs

    cfgs = stage_configs(tmp_path / "qs")
    digits, gpt, sft = cfgs["digits"], cfgs["gpt"], cfgs["sft"]
    assert digits.run_dir == str(tmp_path / "qs" / "digits-mlp")
    assert (digits.data.dataset, digits.train.epochs, digits.train.batch_size) == ("digits", 10, 32)
    assert digits.metrics == ["accuracy"] and digits.early_stopping is None
    assert [layer["units"] for layer in digits.layers] == [128, 64, 10]
    assert (gpt.train.max_steps, gpt.train.eval_every, gpt.train.eval_batches) == (500, 250, 10)
    assert gpt.model["n_embd"] == 256 and gpt.model["n_layer"] == 4
    assert (gpt.optim.name, gpt.optim.lr, gpt.optim.warmup_steps) == ("muon", 0.02, 50)
    assert gpt.model["recipe"] == "modern" and gpt.sample.max_new_tokens == 80
    assert gpt.tokenizer.vocab_size == 4096 and gpt.train.batch_size == 16
    assert sft.base.path == gpt.run_dir and sft.method == "full"
    assert (sft.train.epochs, sft.train.eval_every, sft.train.log_every) == (2, None, 20)
    assert sft.optim.lr == 1e-3 and sft.run_dir.endswith("pydocs-sft")


def test_quickstart_overrides_go_to_their_stage(tmp_path) -> None:
    from groundup.jobs.quickstart import stage_configs

    over = ["train.max_steps=7", "digits.train.epochs=2", "sft.train.epochs=3", "run_dir=elsewhere"]
    cfgs = stage_configs(tmp_path, over)
    assert cfgs["gpt"].train.max_steps == 7 and cfgs["digits"].train.epochs == 2
    assert cfgs["sft"].train.epochs == 3 and cfgs["sft"].base.path == "elsewhere"


@pytest.mark.parametrize("bad", ["nope.key=1", "sft.train.epochz=1", "model.n_layr=2"])
def test_quickstart_bad_override_fails_before_training(bad, tmp_path, capsys, monkeypatch) -> None:
    from groundup.jobs import quickstart

    trained = []
    for name in ("run_train", "run_pretrain", "run_finetune"):
        monkeypatch.setattr(quickstart, name, lambda *a, **k: trained.append(a))
    run_dir = tmp_path / "qs"
    assert main(["quickstart", bad, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad.split("=")[0].split(".")[-2] in err and bad in err
    assert not run_dir.exists() and not trained
