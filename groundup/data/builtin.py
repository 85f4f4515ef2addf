"""Built-in datasets: the small classics that ship inside scikit-learn's wheel (no download).

digits (UCI handwritten digits, 8x8 images with values 0..16), iris, wine, breast_cancer.
Values are kept raw; scaling is the Normalizer's job, fitted on the training split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from groundup.errors import ConfigError, DependencyError
from groundup.registry import lookup


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset holds; `image_shape` is set for image datasets (H, W, C)."""

    name: str
    n_samples: int
    n_features: int
    classes: list[str]
    feature_names: list[str]
    description: str
    image_shape: tuple[int, int, int] | None = None
    task: str = "classification"


def _sklearn_datasets() -> Any:
    try:
        from sklearn import datasets
    except ImportError as e:
        raise DependencyError(
            "the built-in datasets need scikit-learn: pip install 'groundup[datasets]'"
        ) from e
    return datasets


def _from_bunch(name: str, bunch: Any, description: str, image_shape: Any = None) -> tuple:
    x = np.ascontiguousarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    info = DatasetInfo(
        name=name,
        n_samples=x.shape[0],
        n_features=x.shape[1],
        classes=[str(c) for c in bunch.target_names],
        feature_names=[str(f) for f in bunch.feature_names],
        description=description,
        image_shape=image_shape,
    )
    return x, y, info


def _digits() -> tuple:
    bunch = _sklearn_datasets().load_digits()
    return _from_bunch(
        "digits", bunch, "UCI handwritten digits: 1797 8x8 images, values 0..16", (8, 8, 1)
    )


def _iris() -> tuple:
    bunch = _sklearn_datasets().load_iris()
    return _from_bunch("iris", bunch, "Fisher's iris: 150 flowers, 4 measurements, 3 species")


def _wine() -> tuple:
    bunch = _sklearn_datasets().load_wine()
    return _from_bunch("wine", bunch, "UCI wine: 178 wines, 13 chemical features, 3 cultivars")


def _breast_cancer() -> tuple:
    bunch = _sklearn_datasets().load_breast_cancer()
    return _from_bunch(
        "breast_cancer", bunch, "Wisconsin breast cancer: 569 tumours, 30 features, 2 classes"
    )


BUILTIN_DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, DatasetInfo]]] = {
    "digits": _digits,
    "iris": _iris,
    "wine": _wine,
    "breast_cancer": _breast_cancer,
}
IMAGE_DATASETS = ("digits",)


def load_dataset(name: str, as_images: bool = False) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """(x float32 (N, F), y int64 (N,), info) for a built-in dataset.

    as_images=True returns image datasets as (N, H, W, C), channels last (Keras layout).
    """
    loader = lookup(BUILTIN_DATASETS, name, "dataset")
    x, y, info = loader()
    if as_images:
        if info.image_shape is None:
            raise ConfigError(
                f"dataset '{info.name}' is not an image dataset; as_images works with: "
                f"{', '.join(IMAGE_DATASETS)}"
            )
        x = x.reshape(len(x), *info.image_shape)  # (N, 64) -> (N, 8, 8, 1)
    return x, y, info
