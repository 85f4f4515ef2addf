"""Which arguments a layer's call takes, and the one rule masks follow from layer to layer.

Sequential and functional models both run each layer through `call_with_mask`, so a mask made
by `Embedding(mask_zero=True)` reaches the RNN that skips padded steps the same way in both:

- a layer gets `mask=` only when its `forward` (or the `call` a `**kwargs` forward passes on)
  has a `mask` parameter;
- the mask after a layer is `layer.compute_mask(inputs, mask)` when it has one, else the mask
  unchanged when `layer.supports_masking`, else None (the layer consumed or broke it).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

_ACCEPTS: dict[tuple[type, str], bool] = {}


def _parameters(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return None


def accepts(module: nn.Module, name: str) -> bool:
    """True when `module(..., name=value)` reaches a parameter called `name` (cached per class)."""
    key = (type(module), name)
    known = _ACCEPTS.get(key)
    if known is None:
        known = False
        params = _parameters(module.forward)
        if params is not None:
            if name in params:
                known = True
            elif any(p.kind is p.VAR_KEYWORD for p in params.values()):
                call = getattr(module, "call", None)
                call_params = _parameters(call) if call is not None else None
                known = call_params is not None and name in call_params
        _ACCEPTS[key] = known
    return known


def next_mask(layer: nn.Module, inputs: Any, mask: Any) -> Any:
    """The mask of `layer`'s outputs, by the rule in the module docstring."""
    compute = getattr(layer, "compute_mask", None)
    if compute is not None:
        return compute(inputs, mask)
    return mask if getattr(layer, "supports_masking", False) else None


def call_with_mask(
    layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], mask: Any
) -> tuple[Any, Any]:
    """Run `layer(*args, **kwargs)` giving it `mask` when it takes one (and none was passed
    explicitly); return `(outputs, mask of the outputs)`."""
    if mask is not None and "mask" not in kwargs and accepts(layer, "mask"):
        kwargs = {**kwargs, "mask": mask}
    outputs = layer(*args, **kwargs)
    inputs = args[0] if len(args) == 1 else list(args)
    return outputs, next_mask(layer, inputs, mask)
