"""groundup: build, pretrain from scratch and fine-tune deep-learning models on PyTorch.

import groundup as gu
model = gu.Sequential([gu.layers.Dense(64, activation="relu"), gu.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=5)

A Keras tutorial runs with one changed line: `import groundup as keras` (`from groundup import
layers`); gu.Input / gu.Model give the functional and subclassed APIs (docs/keras.md).
"""

from groundup import checkpoint, data, errors, evals, models
from groundup.generate import generate
from groundup.keras import activations, layers, losses, metrics, ops, regularizers, saving, utils
from groundup.keras import callback_names as callbacks
from groundup.keras.model import Model
from groundup.keras.saving import load_model
from groundup.keras.sequential import Sequential
from groundup.keras.symbolic import Input, KerasTensor
from groundup.models.gpt import GPT, GPTConfig
from groundup.seed import set_seed
from groundup.train import optim, schedules
from groundup.train.batches import TensorBatches
from groundup.train.history import History
from groundup.train.trainer import Trainer

optimizers = optim  # Keras' name: keras.optimizers.Adam(learning_rate=1e-3)
# Keras' keras.models: the model classes and load_model, beside the GPT family's modules
models.Sequential, models.Model, models.load_model = Sequential, Model, load_model

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "generate",
    "History",
    "Input",
    "KerasTensor",
    "Model",
    "Sequential",
    "TensorBatches",
    "Trainer",
    "activations",
    "callbacks",
    "checkpoint",
    "data",
    "errors",
    "evals",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "models",
    "ops",
    "optim",
    "optimizers",
    "regularizers",
    "saving",
    "schedules",
    "set_seed",
    "utils",
]
