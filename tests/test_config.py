"""Typed configs: YAML, dotted overrides, unknown keys, wrong types, ranges, malformed files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from groundup.config import (
    apply_overrides,
    check,
    from_dict,
    load_config,
    load_yaml,
    parse_override,
    to_dict,
)
from groundup.errors import ConfigError, MissingFileError
from groundup.jobs.train_tabular import TrainJobConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Inner:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    name: str = "adam"

    def __post_init__(self) -> None:
        check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")


@dataclass
class Outer:
    seed: int = 0
    flag: bool = False
    tag: str | None = None
    optim: Inner = field(default_factory=Inner)


def test_nested_from_dict_and_round_trip() -> None:
    cfg = from_dict(Outer, {"seed": 3, "optim": {"lr": "3e-4", "betas": [0.8, 0.9]}})
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string
    assert cfg.optim.betas == [0.8, 0.9]
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_did_you_mean() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'lr'\?\)"
    ):
        from_dict(Outer, {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="valid keys: seed, flag, tag, optim"):
        from_dict(Outer, {"sed": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seed": "three"}, "'seed' must be an integer, got str 'three'"),
        ({"seed": 1.5}, "'seed' must be an integer"),
        ({"flag": "yes please"}, "'flag' must be true or false"),
        ({"optim": {"lr": "fast"}}, "'optim.lr' must be a number"),
        ({"optim": {"betas": 0.9}}, "'optim.betas' must be a list"),
        ({"optim": {"betas": [0.9, "x"]}}, r"'optim.betas\[1\]' must be a number"),
        ({"optim": 5}, "'optim' must be a mapping"),
        ({"optim": {"lr": -1}}, "optim.lr must be > 0, got -1"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides() -> None:
    data = apply_overrides(
        {"optim": {"lr": 0.1}}, ["optim.lr=3e-4", "seed=7", "optim.betas=[0.1, 0.2]", "tag=null"]
    )
    cfg = from_dict(Outer, data)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.seed == 7 and cfg.optim.betas == [0.1, 0.2]
    assert cfg.tag is None
    assert parse_override("a.b=hello") == ("a.b", "hello")
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_malformed_and_missing_yaml(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\nseed: 3\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml at line \d+"):
        load_yaml(bad)
    with pytest.raises(MissingFileError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_yaml(scalar)


# sweep-*: search spaces, checked against their configs in test_sweep
@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("sweep-")),
    ids=lambda p: p.name,
)
def test_every_shipped_config_loads(path) -> None:
    """Every config in configs/ validates against its command's dataclass."""
    load_config(config_class_for(path.name), path)


def config_class_for(name: str) -> type:
    """configs/ naming: `pretrain-*.yaml` for `groundup pretrain`, `finetune-*.yaml` for
    `groundup finetune`, the rest for `groundup train`."""
    if name.startswith("pretrain-"):
        from groundup.jobs.pretrain import PretrainConfig

        return PretrainConfig
    if name.startswith("finetune-"):
        from groundup.jobs.finetune import FinetuneConfig

        return FinetuneConfig
    return TrainJobConfig


def test_train_config_errors() -> None:
    with pytest.raises(ConfigError, match="layers is empty"):
        from_dict(TrainJobConfig, {"layers": []})
    with pytest.raises(ConfigError, match="train.batch_size must be an integer >= 1"):
        from_dict(
            TrainJobConfig, {"layers": [{"type": "Dense", "units": 1}], "train": {"batch_size": 0}}
        )
