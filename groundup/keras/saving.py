"""Model folders: `architecture.json` (the layers, and for a functional model its graph) and
`model.safetensors` (the state dict), written by `model.save` and read by `gu.load_model`.

architecture.json says which model it holds in "class_name" ("Sequential" or "Functional";
files written before the functional API have none and are Sequential).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from groundup.checkpoint import load_weights as load_state
from groundup.checkpoint import save_weights as save_state
from groundup.errors import ConfigError, MissingFileError
from groundup.keras.layers import layer_from_config

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"


def layer_config(layer: nn.Module) -> dict[str, Any]:
    """A layer's config (a model used as a layer: its own architecture)."""
    return layer.get_config()  # type: ignore[operator]


def make_layer(config: Mapping[str, Any]) -> nn.Module:
    if "class_name" in config:  # a model used as a layer
        return model_from_config(config)
    return layer_from_config(dict(config))


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """A Sequential or functional model, unbuilt weights, from its `get_config()`."""
    from groundup.keras.functional import graph_from_config
    from groundup.keras.model import Model
    from groundup.keras.sequential import Sequential

    kind = config.get("class_name", "Sequential")
    if kind == "Sequential":
        return Sequential.from_config(config)
    if kind != "Functional":
        raise ConfigError(f"architecture of an unknown model class {kind!r}; re-save the model")
    inputs, outputs = graph_from_config(config["graph"], make_layer)
    return Model(
        _restructure(inputs, config["inputs"]),
        _restructure(outputs, config["outputs"]),
        name=config.get("name"),
    )


def _restructure(tensors: list[Any], spec: Mapping[str, Any]) -> Any:
    if spec["kind"] == "dict":
        return dict(zip(spec["names"], tensors))
    return list(tensors) if spec["kind"] == "list" else tensors[0]


def save_model(model: Any, path: str | Path) -> Path:
    """Write `path/` with architecture.json and model.safetensors (no pickle)."""
    if not model.built:
        raise ConfigError("the model is not built yet: give input_shape or fit it before saving")
    config = model.get_config()  # a subclassed model refuses here, before anything is written
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / ARCHITECTURE_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    kind = str(config.get("class_name", "Sequential")).lower()
    save_state(model, path / WEIGHTS_FILE, metadata={"format": f"groundup.{kind}"})
    return path


def load_folder(path: str | Path, compile: bool = True) -> Any:
    """Rebuild a saved model; re-compiles it when it was saved compiled with named parts."""
    path = Path(path)
    arch_file = path / ARCHITECTURE_FILE
    if not arch_file.is_file():
        raise MissingFileError(
            f"no {ARCHITECTURE_FILE} in {path}; give the folder model.save() wrote"
        )
    try:
        config = json.loads(arch_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{arch_file} is not valid JSON ({exc.msg}); re-save the model") from None
    model = model_from_config(config)
    load_state(model, path / WEIGHTS_FILE)
    args = config.get("compile") or {}
    if compile and args.get("loss"):
        model.compile(
            optimizer=args.get("optimizer") or "rmsprop",
            loss=args["loss"],
            metrics=args.get("metrics"),
            loss_weights=args.get("loss_weights"),
        )
    return model


def load_model(path: str | Path, allow_pickle: bool = False) -> Any:
    """Load any groundup model folder (or the run folder holding it).

    A `model.save` folder or a `groundup train` run gives the Keras-style model (Sequential or
    functional), as Keras's `load_model` does; a pretrain or finetune run, its `model/`, or a
    Hugging Face folder gives a `TaskModel` (`.model`, `.tokenizer`, `.task`, `.labels`) in
    eval mode."""
    from groundup.models.folders import load_model as load_task_model

    path = Path(path)
    for folder in (path, path / "model"):
        if (folder / ARCHITECTURE_FILE).is_file():
            return load_folder(folder)
    if (
        (path / "config.json").is_file()
        or (path / "config.yaml").is_file()
        or (path / "model" / "config.json").is_file()
    ):
        return load_task_model(path, allow_pickle=allow_pickle)
    return load_folder(path)  # nothing there: its error names what a folder needs
