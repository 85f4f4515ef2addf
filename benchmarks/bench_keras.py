"""Seconds per epoch of a Keras-tutorial CNN and LSTM: groundup's `Sequential.fit` vs a
hand-written PyTorch loop vs Keras 3 (torch backend), same model, data, batch size and
epochs, in the same process.

- cnn: the Keras MNIST convnet (Conv2D 32 -> pool -> Conv2D 64 -> pool -> dropout -> softmax)
  on synthetic 28x28x1 images, batch 128, Adam, sparse categorical cross-entropy.
- lstm: an IMDB-style classifier (Embedding 20000x128 -> LSTM 64 -> sigmoid) on synthetic
  token ids of `--seq-len` steps, batch 64, Adam, binary cross-entropy.

The hand-written loops are what one would write in PyTorch (NCHW images made once, the fused
`nn.LSTM`, `torch.optim.Adam`, randperm batches, no metrics); groundup and Keras compile with
`metrics=["accuracy"]`, as the tutorials do. Each contender runs `--repeats` times, interleaved
so machine noise hits all alike, after a warm-up; the best epoch of each is compared with the
best hand-written one.

    python benchmarks/bench_keras.py [--models cnn,lstm] [--repeats 3] [--threads 2]
    python benchmarks/bench_keras.py --cnn-samples 512 --lstm-samples 256 --repeats 1  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 20_000
Data = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------- data
def cnn_data(n: int, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


def lstm_data(n: int, seq_len: int, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, (n, seq_len)).astype(np.int64)
    return x, rng.integers(0, 2, n).astype(np.float32)


# ---------------------------------------------------------------- hand-written PyTorch
def _torch_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = time.perf_counter()
    perm = torch.randperm(x.shape[0])
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def torch_cnn(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 5 * 5, 10),
    )  # fmt: skip
    start = time.perf_counter()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, once
    setup = time.perf_counter() - start
    return setup + _torch_loop(model, xt, torch.from_numpy(y), batch_size, F.cross_entropy)


class _TorchLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 128)
        self.lstm = nn.LSTM(128, 64, batch_first=True)
        self.head = nn.Linear(64, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embedding(ids))  # h: (1, B, 64)
        return self.head(h[0]).squeeze(-1)  # (B,) logits


def torch_lstm(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    torch.manual_seed(0)
    loss_fn = F.binary_cross_entropy_with_logits
    return _torch_loop(_TorchLSTM(), torch.from_numpy(x), torch.from_numpy(y), batch_size, loss_fn)


# ---------------------------------------------------------------- groundup and Keras
def _cnn_layers(lib):
    return [
        lib.Input(shape=(28, 28, 1)),
        lib.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        lib.layers.MaxPooling2D(pool_size=(2, 2)),
        lib.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        lib.layers.MaxPooling2D(pool_size=(2, 2)),
        lib.layers.Flatten(),
        lib.layers.Dropout(0.5),
        lib.layers.Dense(10, activation="softmax"),
    ]


def _lstm_layers(lib, seq_len: int):
    return [
        lib.Input(shape=(seq_len,), dtype="int64"),
        lib.layers.Embedding(VOCAB, 128),
        lib.layers.LSTM(64),
        lib.layers.Dense(1, activation="sigmoid"),
    ]


def _fit(model, loss: str, x: np.ndarray, y: np.ndarray, batch_size: int, **options) -> float:
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"], **options)
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    return time.perf_counter() - start


def groundup_fit(kind: str, seq_len: int) -> Callable[[np.ndarray, np.ndarray, int], float]:
    import groundup as gu

    def run(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        torch.manual_seed(0)
        if kind == "cnn":
            model = gu.Sequential(_cnn_layers(gu))
            return _fit(model, "sparse_categorical_crossentropy", x, y, batch_size, device="cpu")
        model = gu.Sequential(_lstm_layers(gu, seq_len))
        return _fit(model, "binary_crossentropy", x, y, batch_size, device="cpu")

    return run


def keras_fit(kind: str, seq_len: int) -> Callable[[np.ndarray, np.ndarray, int], float] | None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    if keras.backend.backend() != "torch":
        return None

    def run(x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
        keras.utils.set_random_seed(0)
        if kind == "cnn":
            model = keras.Sequential(_cnn_layers(keras))
            return _fit(model, "sparse_categorical_crossentropy", x, y, batch_size)
        model = keras.Sequential(_lstm_layers(keras, seq_len))
        return _fit(model, "binary_crossentropy", x, y, batch_size)

    return run


# ---------------------------------------------------------------- the comparison
def compare(title: str, contenders: dict, data: Data, batch_size: int, repeats: int) -> None:
    x, y = data
    warm = min(len(x), 4 * batch_size)
    for fn in contenders.values():  # first calls pay for lazy initialisation (oneDNN, allocators)
        fn(x[:warm], y[:warm], batch_size)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(fn(x, y, batch_size))
    ref = min(times["hand-written PyTorch"])
    print(title)
    for name, ts in times.items():
        best = min(ts)
        print(f"  {name:28s} {best:7.3f} s/epoch   ratio {best / ref:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,lstm", help="comma-separated: cnn, lstm")
    parser.add_argument("--cnn-samples", type=int, default=10_000)
    parser.add_argument("--lstm-samples", type=int, default=2_000)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {"cnn", "lstm"})
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from cnn, lstm")
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")
    for kind in kinds:
        contenders: dict = {
            "hand-written PyTorch": torch_cnn if kind == "cnn" else torch_lstm,
            "groundup Sequential.fit": groundup_fit(kind, args.seq_len),
        }
        keras_run = None if args.no_keras else keras_fit(kind, args.seq_len)
        if keras_run is not None:
            contenders["keras 3 (torch backend)"] = keras_run
        if kind == "cnn":
            data, batch = cnn_data(args.cnn_samples), 128
            title = f"CNN, {args.cnn_samples} x 28x28x1, batch {batch}"
        else:
            data, batch = lstm_data(args.lstm_samples, args.seq_len), 64
            title = f"LSTM, {args.lstm_samples} x {args.seq_len} tokens, batch {batch}"
        compare(title, contenders, data, batch, args.repeats)
        if keras_run is None and not args.no_keras:
            print("  keras 3 (torch backend)      not installed")


if __name__ == "__main__":
    main()
