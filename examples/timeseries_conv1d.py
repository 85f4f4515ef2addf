"""Timeseries classification with Conv1D, Keras-style, on signals made up here: each series
of 128 steps is a noisy sine, square or sawtooth wave of random frequency, phase and
amplitude, with a random offset. The model (Normalization adapted to the training data, two
Conv1D blocks, global average pooling) tells the three shapes apart, which needs the local
form of the wave, not its level or spread.

python examples/timeseries_conv1d.py          # about 10 s on 2 CPU cores, accuracy ~0.97
python examples/timeseries_conv1d.py --quick  # a few seconds (what the tests run)
"""

from __future__ import annotations

import argparse

import numpy as np

import groundup as gu
from groundup import layers

STEPS = 128
SHAPES = ("sine", "square", "sawtooth")


def make_series(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, STEPS, 1) float32 series and their shape ids (n,)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    t = np.arange(STEPS)[None, :]  # (1, STEPS)
    cycles = rng.uniform(2.0, 6.0, (n, 1))  # periods over the window
    phase = rng.uniform(0.0, 1.0, (n, 1))
    u = (t * cycles / STEPS + phase) % 1.0  # (n, STEPS) position in the period, 0..1
    waves = np.stack(
        [np.sin(2 * np.pi * u), np.where(u < 0.5, 1.0, -1.0), 2.0 * u - 1.0], axis=1
    )  # (n, 3, STEPS)
    x = waves[np.arange(n), labels]  # (n, STEPS)
    x = x * rng.uniform(0.5, 2.0, (n, 1)) + rng.normal(0.0, 1.0, (n, 1))
    x = x + rng.normal(0.0, 0.3, x.shape)
    return x[..., None].astype("float32"), labels  # (n, STEPS, 1)


def main(quick: bool = False) -> float:
    """Train, print and return the test accuracy."""
    gu.set_seed(0)
    x_train, y_train = make_series(800 if quick else 2000, seed=1)
    x_test, y_test = make_series(300 if quick else 600, seed=2)

    norm = layers.Normalization(axis=None)  # one mean and variance for every step
    norm.adapt(x_train)
    model = gu.Sequential(
        [
            gu.Input(shape=(STEPS, 1)),
            norm,
            layers.Conv1D(32, 7, padding="same", activation="relu"),
            layers.MaxPooling1D(2),
            layers.Conv1D(32, 5, padding="same", activation="relu"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(len(SHAPES), activation="softmax"),
        ],
        name="wave_classifier",
    )
    model.compile(
        optimizer=gu.optimizers.Adam(learning_rate=3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.summary()
    model.fit(
        x_train,
        y_train,
        batch_size=32 if quick else 64,
        epochs=8 if quick else 12,
        validation_split=0.1,
        callbacks=[gu.callbacks.ReduceLROnPlateau(factor=0.5, patience=2)],
        verbose=2,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer series and epochs")
    main(parser.parse_args().quick)
