"""The tutorial's seed example (the README's "Ten lines of Python"), on the bundled digits dataset.

python examples/seed_mlp.py
"""

import groundup as gu

x, y, info = gu.data.load_dataset("digits")  # 1797 8x8 images, flattened to 64 features
train_idx, _, test_idx = gu.data.split_indices(len(x), y, test_size=0.2, stratify=True, seed=0)
x = x / 16.0  # pixel intensities 0..16 -> 0..1
x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]

gu.set_seed(0)
model = gu.Sequential(
    [
        gu.layers.Dense(128, activation="relu", input_shape=(64,)),
        gu.layers.Dense(64, activation="relu"),
        gu.layers.Dense(10, activation="softmax"),
    ]
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(
    x_train,
    y_train,
    epochs=10,
    batch_size=32,
    validation_split=0.1,
    callbacks=[gu.callbacks.EarlyStopping(patience=3, restore_best_weights=True)],
)
loss, accuracy = model.evaluate(x_test, y_test)
print(f"test accuracy: {accuracy:.4f}")
