"""Seconds per epoch of the seed MLP: groundup vs a hand-written PyTorch loop, same process.

The seed model (784-128-64-10, relu, softmax, Adam, sparse categorical cross-entropy) for one
epoch over 60,000 x 784 synthetic samples, batch 32, on 2 threads. Each contender runs
`--repeats` times, interleaved so machine noise hits all of them alike; the best epoch of each
is compared to the best hand-written epoch. Keras 3 (torch backend) joins when installed.

    python benchmarks/bench_mlp.py [--repeats 3] [--samples 60000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    return x, y


def hand_written(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """The reference: tensors in memory, randperm indexing, torch.optim.Adam defaults."""
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    perm = torch.randperm(xt.shape[0])
    for i in range(0, xt.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def seed_model():
    import groundup as gu

    return gu.Sequential(
        [
            gu.layers.Dense(128, activation="relu", input_shape=(784,)),
            gu.layers.Dense(64, activation="relu"),
            gu.layers.Dense(10, activation="softmax"),
        ]
    )


def groundup_fit(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """`Sequential.fit` exactly as the tutorial calls it (accuracy metric included)."""
    torch.manual_seed(0)
    model = seed_model()
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu"
    )
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def groundup_trainer(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    """`gu.Trainer` on a plain torch module, no metrics: the engine alone."""
    import groundup as gu

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    trainer = gu.Trainer(
        model,
        loss=gu.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        device="cpu",
        verbose=0,
    )
    data = gu.TensorBatches(torch.from_numpy(x), torch.from_numpy(y), batch_size=batch_size)
    start = time.perf_counter()
    trainer.fit(data, epochs=1)
    return time.perf_counter() - start


def keras_fit(x: np.ndarray, y: np.ndarray, batch_size: int) -> float | None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    if keras.backend.backend() != "torch":
        return None
    model = keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = make_data(args.samples)
    contenders = {
        "hand-written loop": hand_written,
        "groundup Sequential.fit": groundup_fit,
        "groundup Trainer": groundup_trainer,
    }
    if not args.no_keras:
        contenders["keras 3 (torch backend)"] = keras_fit
    # warm-up: first calls pay for lazy initialisation (allocators, oneDNN kernels)
    for fn in contenders.values():
        fn(x[:2048], y[:2048], args.batch_size)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t = fn(x, y, args.batch_size)
            if t is not None:
                times[name].append(t)
    ref = min(times["hand-written loop"])
    print(
        f"seed MLP, {args.samples} x 784, batch {args.batch_size}, {args.threads} threads, "
        f"best of {args.repeats}, torch {torch.__version__}"
    )
    for name, ts in times.items():
        if not ts:
            print(f"{name:28s} not installed")
            continue
        best = min(ts)
        print(f"{name:28s} {best:6.3f} s/epoch   ratio {best / ref:5.2f}x")


if __name__ == "__main__":
    main()
