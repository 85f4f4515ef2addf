"""The `Layer` base class: lazy building, configs, names, output activation and penalties.

A layer is a plain `nn.Module` that knows a little more than one:
- it creates its parameters from the per-sample input shape (`build`), either on its first
  batch (lazily, like Keras) or eagerly when `Sequential` knows the input shape;
- it can describe its output shape without running (`compute_output_shape`), which is how
  `Sequential` builds the stack eagerly and prints `summary()`;
- it round-trips through a JSON-able config (`get_config` / `layer_from_config`);
- it can run without its output activation (`forward_logits`), so the last layer's softmax
  or sigmoid can be folded into a numerically stable loss on logits.

Subclasses implement `call` (the computation minus the output activation), `_build`
(create parameters), `compute_output_shape` and `_config` (their constructor kwargs).

Several inputs (shared with the functional API): a layer called with a list of tensors
(`Add()([a, b])`) gets a list of per-sample shapes in `build`/`compute_output_shape` and the
list in `call`; a layer called with several positional tensors (`mha(query, value)`) gets them
as separate arguments, and its shapes likewise (`compute_output_shape(query_shape, value_shape)`).

Masks (B, T) bool, True = a real step: a layer whose `call` has a `mask` parameter receives one;
`compute_mask(inputs, mask)`, where a layer defines it, gives the mask of its output; otherwise
the mask passes through a layer with `supports_masking = True` and stops at any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.keras.activations import ActivationFn, activation_name, get_activation
from groundup.keras.layers.initializers import check_initializer, initialize
from groundup.keras.regularizers import RegularizerLike, get_regularizer, serialize_regularizer
from groundup.registry import construct, did_you_mean

Shape = tuple[int | None, ...]  # per-sample shape, no batch axis; None = unknown (e.g. time)

_NAME_COUNTS: dict[str, int] = {}


def _snake(name: str) -> str:
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name)  # BatchNormalization -> Batch_Normalization
    return re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()  # SimpleRNN ok, keeps Conv2D


def _auto_name(cls: type) -> str:
    """Keras-style names: dense, dense_1, dense_2, ... (one counter per class)."""
    base = _snake(cls.__name__)
    count = _NAME_COUNTS.get(base, 0)
    _NAME_COUNTS[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


def reset_layer_names() -> None:
    """Restart the automatic names at 'dense', 'conv2d', ... (Keras' clear_session)."""
    _NAME_COUNTS.clear()


def as_shapes(shape: Any, what: str) -> Shape | list[Shape]:
    """One per-sample shape, or a list of them (the inputs of a merge layer)."""
    if (
        isinstance(shape, (list, tuple))
        and shape
        and all(isinstance(s, Sequence) and not isinstance(s, str) for s in shape)
    ):
        return [as_shape(s, what) for s in shape]
    return as_shape(shape, what)


def shape_of(x: Any) -> Any:
    """Per-sample shape of a batch (no batch axis), or a list of them for a list of batches."""
    if isinstance(x, (list, tuple)):
        return [shape_of(t) for t in x]
    if x is None:
        return None
    return tuple(x.shape[1:])


def first_device(inputs: Any) -> torch.device | None:
    """The device of the first tensor among `inputs` (nested lists too), else None."""
    for x in inputs:
        if isinstance(x, Tensor):
            return x.device
        if isinstance(x, (list, tuple)):
            found = first_device(x)
            if found is not None:
                return found
    return None


def as_shape(shape: Any, what: str) -> Shape:
    """Validate a per-sample shape: a sequence of positive ints (or None for unknown)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        raise ConfigError(f"{what} must be a tuple of ints like (28, 28, 1), got {shape!r}")
    for dim in shape:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ConfigError(
                f"{what} must hold positive ints (or None for a free axis), got {tuple(shape)!r}"
            )
    return tuple(shape)


class Layer(nn.Module):
    """Base of every Keras-style layer. See the module docstring for the contract."""

    activation: str | None = None  # name of the output activation, None for identity
    supports_masking: bool = False  # True: an input mask passes through unchanged
    _repr_keys: tuple[str, ...] = ()

    def __init__(self, *, input_shape: Sequence[int | None] | None = None, name: str | None = None):
        super().__init__()
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(
                f"{type(self).__name__}: name must be a non-empty string, got {name!r}"
            )
        self.name: str = _auto_name(type(self)) if name is None else name
        self.input_shape: Shape | None = (
            None if input_shape is None else as_shape(input_shape, f"{self._who}: input_shape")
        )
        self.built = False
        self.build_input_shape: Shape | None = None  # the shape `build` was called with
        self._activation_fn: ActivationFn | None = None
        self._activation_saveable = True
        self._regularizers: list[tuple[str, Any]] = []  # (parameter name, penalty callable)

    @property
    def _who(self) -> str:
        name = self.__dict__.get("name")
        return type(self).__name__ if name is None else f"{type(self).__name__} '{name}'"

    # ---- building -------------------------------------------------------------------------

    def build(self, input_shape: Any, *more_shapes: Any) -> None:
        """Create the parameters for inputs of per-sample shape `input_shape` (no batch axis).

        `input_shape` is a list of shapes for a layer called with a list of tensors;
        `more_shapes` are the shapes of further positional inputs (None for one not given).
        Idempotent: a built layer ignores later calls. Raises ShapeError for a shape the layer
        cannot take (wrong rank, too small for the kernel, unknown feature width).
        """
        if self.built:
            return
        shape = as_shapes(input_shape, f"{self._who}: input shape")
        more = tuple(
            None if m is None else as_shapes(m, f"{self._who}: input shape") for m in more_shapes
        )
        while more and more[-1] is None:  # an optional input not given (a key)
            more = more[:-1]
        self.compute_output_shape(shape, *more)  # validates the shapes before anything is made
        self._build(shape, *more)
        self.build_input_shape = shape if not more else (shape, *more)
        self.built = True

    def _build(self, input_shape: Any, *more_shapes: Any) -> None:
        """Create parameters; layers without parameters keep this no-op."""

    def _build_from(self, *inputs: Any, **kwargs: Any) -> None:
        self.build(*(shape_of(x) for x in inputs))
        # Parameters are created on the CPU: follow the input when the model was moved to an
        # accelerator before its first batch. (Build before changing the dtype, though.)
        device = first_device(inputs)
        if device is not None:
            self.to(device)

    def compute_output_shape(self, input_shape: Any, *more_shapes: Any) -> Any:
        """Per-sample output shape for a per-sample input shape; identity by default."""
        return tuple(input_shape)

    # ---- running --------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Plain tensors go straight to nn.Module; symbolic inputs (the functional API), a list
        # of inputs and keyword options (mask=, training=) go through the Keras call rules.
        if kwargs or not (args and isinstance(args[0], Tensor)):
            from groundup.keras.symbolic import layer_call  # symbolic imports the layers

            return layer_call(self, super().__call__, args, kwargs)
        return super().__call__(*args, **kwargs)

    def call(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """The layer's computation without its output activation."""
        raise NotImplementedError

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        if not self.built:
            self._build_from(*inputs, **kwargs)
        y = self.call(*inputs, **kwargs)
        return y if self._activation_fn is None else self._activation_fn(y)

    def forward_logits(self, *inputs: Any, **kwargs: Any) -> Any:
        """The forward pass without the output activation (see `output_activation`)."""
        if not self.built:
            self._build_from(*inputs, **kwargs)
        return self.call(*inputs, **kwargs)

    @property
    def output_activation(self) -> str | None:
        """Name of the activation `forward` applies after `forward_logits`, else None.

        None for layers whose activation is internal (SimpleRNN's tanh) or the identity.
        """
        return self.activation if self._activation_fn is not None else None

    def _set_activation(self, activation: str | ActivationFn | None) -> None:
        fn = get_activation(activation)
        name = activation_name(activation)
        if name == "linear":
            self.activation, self._activation_fn = None, None
            return
        self._activation_fn = fn
        if name is None:  # a custom callable: usable, but not saveable by name
            self._activation_saveable = False
            name = getattr(activation, "__name__", type(activation).__name__)
        self.activation = name

    def _activation_config(self) -> str | None:
        if not self._activation_saveable:
            raise ConfigError(
                f"{self._who} uses the custom activation '{self.activation}', which a config "
                f"cannot name; pass a registered name (see gu.activations.ACTIVATIONS) or add "
                f"the function to that registry"
            )
        return self.activation

    # ---- regularization -------------------------------------------------------------------

    def _add_regularizer(self, param_name: str, spec: RegularizerLike) -> None:
        reg = get_regularizer(spec)
        if reg is not None:
            self._regularizers.append((param_name, reg))

    def regularization_loss(self) -> Tensor | None:
        """Sum of this layer's weight penalties, or None when it has none (the common case)."""
        if not self._regularizers:
            return None
        total: Tensor | None = None
        for param_name, reg in self._regularizers:
            penalty = reg(self.get_parameter(param_name))
            total = penalty if total is None else total + penalty
        return total

    # ---- kernel and bias (Dense, Conv2D) ---------------------------------------------------

    def _init_kernel_bias(
        self,
        use_bias: bool,
        kernel_initializer: str,
        bias_initializer: str,
        kernel_regularizer: RegularizerLike,
        bias_regularizer: RegularizerLike,
    ) -> None:
        """Check and keep the kernel/bias arguments (Keras' names) before the layer is built."""
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(kernel_initializer)
        self.bias_initializer = check_initializer(bias_initializer)
        self.kernel_regularizer = get_regularizer(kernel_regularizer)
        self.bias_regularizer = get_regularizer(bias_regularizer)

    def _build_kernel_bias(
        self, kernel_shape: tuple[int, ...], bias_size: int, fan_in: int, fan_out: int
    ) -> None:
        """Create `kernel` and `bias` (None without use_bias), initialized with Keras' fans."""
        self.kernel = nn.Parameter(torch.empty(kernel_shape))
        initialize(self.kernel_initializer, self.kernel, fan_in, fan_out)
        self._add_regularizer("kernel", self.kernel_regularizer)
        if self.use_bias:
            self.bias = nn.Parameter(torch.empty(bias_size))
            initialize(self.bias_initializer, self.bias, fan_in, fan_out)
            self._add_regularizer("bias", self.bias_regularizer)
        else:
            self.register_parameter("bias", None)

    def _kernel_bias_config(self) -> dict[str, Any]:
        return {
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self._reg_config(self.kernel_regularizer),
            "bias_regularizer": self._reg_config(self.bias_regularizer),
        }

    def get_weights(self) -> list[np.ndarray]:
        """The layer's weights as NumPy arrays, in Keras' order (torch's layouts)."""
        from groundup.keras.weights import get_weights

        return get_weights(self)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set the weights from a list like `get_weights()` gives (each shape is checked)."""
        from groundup.keras.weights import set_weights

        set_weights(self, weights, self._who)

    def count_params(self) -> int:
        """Keras' count: parameters plus the saved state buffers Keras counts as non-trainable
        weights (BatchNormalization's moving statistics, Normalization's mean and variance);
        0 before the layer is built. Non-persistent buffers (a constant zero bias) do not count.
        """
        total = sum(p.numel() for p in self.parameters())
        for module in self.modules():
            skip = module._non_persistent_buffers_set
            total += sum(
                b.numel() for n, b in module._buffers.items() if b is not None and n not in skip
            )
        return total

    # ---- configs --------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        """Constructor kwargs beyond name and input_shape; JSON-serializable."""
        return {}

    def _reg_config(self, reg: Any) -> Any:
        return serialize_regularizer(reg, self._who)

    def get_config(self) -> dict[str, Any]:
        """{"type": class name, "name": ..., **constructor kwargs}; `layer_from_config`
        rebuilds the same layer (load the state_dict after building it)."""
        config: dict[str, Any] = {"type": type(self).__name__, "name": self.name}
        config.update(self._config())
        if self.input_shape is not None:
            config["input_shape"] = list(self.input_shape)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layer:
        """Rebuild a layer of this class from `get_config()` output (the "type" key optional)."""
        kwargs = {k: v for k, v in config.items() if k != "type"}
        return construct(cls, kwargs, f"layer {cls.__name__}")

    def extra_repr(self) -> str:
        parts = [f"name={self.name!r}"]
        parts += [f"{k}={getattr(self, k)!r}" for k in self._repr_keys]
        return ", ".join(parts)


# ---- argument checks shared by the layers (all raise ConfigError naming the layer) ----------


def positive_int(value: Any, arg: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{who}: {arg} must be a positive integer, got {value!r}")
    return value


def conv_groups(groups: Any, filters: int, who: str) -> int:
    """A convolution's groups: a positive int that divides filters (Keras' rule)."""
    groups = positive_int(groups, "groups", who)
    if filters % groups:
        raise ConfigError(f"{who}: filters ({filters}) must be a multiple of groups ({groups})")
    return groups


def int_pair(value: Any, arg: str, who: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width), as Keras accepts for kernel_size, strides."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, Sequence)
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in pair)
    ):
        raise ConfigError(f"{who}: {arg} must be a positive int or a pair of them, got {value!r}")
    return (pair[0], pair[1])


def choice(value: Any, arg: str, choices: Sequence[str], who: str) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        hint = did_you_mean(key, choices) if isinstance(key, str) else ""
        raise ConfigError(
            f"{who}: unknown {arg} {value!r}{hint}; valid values: {', '.join(choices)}"
        )
    return key


def unit_float(value: Any, arg: str, who: str, *, closed: bool = False) -> float:
    """A float in [0, 1) (or [0, 1] with closed=True)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        bounds = "[0, 1]" if closed else "[0, 1)"
        raise ConfigError(f"{who}: {arg} must be a number in {bounds}, got {value!r}")
    return value


def positive_float(value: Any, arg: str, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{who}: {arg} must be a number > 0, got {value!r}")
    return float(value)


def known(dim: int | None, what: str, who: str) -> int:
    """A dimension the layer needs to create its weights must be known at build time."""
    if dim is None:
        raise ShapeError(f"{who} needs a known {what} to build, got None; give it in input_shape")
    return dim
