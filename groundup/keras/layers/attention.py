"""MultiHeadAttention with Keras' arguments, weight shapes and masking rules.

    mha = gu.layers.MultiHeadAttention(num_heads=4, key_dim=16)
    y = mha(query, value)                          # (B, Tq, d) attending over (B, Tv, dv)
    y, scores = mha(x, x, return_attention_scores=True, use_causal_mask=True)

Weights are Keras' (EinsumDense kernels): query/key kernels (d, heads, key_dim), value kernel
(d, heads, value_dim), each with a (heads, dim) bias, and the output kernel (heads, value_dim,
d_out) with a (d_out,) bias, so parameter counts and copied weights match. A boolean mask is
True where a query may attend; Keras' masked softmax gives a query that may attend nowhere
all-zero weights (not NaN). Without any mask, torch's fused scaled_dot_product_attention runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.layers.base import Layer, as_shape, known, positive_int, unit_float
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer

_MASKED = -1e9  # Keras' large negative logit for masked positions


class MultiHeadAttention(Layer):
    """Attention of `query` over `value` (keys = `key`, or `value` when not given)."""

    supports_masking = True
    _repr_keys = ("num_heads", "key_dim", "value_dim")

    def __init__(
        self,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        output_shape: int | Sequence[int] | None = None,
        attention_axes: Any = None,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        kernel_regularizer: RegularizerLike = None,
        bias_regularizer: RegularizerLike = None,
        input_shape: Sequence[int | None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(input_shape=input_shape, name=name)
        self.num_heads = positive_int(num_heads, "num_heads", self._who)
        self.key_dim = positive_int(key_dim, "key_dim", self._who)
        self.value_dim = (
            self.key_dim if value_dim is None else positive_int(value_dim, "value_dim", self._who)
        )
        self._value_dim_given = value_dim is not None
        self.dropout = unit_float(dropout, "dropout", self._who)
        self.use_bias = bool(use_bias)
        self.output_shape: int | None = None
        if output_shape is not None:
            dims = as_shape(output_shape, f"{self._who}: output_shape")
            if len(dims) != 1 or dims[0] is None:
                raise ConfigError(
                    f"{self._who}: output_shape must be one int (the output width), got "
                    f"{output_shape!r}"
                )
            self.output_shape = dims[0]
        if attention_axes is not None:
            raise ConfigError(
                f"{self._who}: attention_axes is not supported; attention runs over the time "
                f"axis of (batch, time, features) inputs (leave attention_axes=None)"
            )
        self.kernel_initializer = check_initializer(kernel_initializer)
        self.bias_initializer = check_initializer(bias_initializer)
        self.kernel_regularizer = get_regularizer(kernel_regularizer)
        self.bias_regularizer = get_regularizer(bias_regularizer)
        self._widths: tuple[int, int, int] = (-1, -1, -1)  # query, value, key feature widths

    # ---- shapes and building ----------------------------------------------------------------

    def _check_shape(self, shape: Any, what: str) -> tuple[int | None, int | None]:
        if not isinstance(shape, tuple) or len(shape) != 2:
            raise ShapeError(
                f"{self._who} expects {what} of shape (batch, time, features), got per-sample "
                f"shape {shape}"
            )
        return shape[0], shape[1]

    def build(self, query_shape: Any, value_shape: Any = None, key_shape: Any = None) -> None:
        """Create the weights for query, value and (when given) key per-sample shapes."""
        super().build(query_shape, value_shape, key_shape)

    def compute_output_shape(
        self,
        query_shape: Any,
        value_shape: Any = None,
        key_shape: Any = None,
        return_attention_scores: bool = False,
    ) -> Any:
        steps, width = self._check_shape(query_shape, "a query")
        if value_shape is None:
            raise ShapeError(f"{self._who} expects a value too, got none: call mha(query, value)")
        value_steps, _ = self._check_shape(value_shape, "a value")
        if key_shape is not None:
            key_steps, _ = self._check_shape(key_shape, "a key")
            if None not in (key_steps, value_steps) and key_steps != value_steps:
                raise ShapeError(
                    f"{self._who} expects key and value of one length, got {key_steps} and "
                    f"{value_steps} steps"
                )
        out = (steps, self.output_shape or width)
        if return_attention_scores:  # and the weights: (heads, query steps, value steps)
            return [out, (self.num_heads, steps, value_steps)]
        return out

    def _build_from(self, *inputs: Any, **kwargs: Any) -> None:
        query, value, key = _qvk(inputs, kwargs)
        shapes = [None if t is None else tuple(t.shape[1:]) for t in (query, value, key)]
        self.build(*shapes)
        self.to(query.device)

    def _build(self, query_shape: Any, value_shape: Any = None, key_shape: Any = None) -> None:
        what = "feature width"
        d_q = known(query_shape[-1], f"query {what}", self._who)
        d_v = known(value_shape[-1], f"value {what}", self._who)
        d_k = d_v if key_shape is None else known(key_shape[-1], f"key {what}", self._who)
        self._widths = (d_q, d_v, d_k)
        h, k, v = self.num_heads, self.key_dim, self.value_dim
        d_out = self.output_shape or d_q
        # (name, kernel shape, bias shape, Keras' fans: input units, output units)
        for part, shape, bias, fans in (
            ("query", (d_q, h, k), (h, k), (d_q, h * k)),
            ("key", (d_k, h, k), (h, k), (d_k, h * k)),
            ("value", (d_v, h, v), (h, v), (d_v, h * v)),
            ("output", (h, v, d_out), (d_out,), (h * v, d_out)),
        ):
            kernel = nn.Parameter(torch.empty(shape))
            initialize(self.kernel_initializer, kernel, *fans)
            self.register_parameter(f"{part}_kernel", kernel)
            self._add_regularizer(f"{part}_kernel", self.kernel_regularizer)
            if self.use_bias:
                self.register_parameter(f"{part}_bias", nn.Parameter(torch.empty(bias)))
                initialize(self.bias_initializer, self.get_parameter(f"{part}_bias"))
                self._add_regularizer(f"{part}_bias", self.bias_regularizer)

    # ---- running ------------------------------------------------------------------------------

    def _project(self, x: Tensor, part: str, width: int) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != width:
            raise ShapeError(
                f"{self._who} expects its {part} as (batch, time, {width}), got {tuple(x.shape)}"
            )
        y = torch.einsum("btd,dhk->bthk", x, self.get_parameter(f"{part}_kernel"))
        return y + self.get_parameter(f"{part}_bias") if self.use_bias else y  # (B, T, h, k)

    def call(
        self,
        query: Tensor,
        value: Tensor | None = None,
        key: Tensor | None = None,
        attention_mask: Tensor | None = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
        query_mask: Tensor | None = None,
        value_mask: Tensor | None = None,
        key_mask: Tensor | None = None,
        mask: Sequence[Tensor | None] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if mask is not None:  # the container's masks, one per positional input
            masks = [*mask, None, None][:3]
            query_mask = masks[0] if query_mask is None else query_mask
            value_mask = masks[1] if value_mask is None else value_mask
            key_mask = masks[2] if key_mask is None else key_mask
        if value is None:
            raise ShapeError(f"{self._who} expects a value too, got none: call mha(query, value)")
        key = value if key is None else key
        d_q, d_v, d_k = self._widths
        q = self._project(query, "query", d_q) * (1.0 / math.sqrt(self.key_dim))
        k = self._project(key, "key", d_k)
        v = self._project(value, "value", d_v)
        masks = (attention_mask, query_mask, value_mask, key_mask)
        use_causal_mask = bool(use_causal_mask)
        p_drop = self.dropout if self.training else 0.0
        if all(m is None for m in masks) and not return_attention_scores:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # (B, h, T, dim)
                dropout_p=p_drop, is_causal=use_causal_mask, scale=1.0,
            ).transpose(1, 2)  # fmt: skip
            scores = None
        else:
            allowed = self._allowed(q, k, use_causal_mask, *masks)
            logits = torch.einsum("bshk,bthk->bhts", k, q)  # (B, h, Tq, Tk)
            if allowed is not None:  # Keras' large negative logit (-3e4 in float16)
                big = -3e4 if logits.dtype == torch.float16 else _MASKED
                logits = logits.masked_fill(~allowed, big)
            scores = torch.softmax(logits, dim=-1)
            if allowed is not None:  # a query with nowhere to attend gets zeros
                scores = scores.masked_fill(~allowed, 0.0)
            weights = F.dropout(scores, p_drop, True) if p_drop else scores
            out = torch.einsum("bhts,bshv->bthv", weights, v)  # (B, Tq, h, v)
        y = torch.einsum("bthv,hvo->bto", out, self.output_kernel)
        if self.use_bias:
            y = y + self.output_bias
        return (y, scores) if return_attention_scores else y

    def _allowed(
        self,
        q: Tensor,
        k: Tensor,
        causal: bool,
        attention_mask: Tensor | None,
        query_mask: Tensor | None,
        value_mask: Tensor | None,
        key_mask: Tensor | None,
    ) -> Tensor | None:
        """The (B or 1, 1 or h, Tq, Tk) bool mask of allowed positions, or None for all."""
        steps_q, steps_k = q.shape[1], k.shape[1]
        parts: list[Tensor] = []
        if attention_mask is not None:
            if attention_mask.dim() not in (3, 4) or tuple(attention_mask.shape[-2:]) != (
                steps_q,
                steps_k,
            ):
                raise ShapeError(
                    f"{self._who} expects attention_mask (batch, {steps_q}, {steps_k}), got "
                    f"{tuple(attention_mask.shape)}"
                )
            mask = attention_mask.to(q.device).bool()
            parts.append(mask[:, None] if mask.dim() == 3 else mask)
        if query_mask is not None:
            parts.append(query_mask.to(q.device).bool()[:, None, :, None])
        for m in (value_mask, key_mask):
            if m is not None:
                parts.append(m.to(q.device).bool()[:, None, None, :])
        if causal:
            parts.append(torch.ones(steps_q, steps_k, dtype=torch.bool, device=q.device).tril())
        if not parts:
            return None
        allowed = parts[0]
        for part in parts[1:]:
            allowed = allowed & part
        return allowed

    def compute_mask(self, inputs: Any, mask: Any = None) -> Tensor | None:
        """The output has the query's steps, so it keeps the query's mask."""
        if isinstance(mask, (list, tuple)):
            return mask[0] if mask else None
        return mask

    def _config(self) -> dict[str, Any]:
        return {
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim if self._value_dim_given else None,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "output_shape": self.output_shape,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self._reg_config(self.kernel_regularizer),
            "bias_regularizer": self._reg_config(self.bias_regularizer),
        }


def _qvk(inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, Any]:
    """query, value, key from a call's positional and keyword arguments."""
    args = list(inputs) + [None] * 3
    query = kwargs.get("query", args[0])
    value = kwargs.get("value", args[1])
    key = kwargs.get("key", args[2])
    if not isinstance(query, Tensor) or not isinstance(value, Tensor):
        raise ShapeError(
            "MultiHeadAttention expects tensors as mha(query, value[, key]), got "
            f"{type(query).__name__} and {type(value).__name__}"
        )
    return query, value, key if isinstance(key, Tensor) else None
