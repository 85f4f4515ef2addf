"""An MNIST-style convolutional network, Keras-style, on the handwritten digits that ship with
scikit-learn (1,797 images of 8x8, upsampled to 16x16 inside the model): two Conv2D blocks,
dropout and a softmax, trained with early stopping. Nothing downloads.

python examples/mnist_cnn.py            # about 15 s on 2 CPU cores, test accuracy ~0.98
python examples/mnist_cnn.py --quick    # a few seconds (what the tests run)
"""

from __future__ import annotations

import argparse

import groundup as gu
from groundup import layers


def build_model() -> gu.Sequential:
    return gu.Sequential(
        [
            gu.Input(shape=(8, 8, 1)),
            layers.UpSampling2D(2),  # (16, 16, 1): closer to MNIST's scale
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),  # (8, 8, 32)
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),  # (4, 4, 64)
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(10, activation="softmax"),
        ],
        name="digits_cnn",
    )


def main(quick: bool = False) -> float:
    """Train, print and return the test accuracy."""
    gu.set_seed(0)
    x, y, _ = gu.data.load_dataset("digits", as_images=True)  # (1797, 8, 8, 1), 0..16
    x = x / 16.0
    train_idx, _, test_idx = gu.data.split_indices(len(x), y, test_size=0.2, stratify=True, seed=0)
    if quick:
        train_idx = train_idx[:400]
    model = build_model()
    model.compile(
        optimizer=gu.optimizers.Adam(learning_rate=2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.summary()
    model.fit(
        x[train_idx],
        y[train_idx],
        batch_size=64,
        epochs=4 if quick else 15,
        validation_split=0.1,
        callbacks=[gu.callbacks.EarlyStopping(patience=3, restore_best_weights=True)],
        verbose=2,
    )
    _, accuracy = model.evaluate(x[test_idx], y[test_idx], verbose=0)
    print(f"test accuracy: {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs")
    main(parser.parse_args().quick)
