"""A functional model with two inputs and two outputs, Keras-style: each handwritten digit
(scikit-learn's 8x8 digits) is split into its top and bottom halves, each half goes through
its own branch, the branches are concatenated, and two heads answer "which digit?" (softmax)
and "is it even?" (sigmoid). Neither half alone tells a 3 from a 9 or a 1 from a 7 reliably;
together they do.

python examples/functional_two_inputs.py          # about 10 s on 2 CPU cores, digit ~0.97
python examples/functional_two_inputs.py --quick  # a few seconds (what the tests run)
"""

from __future__ import annotations

import argparse

import groundup as gu
from groundup import layers


def build_model() -> gu.Model:
    top = gu.Input(shape=(4, 8, 1), name="top")
    bottom = gu.Input(shape=(4, 8, 1), name="bottom")
    branches = []
    for half in (top, bottom):
        x = layers.Conv2D(16, 3, padding="same", activation="relu")(half)
        x = layers.Flatten()(x)
        branches.append(layers.Dense(64, activation="relu")(x))
    x = layers.concatenate(branches)
    x = layers.Dropout(0.2)(x)
    digit = layers.Dense(10, activation="softmax", name="digit")(x)
    even = layers.Dense(1, activation="sigmoid", name="even")(x)
    return gu.Model(inputs=[top, bottom], outputs=[digit, even], name="two_halves")


def main(quick: bool = False) -> dict[str, float]:
    """Train, print and return the test figures (loss, per-output losses and metrics)."""
    gu.set_seed(0)
    x, y, _ = gu.data.load_dataset("digits", as_images=True)  # (1797, 8, 8, 1)
    x = x / 16.0
    train_idx, _, test_idx = gu.data.split_indices(len(x), y, test_size=0.2, stratify=True, seed=0)
    if quick:
        train_idx = train_idx[:500]

    def feed(idx):
        inputs = {"top": x[idx, :4], "bottom": x[idx, 4:]}
        targets = {"digit": y[idx], "even": (y[idx] % 2 == 0).astype("float32")}
        return inputs, targets

    model = build_model()
    model.compile(
        optimizer=gu.optimizers.Adam(learning_rate=2e-3),
        loss={"digit": "sparse_categorical_crossentropy", "even": "binary_crossentropy"},
        loss_weights={"digit": 1.0, "even": 0.5},
        metrics={"digit": ["accuracy"], "even": ["accuracy"]},
    )
    model.summary()
    inputs, targets = feed(train_idx)
    model.fit(
        inputs,
        targets,
        batch_size=64,
        epochs=5 if quick else 20,
        validation_split=0.1,
        verbose=2,
    )
    logs = model.evaluate(*feed(test_idx), return_dict=True, verbose=0)
    print(f"test accuracy: digit {logs['digit_accuracy']:.4f}, even {logs['even_accuracy']:.4f}")
    return logs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs")
    main(parser.parse_args().quick)
