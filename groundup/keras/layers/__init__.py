"""Keras-style layers (`gu.layers`): lazily built `nn.Module`s with configs, channels-last
images and batch-first sequences. See base.py for the contract every layer follows."""

from groundup.keras.layers.base import Layer, reset_layer_names
from groundup.keras.layers.convolution import (
    AveragePooling2D,
    AvgPool2D,
    Conv2D,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    MaxPool2D,
    MaxPooling2D,
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
from groundup.keras.layers.initializers import INITIALIZERS
from groundup.keras.layers.normalization import BatchNormalization, LayerNormalization
from groundup.keras.layers.recurrent import GRU, LSTM, SimpleRNN
from groundup.keras.layers.registry import LAYERS, layer_from_config

InputLayer = Input

__all__ = [
    "INITIALIZERS",
    "LAYERS",
    "GRU",
    "LSTM",
    "Activation",
    "AveragePooling2D",
    "AvgPool2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "GlobalMaxPooling2D",
    "Input",
    "InputLayer",
    "Layer",
    "LayerNormalization",
    "MaxPool2D",
    "MaxPooling2D",
    "Rescaling",
    "Reshape",
    "SimpleRNN",
    "layer_from_config",
    "reset_layer_names",
]
