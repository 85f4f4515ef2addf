"""LAYERS (lowercase name -> class) and `layer_from_config`, the inverse of `get_config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groundup.errors import ConfigError
from groundup.keras.layers.base import Layer
from groundup.keras.layers.convolution import (
    AvgPool2D,
    Conv2D,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPool2D,
)
from groundup.keras.layers.core import (
    Activation,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Input,
    Rescaling,
    Reshape,
)
from groundup.keras.layers.normalization import BatchNormalization, LayerNormalization
from groundup.keras.layers.recurrent import GRU, LSTM, SimpleRNN
from groundup.registry import lookup

LAYERS: dict[str, type[Layer]] = {
    "input": Input,
    "inputlayer": Input,
    "dense": Dense,
    "activation": Activation,
    "dropout": Dropout,
    "flatten": Flatten,
    "reshape": Reshape,
    "rescaling": Rescaling,
    "embedding": Embedding,
    "conv2d": Conv2D,
    "maxpool2d": MaxPool2D,
    "maxpooling2d": MaxPool2D,
    "avgpool2d": AvgPool2D,
    "averagepooling2d": AvgPool2D,
    "globalaveragepooling2d": GlobalAveragePooling2D,
    "globalavgpool2d": GlobalAveragePooling2D,
    "globalmaxpooling2d": GlobalMaxPooling2D,
    "globalmaxpool2d": GlobalMaxPooling2D,
    "batchnormalization": BatchNormalization,
    "layernormalization": LayerNormalization,
    "simplernn": SimpleRNN,
    "lstm": LSTM,
    "gru": GRU,
}

# Checked at import: every class's own name must map back to it, or get_config could not
# be read back.
for _cls in set(LAYERS.values()):
    assert LAYERS[_cls.__name__.lower()] is _cls, _cls


def layer_from_config(config: Mapping[str, Any]) -> Layer:
    """Rebuild a layer from `{"type": "Dense", "units": 64, ...}` (what `get_config` returns).

    The layer comes back unbuilt: build it (or run a batch) before loading its state_dict.
    """
    if not isinstance(config, Mapping) or "type" not in config:
        got = sorted(config) if isinstance(config, Mapping) else type(config).__name__
        raise ConfigError(
            f"a layer config must be a dict with a 'type' key like {{'type': 'Dense', "
            f"'units': 64}}, got {got}"
        )
    cls = lookup(LAYERS, config["type"], "layer")
    return cls.from_config(config)
