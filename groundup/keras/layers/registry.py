"""LAYERS (lowercase name -> class) and `layer_from_config`, the inverse of `get_config`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groundup.errors import ConfigError
from groundup.keras.layers import (
    attention,
    augmentation,
    convolution,
    convolution_1d,
    convolution_2d_more,
    core,
    lookup,
    masking,
    merging,
    normalization,
    preprocessing,
    recurrent,
    reshaping,
    text_vectorization,
    wrappers,
)
from groundup.keras.layers.base import Layer
from groundup.registry import lookup as find

_CLASSES: list[type[Layer]] = [
    core.Input, core.Dense, core.Activation, core.Dropout, core.Flatten, core.Reshape,
    core.Rescaling, core.Embedding,
    convolution.Conv2D, convolution.MaxPool2D, convolution.AvgPool2D,
    convolution.GlobalAveragePooling2D, convolution.GlobalMaxPooling2D,
    convolution_1d.Conv1D, convolution_1d.MaxPool1D, convolution_1d.AvgPool1D,
    convolution_1d.GlobalAveragePooling1D, convolution_1d.GlobalMaxPooling1D,
    convolution_2d_more.Conv2DTranspose, convolution_2d_more.DepthwiseConv2D,
    convolution_2d_more.SeparableConv2D,
    reshaping.UpSampling1D, reshaping.UpSampling2D, reshaping.ZeroPadding1D,
    reshaping.ZeroPadding2D, reshaping.Cropping2D, reshaping.RepeatVector, reshaping.Permute,
    normalization.BatchNormalization, normalization.LayerNormalization,
    recurrent.SimpleRNN, recurrent.LSTM, recurrent.GRU,
    masking.Masking, masking.Lambda,
    merging.Add, merging.Subtract, merging.Multiply, merging.Average, merging.Maximum,
    merging.Minimum, merging.Concatenate,
    attention.MultiHeadAttention, wrappers.Bidirectional, wrappers.TimeDistributed,
    preprocessing.Normalization, lookup.StringLookup, lookup.IntegerLookup,
    text_vectorization.TextVectorization,
    augmentation.RandomFlip, augmentation.RandomRotation, augmentation.RandomZoom,
    augmentation.RandomTranslation, augmentation.RandomCrop,
]  # fmt: skip

# Keras' other spellings of the same layers.
_ALIASES: dict[str, type[Layer]] = {
    "inputlayer": core.Input,
    "maxpooling2d": convolution.MaxPool2D,
    "averagepooling2d": convolution.AvgPool2D,
    "globalavgpool2d": convolution.GlobalAveragePooling2D,
    "globalmaxpool2d": convolution.GlobalMaxPooling2D,
    "maxpooling1d": convolution_1d.MaxPool1D,
    "averagepooling1d": convolution_1d.AvgPool1D,
    "globalavgpool1d": convolution_1d.GlobalAveragePooling1D,
    "globalmaxpool1d": convolution_1d.GlobalMaxPooling1D,
}

LAYERS: dict[str, type[Layer]] = {cls.__name__.lower(): cls for cls in _CLASSES} | _ALIASES

# Checked at import: every class's own name must map back to it, or get_config could not
# be read back, and no alias may shadow another class.
for _cls in _CLASSES:
    assert LAYERS[_cls.__name__.lower()] is _cls, _cls
assert len(LAYERS) == len(_CLASSES) + len(_ALIASES), "an alias repeats a class name"


def layer_from_config(config: Mapping[str, Any]) -> Layer:
    """Rebuild a layer from `{"type": "Dense", "units": 64, ...}` (what `get_config` returns).

    The layer comes back unbuilt: build it (or run a batch) before loading its state_dict.
    """
    if not isinstance(config, Mapping) or "type" not in config:
        got = sorted(config, key=str) if isinstance(config, Mapping) else type(config).__name__
        raise ConfigError(
            f"a layer config must be a dict with a 'type' key like {{'type': 'Dense', "
            f"'units': 64}}, got {got}"
        )
    cls = find(LAYERS, config["type"], "layer")
    return cls.from_config(config)
