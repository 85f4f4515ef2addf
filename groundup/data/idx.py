"""Reader for the IDX format of the MNIST files (and Fashion-MNIST, EMNIST, KMNIST).

Layout: two zero bytes, a type byte, a byte with the number of dimensions, then one
big-endian uint32 per dimension, then the values in big-endian C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from groundup.errors import DataError, MissingFileError

# Type byte of the magic number -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def load_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not), in native byte order."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"IDX file not found: {path}; check the path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path} is a damaged gzip file ({e}); download it again") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            "expected e.g. 00000803 for MNIST images"
        )
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated or declares {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file has "
            f"{len(raw) - header}; the file is truncated or corrupted, download it again"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native order, and a writable copy


def _find(directory: Path, stem: str) -> Path:
    # Some mirrors write "train-images.idx3-ubyte" (a dot before idx); accept both, gzipped too.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise MissingFileError(
        f"{directory} has no '{stem}' (or {stem}.gz); an MNIST directory holds "
        f"{', '.join(MNIST_FILES.values())}"
    )


def load_mnist(
    directory: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from the four standard MNIST files in `directory`.

    Images stay uint8 (N, 28, 28) like the files (scale them, e.g. x / 255); labels are int64.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise MissingFileError(f"MNIST directory not found: {directory}; check the path")
    arrays = {key: load_idx(_find(directory, stem)) for key, stem in MNIST_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"MNIST {split} files do not match: {len(x)} images but labels of shape "
                f"{y.shape}; re-download the {split} files"
            )
    return (
        arrays["x_train"],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"],
        arrays["y_test"].astype(np.int64),
    )
