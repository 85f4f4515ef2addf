"""StringLookup and IntegerLookup: tokens to indices (or one/multi-hot, count, tf-idf rows).

They run before tensors exist, on NumPy arrays or lists, and return tensors:

    lookup = gu.layers.StringLookup()
    lookup.adapt(["red", "green", "red", "blue"])       # vocabulary by frequency
    ids = lookup(np.array([["red"], ["mauve"]]))         # tensor([[2], [0]]): 0 is OOV

Index layout, as Keras: in "int" mode [mask token (if any)] + OOV indices + vocabulary; in
the other modes there is no mask slot and mask tokens in the input are dropped. `adapt` sorts
by count, ties by the token (descending), as Keras does. With several OOV indices a token's
bucket is a stable hash (CRC-32 of its UTF-8 bytes; an integer's value modulo the count),
not TensorFlow's FarmHash, so buckets differ from Keras's. The vocabulary is part of the
config, so an adapted layer saves and loads with its model.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groundup.errors import ConfigError, DataError, MissingFileError
from groundup.keras.layers.base import Layer, Shape, choice

OUTPUT_MODES = ("int", "one_hot", "multi_hot", "count", "tf_idf")


class _Lookup(Layer):
    """The vocabulary, its layout and the output modes; subclasses say what a token is."""

    _repr_keys = ("output_mode",)

    def __init__(
        self,
        max_tokens: int | None,
        num_oov_indices: int,
        mask_token: Any,
        oov_token: Any,
        vocabulary: Any,
        idf_weights: Any,
        invert: bool,
        output_mode: str,
        pad_to_max_tokens: bool,
        input_shape: Sequence[int | None] | None,
        name: str | None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ConfigError(f"{self._who}: max_tokens must be None or an int >= 1")
        if isinstance(num_oov_indices, bool) or not isinstance(num_oov_indices, int):
            raise ConfigError(f"{self._who}: num_oov_indices must be an int >= 0")
        if num_oov_indices < 0:
            raise ConfigError(f"{self._who}: num_oov_indices must be an int >= 0")
        self.max_tokens, self.num_oov_indices = max_tokens, num_oov_indices
        self.mask_token = None if mask_token is None else self._token(mask_token, "mask_token")
        self.oov_token = self._token(oov_token, "oov_token")
        self.output_mode = choice(output_mode, "output_mode", OUTPUT_MODES, self._who)
        self.invert = bool(invert)
        if self.invert and self.output_mode != "int":
            raise ConfigError(f"{self._who}: invert=True needs output_mode='int'")
        self.pad_to_max_tokens = bool(pad_to_max_tokens)
        if self.pad_to_max_tokens and self.max_tokens is None:
            raise ConfigError(f"{self._who}: pad_to_max_tokens=True needs max_tokens")
        self._vocab: list[Any] = []
        self._index: dict[Any, int] = {}
        self._idf: np.ndarray | None = None
        if idf_weights is not None and vocabulary is None:
            raise ConfigError(f"{self._who}: idf_weights needs a vocabulary to go with")
        if vocabulary is not None:
            self.set_vocabulary(vocabulary, idf_weights)
        elif self.output_mode == "tf_idf":
            self._idf = np.zeros(0)

    # ---- what a token is (subclasses) -------------------------------------------------------

    def _token(self, value: Any, what: str) -> Any:
        raise NotImplementedError

    def _tokens(self, data: Any) -> np.ndarray:
        """Inputs as an array of tokens, checked."""
        raise NotImplementedError

    def _bucket(self, token: Any) -> int:
        raise NotImplementedError

    # ---- the vocabulary ---------------------------------------------------------------------

    @property
    def _mask_slot(self) -> int:
        return 1 if self.mask_token is not None and self.output_mode == "int" else 0

    @property
    def _first(self) -> int:
        """Index of the first vocabulary token (after the mask and OOV slots)."""
        return self._mask_slot + self.num_oov_indices

    def vocabulary_size(self) -> int:
        """Width of the one/multi-hot outputs; the number of indices in "int" mode."""
        if self.pad_to_max_tokens and self.max_tokens is not None:
            return self.max_tokens
        return self._first + len(self._vocab)

    def get_vocabulary(self, include_special_tokens: bool = True) -> list[Any]:
        """Tokens by index: mask, OOV slots, then the vocabulary (as Keras lists them)."""
        if not include_special_tokens:
            return list(self._vocab)
        special = [self.mask_token] * self._mask_slot + [self.oov_token] * self.num_oov_indices
        return special + list(self._vocab)

    def set_vocabulary(self, vocabulary: Any, idf_weights: Any = None) -> None:
        """Use `vocabulary` (tokens, or a text file with one per line); special tokens at its
        start, as `get_vocabulary()` lists them, are recognised and skipped."""
        if isinstance(vocabulary, (str, Path)) and self._reads_files():
            path = Path(vocabulary)
            if not path.is_file():
                raise MissingFileError(f"{self._who}: vocabulary file not found: {path}")
            vocabulary = path.read_text(encoding="utf-8").splitlines()
        if not isinstance(vocabulary, (list, tuple, np.ndarray)):
            raise ConfigError(
                f"{self._who}: vocabulary must be a list of tokens, got {type(vocabulary).__name__}"
            )
        tokens = [self._token(t, "a vocabulary token") for t in vocabulary]
        special = self.get_vocabulary()[: self._first]
        if special and tokens[: len(special)] == special:
            tokens = tokens[len(special) :]
        seen: set[Any] = set()
        for t in tokens:
            if t in seen or t == self.mask_token or t == self.oov_token:
                what = "twice" if t in seen else "and is a special token"
                raise ConfigError(f"{self._who}: the vocabulary holds {t!r} {what}")
            seen.add(t)
        if self.max_tokens is not None and self._first + len(tokens) > self.max_tokens:
            raise ConfigError(
                f"{self._who}: {len(tokens)} tokens plus {self._first} special indices exceed "
                f"max_tokens={self.max_tokens}"
            )
        if self.output_mode == "tf_idf":
            if idf_weights is None:
                raise ConfigError(f"{self._who}: output_mode='tf_idf' needs idf_weights too")
            idf = np.asarray(idf_weights, dtype=np.float64).reshape(-1)
            if len(idf) != len(tokens):
                raise ConfigError(
                    f"{self._who}: {len(idf)} idf_weights for {len(tokens)} vocabulary tokens"
                )
            self._idf = idf
        elif idf_weights is not None:
            raise ConfigError(f"{self._who}: idf_weights needs output_mode='tf_idf'")
        self._vocab = tokens
        self._index = {t: i + self._first for i, t in enumerate(tokens)}

    def _reads_files(self) -> bool:
        return False

    def adapt(self, data: Any) -> None:
        """Learn the vocabulary from `data` (tokens, any nesting; for tf-idf each row is one
        document), most frequent first, capped by max_tokens."""
        documents = self._documents(data)
        counts: Counter[Any] = Counter()
        doc_counts: Counter[Any] = Counter()
        for doc in documents:
            counts.update(doc)
            doc_counts.update(set(doc))
        for special in (self.mask_token, self.oov_token):
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        if self.max_tokens is not None:
            ranked = ranked[: max(self.max_tokens - self._first, 0)]
        tokens = [t for t, _ in ranked]
        idf = None
        if self.output_mode == "tf_idf":
            n_docs = len(documents)
            idf = np.log1p(n_docs / (1.0 + np.array([doc_counts[t] for t in tokens], float)))
        self.set_vocabulary(tokens, idf)

    def _documents(self, data: Any) -> list[list[Any]]:
        if isinstance(data, Tensor):
            data = data.detach().cpu().numpy()
        if isinstance(data, np.ndarray):
            rows = data.reshape(-1, 1) if data.ndim <= 1 else data.reshape(data.shape[0], -1)
            return [list(self._tokens(row).reshape(-1)) for row in rows]
        if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
            raise DataError(f"{self._who}.adapt takes a list or array of tokens, got {data!r}")
        docs = []
        for row in data:
            nested = isinstance(row, Iterable) and not isinstance(row, (str, bytes))
            docs.append(list(self._tokens(list(_flatten(row)) if nested else [row])))
        if not docs:
            raise DataError(f"{self._who}.adapt got no data")
        return docs

    # ---- calling ----------------------------------------------------------------------------

    def _build_from(self, *inputs: Any, **kwargs: Any) -> None:
        self.build(np.shape(inputs[0])[1:] if np.ndim(inputs[0]) else ())

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if self.output_mode == "int":
            return tuple(input_shape)
        width = self.vocabulary_size()
        if self.output_mode == "one_hot" and (not input_shape or input_shape[-1] != 1):
            return (*input_shape, width)
        return (*input_shape[:-1], width)

    def _ids(self, tokens: np.ndarray) -> np.ndarray:
        """Indices of `tokens` (any shape); -1 marks a mask token a hot mode drops."""
        uniques, inverse = np.unique(tokens.reshape(-1), return_inverse=True)
        table = np.empty(len(uniques), dtype=np.int64)
        missing = []
        for i, token in enumerate(uniques.tolist()):
            if self.mask_token is not None and token == self.mask_token:
                table[i] = 0 if self._mask_slot else -1
            elif token in self._index:
                table[i] = self._index[token]
            elif self.num_oov_indices == 0:
                missing.append(token)
            else:
                table[i] = self._mask_slot + self._bucket(token) % self.num_oov_indices
        if missing:
            raise DataError(
                f"{self._who} met {missing[0]!r}, which is not in its vocabulary, and has "
                f"num_oov_indices=0; use num_oov_indices >= 1 to map unknown tokens"
            )
        return table[inverse].reshape(tokens.shape)

    def call(self, x: Any) -> Any:
        if self.invert:
            return self._invert(x)
        tokens = self._tokens(x)
        ids = torch.as_tensor(self._ids(tokens))
        device = x.device if isinstance(x, Tensor) else None
        out = self._encode(ids) if self.output_mode != "int" else ids
        return out if device is None else out.to(device)

    def _encode(self, ids: Tensor) -> Tensor:
        """(..., T) indices -> (..., V) rows of the hot modes; one_hot keeps each element."""
        width = self.vocabulary_size()
        if self.output_mode == "one_hot":
            if ids.dim() >= 1 and ids.shape[-1] == 1:
                ids = ids[..., 0]
            hot = torch.nn.functional.one_hot(ids.clamp(min=0), width).float()
            return hot * (ids >= 0)[..., None].float()
        if ids.dim() == 1:
            ids = ids[:, None]  # (B,) single tokens: one row each
        flat = ids.reshape(-1, ids.shape[-1])  # (N, T)
        counts = torch.zeros(flat.shape[0], width)
        counts.scatter_add_(1, flat.clamp(min=0), (flat >= 0).float())
        if self.output_mode == "multi_hot":
            counts = (counts > 0).float()
        elif self.output_mode == "tf_idf":
            counts = counts * torch.as_tensor(self._idf_row(width), dtype=torch.float32)
        return counts.reshape(*ids.shape[:-1], width)

    def _idf_row(self, width: int) -> np.ndarray:
        idf = self._idf if self._idf is not None else np.zeros(0)
        oov = float(idf.mean()) if len(idf) else 0.0  # Keras: OOV slots get the mean idf
        row = np.concatenate([np.full(self._first, oov), idf])
        return np.pad(row, (0, width - len(row)))

    def _invert(self, x: Any) -> Any:
        ids = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if ids.dtype.kind not in "iu":
            raise DataError(f"{self._who} (invert=True) takes integer indices, got {ids.dtype}")
        vocab = self.get_vocabulary()
        table = np.array(vocab + [self.oov_token], dtype=object)
        safe = np.where((ids >= 0) & (ids < len(vocab)), ids, len(vocab))
        return self._inverted(table[safe], x)

    def _inverted(self, tokens: np.ndarray, x: Any) -> Any:
        return tokens

    def _config(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "num_oov_indices": self.num_oov_indices,
            "mask_token": self.mask_token,
            "oov_token": self.oov_token,
            "vocabulary": list(self._vocab) if self._vocab else None,
            "idf_weights": None if self._idf is None or not self._vocab else self._idf.tolist(),
            "invert": self.invert,
            "output_mode": self.output_mode,
            "pad_to_max_tokens": self.pad_to_max_tokens,
        }


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        yield value
        return
    for item in value:
        yield from _flatten(item)


class StringLookup(_Lookup):
    """Strings to indices. Inputs: a list or NumPy array of str (bytes are decoded)."""

    def __init__(
        self,
        max_tokens: int | None = None,
        num_oov_indices: int = 1,
        mask_token: str | None = None,
        oov_token: str = "[UNK]",
        vocabulary: Any = None,
        idf_weights: Any = None,
        invert: bool = False,
        output_mode: str = "int",
        pad_to_max_tokens: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_tokens, num_oov_indices, mask_token, oov_token, vocabulary, idf_weights, invert,
            output_mode, pad_to_max_tokens, input_shape, name,
        )  # fmt: skip

    def _reads_files(self) -> bool:
        return True

    def _token(self, value: Any, what: str) -> str:
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise ConfigError(f"{self._who}: {what} must be a string, got {value!r}")
        return value

    def _tokens(self, data: Any) -> np.ndarray:
        if isinstance(data, Tensor):
            raise DataError(
                f"{self._who} takes strings (a list or NumPy array of str), got a tensor; "
                f"use IntegerLookup for integer ids"
            )
        arr = np.asarray(data, dtype=object)
        flat = arr.reshape(-1)
        for i, v in enumerate(flat):
            if isinstance(v, bytes):
                flat[i] = v.decode("utf-8", errors="replace")
            elif not isinstance(v, str):
                raise DataError(f"{self._who} takes strings, got {type(v).__name__} {v!r}")
        return flat.reshape(arr.shape)

    def _bucket(self, token: Any) -> int:
        return zlib.crc32(token.encode("utf-8"))


class IntegerLookup(_Lookup):
    """Integer ids (sparse, e.g. user ids) to dense indices; tensors or arrays of ints."""

    def __init__(
        self,
        max_tokens: int | None = None,
        num_oov_indices: int = 1,
        mask_token: int | None = None,
        oov_token: int = -1,
        vocabulary: Any = None,
        idf_weights: Any = None,
        invert: bool = False,
        output_mode: str = "int",
        pad_to_max_tokens: bool = False,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            max_tokens, num_oov_indices, mask_token, oov_token, vocabulary, idf_weights, invert,
            output_mode, pad_to_max_tokens, input_shape, name,
        )  # fmt: skip

    def _token(self, value: Any, what: str) -> int:
        if isinstance(value, np.integer):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._who}: {what} must be an int, got {value!r}")
        return value

    def _tokens(self, data: Any) -> np.ndarray:
        if isinstance(data, Tensor):
            data = data.detach().cpu().numpy()
        arr = np.asarray(data)
        if arr.dtype.kind not in "iu":
            raise DataError(f"{self._who} takes integers, got an array of {arr.dtype}")
        return arr.astype(np.int64)

    def _bucket(self, token: Any) -> int:
        return int(token)

    def _inverted(self, tokens: np.ndarray, x: Any) -> Any:
        out = torch.as_tensor(tokens.astype(np.int64))
        return out.to(x.device) if isinstance(x, Tensor) else out
