"""LoRA: low-rank adapters on chosen `nn.Linear` layers (Hu et al. 2021).

`apply_lora(model, ["*.attn.qkv", "*.attn.proj"])` swaps those Linears for `LoRALinear` in
place and freezes everything else; train as usual; `save_lora` writes only the adapters;
`merge_lora` folds them back so export sees a plain model.

Layout choice: `LoRALinear` *is* an `nn.Linear` that keeps the base module's own `weight` and
`bias` Parameters (same objects, same names) and adds `lora_a` and `lora_b`. So a wrapped
model's state dict has every original key unchanged (`blocks.0.attn.qkv.weight`) plus
`....lora_a` / `....lora_b`: the base checkpoint still loads into it (missing keys are only the
adapters), code that walks `nn.Linear` modules (init, optimizer groups) keeps working, and there
is no `.base_layer.` prefix to strip at export. Load the base weights first, then apply_lora
(or load them afterwards with strict=False: only the adapter keys are missing).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from groundup.checkpoint import unwrap
from groundup.errors import CheckpointError, ConfigError, MissingFileError
from groundup.registry import did_you_mean

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "groundup.lora"

__all__ = [
    "LoRALinear",
    "apply_lora",
    "lora_state_dict",
    "save_lora",
    "load_lora",
    "merge_lora",
    "trainable_parameters",
]


def _check_args(rank: int, alpha: float, dropout: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ConfigError(f"LoRA alpha must be > 0, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


class LoRALinear(nn.Linear):
    """`y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank`, with W and b frozen.

    A (rank, in) starts Kaiming-uniform and B (out, rank) starts at zero, so a fresh adapter
    leaves the output exactly equal to the base layer's. `merge()` folds the update into W for
    inference (the adapter path is then skipped); `unmerge()` takes it out again.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if not isinstance(base, nn.Linear) or isinstance(base, LoRALinear):
            raise ConfigError(
                f"LoRALinear wraps a plain nn.Linear, got {type(base).__name__}; "
                "apply LoRA once, to Linear layers only"
            )
        _check_args(rank, alpha, dropout)
        w = base.weight
        # Built on the meta device so nn.Linear allocates nothing; then adopt the base's own
        # Parameters, which keeps their names, values, device, dtype and any sharing.
        super().__init__(
            base.in_features, base.out_features, bias=base.bias is not None, device="meta"
        )
        self.weight = w
        self.bias = base.bias
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Parameter(
            torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_b = nn.Parameter(
            torch.empty(base.out_features, rank, device=w.device, dtype=w.dtype)
        )
        self.merged = False
        self.reset_lora_parameters()

    @property
    def dropout(self) -> float:
        return self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A as nn.Linear inits its weight, B = 0: the adapter starts as an exact no-op."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def delta_weight(self) -> Tensor:
        """The update B @ A * scaling (out, in), computed in fp32 (or better) and cast to W's
        dtype."""
        dtype = torch.promote_types(self.lora_b.dtype, torch.float32)
        delta = (self.lora_b.to(dtype) @ self.lora_a.to(dtype)) * self.scaling  # (out, in)
        return delta.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:
            return out
        # Two thin matmuls, never B @ A (out x in): that would cost a full-size weight per step.
        h = F.linear(self.lora_dropout(x), self.lora_a)  # (..., rank)
        # In place, scaled in the same kernel: no extra (..., out) temporaries. Safe for autograd:
        # the backward of F.linear needs its inputs, never its output.
        return out.add_(F.linear(h, self.lora_b), alpha=self.scaling)  # (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into W (in place), for inference.

        Traps: while merged, A and B get no gradient; and `merged` is not in the state dict, so
        a full state dict saved while merged holds W + BA (use `save_lora`, or `merge_lora`
        for export).
        """
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapter out of W again (exact up to float rounding; lossy in bf16)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def adapter_params(self) -> dict[str, nn.Parameter]:
        return {"lora_a": self.lora_a, "lora_b": self.lora_b}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


# ----------------------------------------------------------------------------------------------
# Swapping modules by name


def _matches(pattern: str, name: str) -> bool:
    """fnmatch on the full dotted name ('*.attn.qkv'); a 're:' prefix means a regex fullmatch."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _generic_name(name: str) -> str:
    """'blocks.3.attn.qkv' -> '*.attn.qkv' (the part after the last layer index)."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return "*." + ".".join(parts[idx[-1] + 1 :]) if idx and idx[-1] < len(parts) - 1 else name


def _linear_names(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return list(dict.fromkeys(_generic_name(n) for n in names))


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has; tied weights have more than one."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"LoRA targets must be non-empty strings, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"LoRA target {pattern!r} is not a valid regex: {exc}") from None


def _select(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules the patterns match; every pattern must match, every match be Linear."""
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ConfigError(
            f"LoRA targets must be a non-empty list of module-name patterns, got {targets!r}; "
            "e.g. ['*.attn.qkv', '*.attn.proj']"
        )
    for pattern in targets:
        _check_pattern(pattern)
    shared = _shared_weights(model)
    chosen: list[str] = []
    used: set[str] = set()
    for name, module in model.named_modules():  # module order, so results do not depend on
        hit = [p for p in targets if name and _matches(p, name)]  # the order of the patterns
        if not hit:
            continue
        used.update(hit)
        if isinstance(module, LoRALinear):
            raise ConfigError(
                f"{name} already has a LoRA adapter; apply_lora once per layer "
                "(or merge_lora first)"
            )
        if not isinstance(module, nn.Linear):
            inner = [f"{name}.{n}" for n, m in module.named_modules() if n and type(m) is nn.Linear]
            example = f" (its Linear layers: {', '.join(inner[:4])})" if inner else ""
            raise ConfigError(
                f"LoRA target {hit[0]!r} matches {name} ({type(module).__name__}), which is "
                f"not an nn.Linear; target Linear layers only{example}"
            )
        tied = [t for t in shared[id(module.weight)] if t != f"{name}.weight"]
        if tied:
            raise ConfigError(
                f"{name}.weight is tied to {', '.join(tied)}; merging LoRA would change both: "
                "leave it out of the targets"
            )
        chosen.append(name)
    for pattern in targets:
        if pattern not in used:
            linears = _linear_names(model)
            raise ConfigError(
                f"no module matches LoRA target {pattern!r}{did_you_mean(pattern, linears)}; "
                "patterns match full dotted names (fnmatch, or 're:' + regex); "
                f"Linear modules: {', '.join(linears[:8])}"
            )
    return chosen


def _swap(model: nn.Module, names: Sequence[str], rank: int, alpha: float, dropout: float) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))


def _lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)}


def _freeze_all_but_adapters(model: nn.Module) -> None:
    adapters = {id(p) for m in _lora_modules(model).values() for p in m.adapter_params().values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in adapters)


def apply_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
) -> list[str]:
    """Swap the `nn.Linear` modules whose names match `targets` for `LoRALinear`, in place,
    and freeze every other parameter. Returns the names replaced, in module order.

    Patterns match full dotted names with fnmatch (`'*.attn.qkv'`, `'blocks.0.mlp.*'`) or, with
    a `'re:'` prefix, a regex (`'re:.*\\.(qkv|proj)'`). Every pattern must match something and
    every match must be a Linear (a typo is an error, not a silent no-op).
    """
    model = unwrap(model)
    names = _select(model, targets)
    _check_args(rank, alpha, dropout)  # before any module is swapped
    _swap(model, names, rank, alpha, dropout)
    _freeze_all_but_adapters(model)
    return names


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors, under the model's own keys (`blocks.0.attn.qkv.lora_a`)."""
    out: dict[str, Tensor] = {}
    for name, module in _lora_modules(model).items():
        for key, p in module.adapter_params().items():
            out[f"{name}.{key}"] = p.detach()
    return out


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights counted once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put a plain `nn.Linear` back in its place.

    The merged weight is the same Parameter object (no copy), so memory does not double.
    Returns the model (changed in place) for chaining into export.
    """
    root = unwrap(model)
    for name, module in _lora_modules(root).items():
        module.merge()
        plain = nn.Linear(
            module.in_features, module.out_features, bias=module.bias is not None, device="meta"
        )
        plain.weight = module.weight
        plain.bias = module.bias
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name), child, plain)
    return model


# ----------------------------------------------------------------------------------------------
# Saving and loading adapters


def save_lora(model: nn.Module, path: str | Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write `path/adapter.safetensors` (adapter tensors only) and `path/adapter_config.json`
    (rank, alpha, dropout, the module names, and `config`: your own JSON-able metadata, e.g. the
    base model's name or the run's config). Returns the directory.
    """
    modules = _lora_modules(model)
    if not modules:
        raise ConfigError("the model has no LoRA adapters to save; call apply_lora first")
    hyper = {(m.rank, m.alpha, m.dropout) for m in modules.values()}
    if len(hyper) > 1:
        raise ConfigError(
            f"adapters with different (rank, alpha, dropout) {sorted(hyper)} cannot share one "
            "adapter_config.json; use one rank/alpha for all targets"
        )
    rank, alpha, dropout = hyper.pop()
    meta = {
        "format": FORMAT,
        "version": 1,
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": list(modules),  # exact names: each is also an fnmatch pattern for itself
        "config": dict(config) if config is not None else {},
    }
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as exc:
        raise ConfigError(f"save_lora config must be JSON-serializable: {exc}") from None
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(path / ADAPTER_FILE), metadata={"format": FORMAT})
    (path / CONFIG_FILE).write_text(text + "\n")
    return path


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise MissingFileError(f"no {CONFIG_FILE} in {path}; point load_lora at a save_lora folder")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{cfg_path} is not valid JSON ({exc}); the file is damaged"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path} is not a groundup LoRA config (format {FORMAT!r})")
    for key in ("rank", "alpha", "dropout", "targets"):
        if key not in meta:
            raise CheckpointError(f"{cfg_path} lacks '{key}'; save it again with save_lora")
    return meta


def load_lora(model: nn.Module, path: str | Path) -> list[str]:
    """Apply the adapters described in `path/adapter_config.json` and load their tensors.

    Layers that already carry a matching LoRALinear are loaded into as they are (resume);
    plain Linears are wrapped first. Everything is checked before the model is touched, so a
    mismatch (other base model, other rank) raises CheckpointError and leaves it unchanged.
    Returns the module names loaded.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"LoRA adapter folder not found: {path}")
    meta = _read_config(path)
    weights = path / ADAPTER_FILE
    if not weights.is_file():
        raise MissingFileError(f"no {ADAPTER_FILE} in {path}; the adapter save is incomplete")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}; the file is truncated") from None
    root = unwrap(model)
    rank, alpha, dropout = int(meta["rank"]), float(meta["alpha"]), float(meta["dropout"])
    modules = dict(root.named_modules())
    names = list(meta["targets"])
    to_wrap = []
    for name in names:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            what = "no such module" if module is None else f"a {type(module).__name__}"
            raise CheckpointError(
                f"the adapter in {path} targets {name}, but this model has {what} there; "
                "load it into the base model it was trained on"
            )
        if isinstance(module, LoRALinear):
            if module.merged:
                raise CheckpointError(f"{name} is merged; unmerge it before loading new adapters")
            if (module.rank, module.alpha) != (rank, alpha):
                raise CheckpointError(
                    f"{name} has LoRA rank {module.rank}, alpha {module.alpha:g} but {path} "
                    f"holds rank {rank}, alpha {alpha:g}; load into the plain base model"
                )
        else:
            to_wrap.append(name)
    expected = {
        f"{n}.{k}": shape
        for n in names
        for k, shape in (
            ("lora_a", (rank, modules[n].in_features)),
            ("lora_b", (modules[n].out_features, rank)),
        )
    }
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {v}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != v
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {items[:3]}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        )
        raise CheckpointError(f"{weights} does not fit this model: {detail}")
    _swap(root, to_wrap, rank, alpha, dropout)
    lora = _lora_modules(root)
    with torch.no_grad():
        for name in names:
            for key, p in lora[name].adapter_params().items():
                p.copy_(tensors[f"{name}.{key}"])
    _freeze_all_but_adapters(root)
    return names
