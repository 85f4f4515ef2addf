"""groundup: build, pretrain from scratch and fine-tune deep-learning models on PyTorch.

import groundup as gu
model = gu.Sequential([gu.layers.Dense(64, activation="relu"), gu.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=5)
"""

from groundup import checkpoint, data, errors, evals
from groundup.generate import generate
from groundup.keras import activations, layers, regularizers
from groundup.keras.sequential import Sequential, load_model
from groundup.models.gpt import GPT, GPTConfig
from groundup.seed import set_seed
from groundup.train import callbacks, losses, metrics, optim, schedules
from groundup.train.batches import TensorBatches
from groundup.train.history import History
from groundup.train.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "GPTConfig",
    "generate",
    "History",
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
    "optim",
    "regularizers",
    "schedules",
    "set_seed",
]
