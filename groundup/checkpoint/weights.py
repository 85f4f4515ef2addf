"""Model weights as safetensors: the state dict without wrapper prefixes, tied tensors stored
once, every key and shape checked on load (a mismatch names the keys and the fix)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from groundup.checkpoint.sharded import gathered_tensors
from groundup.distributed import is_sharded
from groundup.errors import CheckpointError, MissingFileError


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / DDP wrappers, so saved keys carry no prefixes."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (safetensors refuses shared storage).

    For an FSDP2 model this gathers the full tensors: every rank must call it, and only rank 0
    gets them (the others get an empty dict).
    """
    if is_sharded(unwrap(model)):
        return gathered_tensors(unwrap(model))
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unwrap(model).state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen and tensor.numel() > 0:
            continue  # a tied weight: loading restores it through the module it is shared with
        seen[ident] = key
        out[key] = tensor.detach().contiguous().cpu()
    return out


def save_weights(
    model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    save_file(model_tensors(model), str(path), metadata=metadata)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load safetensors weights into `model`; missing, unexpected or mis-shaped keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc}; the file is truncated or not safetensors"
        ) from None
    load_tensors(model, tensors, path, strict=strict)


def load_tensors(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    strict: bool = True,
    allow_missing: tuple[str, ...] = (),
    fix: str = "check the model config",
) -> None:
    """Load `tensors` into `model` after checking them: a shape mismatch is always an error,
    missing or unexpected keys are with `strict` (tied weights, and keys starting with
    `allow_missing`, may be absent). `source` names where they came from, `fix` the remedy."""
    target = unwrap(model)
    tensors = dict(tensors)
    for name, module in target.named_modules():  # older layouts a module still reads
        upgrade = getattr(module, "upgrade_saved_tensors", None)
        if callable(upgrade):
            upgrade(f"{name}." if name else "", tensors)
    expected = target.state_dict()
    shared = _tied_keys(target)
    missing = [
        k
        for k in expected
        if k not in tensors and k not in shared and not k.startswith(allow_missing)
    ]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"shape mismatch loading {source}: " + "; ".join(wrong[:3]))
    if strict and (missing or unexpected):
        parts = [f"missing keys {missing[:5]}"] if missing else []
        parts += [f"unexpected keys {unexpected[:5]}"] if unexpected else []
        raise CheckpointError(f"{source} does not fit this model: {', '.join(parts)}; {fix}")
    target.load_state_dict(tensors, strict=False)


def _tied_keys(model: nn.Module) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (dropped on save)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    tied: set[str] = set()
    for key, tensor in model.state_dict().items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen and tensor.numel() > 0:
            tied.add(key)
        seen.add(ident)
    return tied


def in_dtype_of(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """`model` cast to the floating dtype of `tensors` (the weights FSDP2 gathered onto rank
    0), so a fresh copy that takes them keeps the trained dtype (fp64 runs stay fp64)."""
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return model.to(floating[0]) if floating else model
