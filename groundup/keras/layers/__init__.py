"""Keras-style layers (`gu.layers`): lazily built `nn.Module`s with configs, channels-last
images and batch-first sequences. See base.py for the contract every layer follows."""

from groundup.keras.layers.attention import MultiHeadAttention
from groundup.keras.layers.augmentation import (
    RandomCrop,
    RandomFlip,
    RandomRotation,
    RandomTranslation,
    RandomZoom,
)
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
from groundup.keras.layers.convolution_1d import (
    AveragePooling1D,
    AvgPool1D,
    Conv1D,
    GlobalAveragePooling1D,
    GlobalAvgPool1D,
    GlobalMaxPool1D,
    GlobalMaxPooling1D,
    MaxPool1D,
    MaxPooling1D,
)
from groundup.keras.layers.convolution_2d_more import (
    Conv2DTranspose,
    DepthwiseConv2D,
    SeparableConv2D,
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
from groundup.keras.layers.functional_shortcuts import (
    add,
    average,
    concatenate,
    maximum,
    minimum,
    multiply,
    subtract,
)
from groundup.keras.layers.initializers import INITIALIZERS
from groundup.keras.layers.lookup import IntegerLookup, StringLookup
from groundup.keras.layers.masking import Lambda, Masking
from groundup.keras.layers.merging import (
    Add,
    Average,
    Concatenate,
    Maximum,
    Minimum,
    Multiply,
    Subtract,
)
from groundup.keras.layers.normalization import BatchNormalization, LayerNormalization
from groundup.keras.layers.preprocessing import Normalization
from groundup.keras.layers.recurrent import GRU, LSTM, SimpleRNN
from groundup.keras.layers.registry import LAYERS, layer_from_config
from groundup.keras.layers.reshaping import (
    Cropping2D,
    Permute,
    RepeatVector,
    UpSampling1D,
    UpSampling2D,
    ZeroPadding1D,
    ZeroPadding2D,
)
from groundup.keras.layers.text_vectorization import TextVectorization
from groundup.keras.layers.wrappers import Bidirectional, TimeDistributed

InputLayer = Input

__all__ = [
    "Activation",
    "Add",
    "Average",
    "AveragePooling1D",
    "AveragePooling2D",
    "AvgPool1D",
    "AvgPool2D",
    "BatchNormalization",
    "Bidirectional",
    "Concatenate",
    "Conv1D",
    "Conv2D",
    "Conv2DTranspose",
    "Cropping2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Embedding",
    "Flatten",
    "GRU",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAvgPool1D",
    "GlobalAvgPool2D",
    "GlobalMaxPool1D",
    "GlobalMaxPool2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "INITIALIZERS",
    "Input",
    "InputLayer",
    "IntegerLookup",
    "LAYERS",
    "LSTM",
    "Lambda",
    "Layer",
    "LayerNormalization",
    "Masking",
    "MaxPool1D",
    "MaxPool2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "Maximum",
    "Minimum",
    "MultiHeadAttention",
    "Multiply",
    "Normalization",
    "Permute",
    "RandomCrop",
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomZoom",
    "RepeatVector",
    "Rescaling",
    "Reshape",
    "SeparableConv2D",
    "SimpleRNN",
    "StringLookup",
    "Subtract",
    "TextVectorization",
    "TimeDistributed",
    "UpSampling1D",
    "UpSampling2D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "add",
    "average",
    "concatenate",
    "layer_from_config",
    "maximum",
    "minimum",
    "multiply",
    "reset_layer_names",
    "subtract",
]
