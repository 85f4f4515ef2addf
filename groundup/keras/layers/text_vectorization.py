"""TextVectorization: raw strings to token ids (or multi-hot, count, tf-idf rows), as Keras.

    vectorize = gu.layers.TextVectorization(max_tokens=20000, output_sequence_length=200)
    vectorize.adapt(train_texts)                 # a list or array of str
    x_train = vectorize(train_texts)             # (N, 200) int64 tensor; 0 = padding, 1 = OOV

Strings are not tensors, so this layer runs as a preprocessing step on lists or NumPy arrays
(the clean place, once per dataset), and gives tensors a model takes; its vocabulary is in
its config, so it is saved and loaded like any layer. Each string goes through: standardize
("lower_and_strip_punctuation" lowercases and removes ASCII punctuation), split
("whitespace" or "character"), n-grams (joined by a space), then a StringLookup with the
mask "" (index 0) and the OOV token "[UNK]" (index 1) in "int" mode. A callable standardize
(str -> str) or split (str -> list of str) works but cannot be saved in a config.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from groundup.errors import ConfigError, DataError
from groundup.keras.layers.base import Layer, Shape, choice
from groundup.keras.layers.lookup import OUTPUT_MODES, StringLookup

STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation")
SPLITS = ("whitespace", "character")
_PUNCTUATION = str.maketrans("", "", string.punctuation)  # Keras' set: ASCII punctuation


class TextVectorization(Layer):
    """Strings (B,) or (B, 1) -> ids (B, T) in "int" mode, or (B, vocabulary) rows."""

    _repr_keys = ("max_tokens", "output_mode", "output_sequence_length")

    def __init__(
        self,
        max_tokens: int | None = None,
        standardize: str | Callable[[str], str] | None = "lower_and_strip_punctuation",
        split: str | Callable[[str], list[str]] | None = "whitespace",
        ngrams: int | Sequence[int] | None = None,
        output_mode: str = "int",
        output_sequence_length: int | None = None,
        pad_to_max_tokens: bool = False,
        vocabulary: Any = None,
        idf_weights: Any = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.standardize = self._step(standardize, "standardize", STANDARDIZE)
        self.split = self._step(split, "split", SPLITS)
        self.ngrams = self._ngrams(ngrams)
        self.output_mode = choice(output_mode, "output_mode", OUTPUT_MODES, self._who)
        if self.output_mode == "one_hot":
            raise ConfigError(
                f"{self._who}: output_mode='one_hot' is not offered (as in Keras); use "
                f"'multi_hot' for one row per text"
            )
        if output_sequence_length is not None and (
            self.output_mode != "int"
            or isinstance(output_sequence_length, bool)
            or not isinstance(output_sequence_length, int)
            or output_sequence_length < 1
        ):
            raise ConfigError(
                f"{self._who}: output_sequence_length must be None or an int >= 1, and only "
                f"with output_mode='int'; got {output_sequence_length!r}"
            )
        self.output_sequence_length = output_sequence_length
        self.lookup = StringLookup(
            max_tokens=max_tokens, mask_token="", oov_token="[UNK]", vocabulary=vocabulary,
            idf_weights=idf_weights, output_mode=self.output_mode,
            pad_to_max_tokens=pad_to_max_tokens, name=f"{self.name}_lookup",
        )  # fmt: skip

    def _step(self, value: Any, arg: str, names: Sequence[str]) -> Any:
        if value is None or callable(value):
            return value
        return choice(value, arg, names, self._who)

    def _ngrams(self, ngrams: Any) -> tuple[int, ...] | None:
        if ngrams is None:
            return None
        if isinstance(ngrams, int) and not isinstance(ngrams, bool) and ngrams >= 1:
            return tuple(range(1, ngrams + 1))  # an int n means every width up to n
        ok = isinstance(ngrams, Sequence) and not isinstance(ngrams, str) and ngrams
        if ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in ngrams):
            return tuple(ngrams)
        raise ConfigError(f"{self._who}: ngrams must be None, an int or ints >= 1, got {ngrams!r}")

    # ---- text -> tokens ---------------------------------------------------------------------

    def _texts(self, data: Any) -> list[str]:
        if isinstance(data, Tensor):
            raise DataError(f"{self._who} takes strings (a list or array of str), got a tensor")
        arr = np.asarray(data, dtype=object)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]  # (B, 1) -> (B,)
        if arr.ndim != 1:
            raise DataError(
                f"{self._who} takes a list of strings (B,) or (B, 1), got shape {arr.shape}"
            )
        texts = []
        for v in arr.tolist():
            if isinstance(v, bytes):
                v = v.decode("utf-8", errors="replace")
            if not isinstance(v, str):
                raise DataError(f"{self._who} takes strings, got {type(v).__name__} {v!r}")
            texts.append(v)
        return texts

    def _tokenize(self, text: str) -> list[str]:
        if callable(self.standardize):
            text = self.standardize(text)
        else:
            if self.standardize in ("lower", "lower_and_strip_punctuation"):
                text = text.lower()
            if self.standardize in ("strip_punctuation", "lower_and_strip_punctuation"):
                text = text.translate(_PUNCTUATION)
        if self.split is None:
            tokens = [text]
        elif callable(self.split):
            tokens = list(self.split(text))
        elif self.split == "whitespace":
            tokens = text.split()
        else:
            tokens = list(text)
        if self.ngrams is None:
            return tokens
        return [
            " ".join(tokens[i : i + n]) for n in self.ngrams for i in range(len(tokens) - n + 1)
        ]

    # ---- the layer --------------------------------------------------------------------------

    def adapt(self, data: Any) -> None:
        """Learn the vocabulary (and idf weights for "tf_idf") from a list of strings."""
        docs = [self._tokenize(t) for t in self._texts(data)]
        if not docs:
            raise DataError(f"{self._who}.adapt got no texts")
        self.lookup.adapt(docs)

    def get_vocabulary(self, include_special_tokens: bool = True) -> list[str]:
        return self.lookup.get_vocabulary(include_special_tokens)

    def set_vocabulary(self, vocabulary: Any, idf_weights: Any = None) -> None:
        self.lookup.set_vocabulary(vocabulary, idf_weights)

    def vocabulary_size(self) -> int:
        return self.lookup.vocabulary_size()

    def _build_from(self, *inputs: Any, **kwargs: Any) -> None:
        self.build(np.shape(inputs[0])[1:])

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> Shape:
        if self.output_mode == "int":
            return (self.output_sequence_length,)  # None: the longest text of the batch
        return (self.vocabulary_size(),)

    def call(self, x: Any) -> Tensor:
        docs = [self._tokenize(t) for t in self._texts(x)]
        longest = max((len(d) for d in docs), default=0)
        length = self.output_sequence_length if self.output_mode == "int" else None
        length = length or longest
        grid = np.full((len(docs), length), "", dtype=object)  # "" is the mask: 0, or dropped
        for row, doc in enumerate(docs):
            grid[row, : min(len(doc), length)] = doc[:length]
        return self.lookup(grid)  # (B, T) ids, or (B, V) rows

    def get_config(self) -> dict[str, Any]:
        for arg in ("standardize", "split"):
            if callable(getattr(self, arg)):
                raise ConfigError(
                    f"{self._who} uses a custom {arg} function, which a config cannot hold; "
                    f"use a named {arg} or preprocess the texts before the layer"
                )
        return super().get_config()

    def _config(self) -> dict[str, Any]:
        lookup = self.lookup._config()
        return {
            "max_tokens": lookup["max_tokens"],
            "standardize": self.standardize,
            "split": self.split,
            "ngrams": None if self.ngrams is None else list(self.ngrams),
            "output_mode": self.output_mode,
            "output_sequence_length": self.output_sequence_length,
            "pad_to_max_tokens": lookup["pad_to_max_tokens"],
            "vocabulary": lookup["vocabulary"],
            "idf_weights": lookup["idf_weights"],
        }
