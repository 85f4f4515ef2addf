"""Random number generator states for exact resume: torch (and CUDA) states as tensors for a
safetensors file, the numpy and Python states as JSON for state.json."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict]:
    """torch RNG states as tensors; numpy and python states as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(
        (k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    if cuda and torch.cuda.is_available():
        # a resume on a machine with fewer GPUs restores the devices it has
        for i, key in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(tensors[key], i)
    if "numpy" in meta:
        s = meta["numpy"]
        np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), *s[2:]))
    if "python" in meta:
        s = meta["python"]
        random.setstate((s[0], tuple(s[1]), s[2]))
