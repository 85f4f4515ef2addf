"""What `compile` was given, per output: one spec for every output, a list in output order,
or a dict by output name (Keras' three spellings of losses, metrics and loss_weights)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from groundup.errors import ConfigError
from groundup.keras.activations import get_activation
from groundup.keras.losses import keras_loss
from groundup.train.losses import Loss
from groundup.train.metrics import check_metrics_fit_loss


@dataclass
class CompileArgs:
    """What compile was given, checked, until the model's outputs are known."""

    optimizer: Any
    lr: float | None
    loss: Any
    metrics: Any
    loss_weights: Any
    trainer_options: dict[str, Any]
    saved: dict[str, Any] = field(default_factory=dict)  # the names architecture.json keeps


def per_output(spec: Any, names: Sequence[str], what: str, default: Any = None) -> list[Any]:
    """One entry per output from one spec (all outputs), a list in order or a dict by name."""
    if isinstance(spec, Mapping):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise ConfigError(
                f"compile got a {what} for output '{unknown[0]}', but the model's outputs are "
                f"{list(names)}"
            )
        return [spec.get(n, default) for n in names]
    if isinstance(spec, (list, tuple)) and what != "metrics":
        if len(spec) != len(names):
            raise ConfigError(
                f"compile got {len(spec)} values of {what} for {len(names)} outputs "
                f"{list(names)}; give one per output (or a dict by output name)"
            )
        return list(spec)
    return [spec] * len(names)


def per_output_metrics(metrics: Any, names: Sequence[str]) -> list[list[Any]]:
    if metrics is None:
        return [[] for _ in names]
    if isinstance(metrics, Mapping):
        per = per_output(metrics, names, "metrics", default=[])
        return [list(m) if isinstance(m, (list, tuple)) else [m] for m in per]
    if not isinstance(metrics, (list, tuple)):
        raise ConfigError(f"metrics must be a list (or a dict by output name), got {metrics!r}")
    if len(names) == 1:
        if len(metrics) == 1 and isinstance(metrics[0], (list, tuple)):
            return [list(metrics[0])]
        return [list(metrics)]
    if len(metrics) == len(names) and all(isinstance(m, (list, tuple)) for m in metrics):
        return [list(m) for m in metrics]
    raise ConfigError(
        f"metrics of a model with {len(names)} outputs {list(names)} must be a list of lists "
        f"(one per output) or a dict by output name, got {list(metrics)!r}"
    )


def flat_metrics(metrics: Any) -> list[Any]:
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        metrics = list(metrics.values())
    if not isinstance(metrics, (list, tuple)):
        return [metrics]
    out: list[Any] = []
    for m in metrics:
        out += flat_metrics(m) if isinstance(m, (list, tuple, Mapping)) else [m]
    return out


def names_only(spec: Any) -> Any:
    """The spec when it is names only (saveable in architecture.json), else None."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        inner = {k: names_only(v) if v is not None else None for k, v in spec.items()}
        ok = all(v is not None or spec[k] is None for k, v in inner.items())
        return inner if ok else None
    if isinstance(spec, (list, tuple)):
        inner_list = [names_only(v) for v in spec]
        return inner_list if all(v is not None for v in inner_list) else None
    return None


def resolve_losses(
    specs: Sequence[Any], metrics: Sequence[Sequence[Any]], logit_activations: Mapping[int, str]
) -> tuple[list[Loss | None], list[Callable[[Tensor], Tensor] | None], set[int]]:
    """Each output's Loss (None: not trained), what turns its outputs into what its metrics
    read, and which outputs train on their logits: a cross-entropy "from probabilities" on an
    output whose layer applies the activation it expects (`logit_activations`: output number
    -> that layer's activation) takes the logits instead, as a stable log-softmax."""
    losses: list[Loss | None] = []
    transforms: list[Callable[[Tensor], Tensor] | None] = []
    logits: set[int] = set()
    for i, spec in enumerate(specs):
        if spec is None:
            losses.append(None)
            transforms.append(None)
            continue
        loss_fn = keras_loss(spec)
        check_metrics_fit_loss(loss_fn, metrics[i])
        expects = loss_fn.expects_activation
        if expects and not loss_fn.from_logits and logit_activations.get(i) == expects:
            loss_fn = loss_fn.with_logits()
            logits.add(i)
            transforms.append(get_activation(expects))
        else:
            transforms.append(loss_fn.probabilities())
        losses.append(loss_fn)
    return losses, transforms, logits
