"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a directory:
  model.safetensors      the unwrapped model's weights (tied weights stored once)
  optimizer.safetensors  optimizer state tensors and the RNG states
  state.json             step/epoch counters, optimizer hyper-parameters, data position, config
It is written into a temporary sibling directory, fsync'd, then renamed into place, so a
crash mid-write never leaves a half checkpoint under the final name.

A run keeps a history in its `checkpoints/` folder:
  step-00000500/  one complete checkpoint per save (the newest `keep_last` are kept)
  best/           the best one by the monitored metric
  latest          a text file naming the newest complete step directory, replaced atomically
                  and updated LAST, so it never names a half-written checkpoint
`find_latest(dir)` follows `latest` and falls back to the newest complete step directory.

Sharded (FSDP2) checkpoints hold `dcp/` (a torch.distributed.checkpoint of the model and
optimizer state dicts, one file per rank plus `.metadata`), `rng.safetensors` (rank 0's RNG)
and `state.json`. Every rank writes its shards into the same temporary directory; rank 0 renames
it once all have finished. DCP reshards on load, so such a checkpoint resumes on any number of
ranks, and also in one plain process (it is read into an ordinary state dict).
DDP and single-process runs write the safetensors form (the state is replicated: rank 0 writes).

Test hook: `GROUNDUP_TEST_SLOW_SAVE=<seconds>` makes `save_checkpoint` sleep right after the
weights are written into the temporary directory, so a test can kill a run mid-save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from groundup.errors import CheckpointError, MissingFileError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
RNG_FILE = "rng.safetensors"
DCP_DIR = "dcp"
DCP_METADATA = ".metadata"
LATEST_FILE = "latest"
STEP_DIR = re.compile(r"^step-(\d+)$")


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
    if _is_sharded(unwrap(model)):
        return _gathered_tensors(unwrap(model))
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


def _is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _tied_by_identity(model: nn.Module) -> set[str]:
    """Names of parameters that are the same object as an earlier-named one (tied weights)."""
    seen: set[int] = set()
    tied: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def _gathered_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU tensors of a sharded model on rank 0 (a collective; {} on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    tied = _tied_by_identity(model)
    return {k: v.detach().contiguous() for k, v in full.items() if k not in tied}


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
    target = unwrap(model)
    expected = target.state_dict()
    shared = _tied_keys(target)
    missing = [k for k in expected if k not in tensors and k not in shared]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"shape mismatch loading {path}: " + "; ".join(wrong[:3]))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        raise CheckpointError(
            f"{path} does not fit this model: {', '.join(parts)}; check the model config"
        )
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


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
        len(g["params"]) != len(c["params"]) for g, c in zip(groups, optimizer.param_groups)
    ):
        raise CheckpointError(
            "the checkpoint's optimizer state does not fit this model's parameters; "
            "resume with the same model config or start a new run"
        )
    optimizer.load_state_dict({"state": state, "param_groups": groups})


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


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temp dir, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / MODEL_FILE)
    slow = os.environ.get("GROUNDUP_TEST_SLOW_SAVE")
    if slow:  # test hook: lets a test kill the process while a checkpoint is half written
        time.sleep(float(slow))
    payload = dict(state or {})
    extra_tensors, rng_meta = rng_tensors()
    payload["rng"] = rng_meta
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        extra_tensors.update(opt_tensors)
        payload["optimizer"] = opt_meta
    save_file(extra_tensors, str(tmp / OPTIMIZER_FILE))
    (tmp / STATE_FILE).write_text(json.dumps(payload, default=_json_default), encoding="utf-8")
    _fsync_dir(tmp)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    """A checkpoint directory whose weights and state both made it to disk."""
    weights = (path / MODEL_FILE).is_file() or is_sharded_checkpoint(path)
    return (path / STATE_FILE).is_file() and weights


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A torch.distributed.checkpoint (FSDP2) checkpoint directory."""
    return (Path(path) / DCP_DIR / DCP_METADATA).is_file()


def step_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete `step-N` checkpoints in `directory`, oldest first (temp dirs never match)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in a `checkpoints/` folder, or None.

    Follows the `latest` pointer; if it is missing or names something incomplete (a crash
    between the rename and the pointer update, or a hand-deleted folder), falls back to the
    newest complete `step-N` directory.
    """
    directory = Path(directory)
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name and "/" not in name and is_complete(directory / name):
            candidates = step_checkpoints(directory)
            # a newer complete step dir than the pointer can exist if the pointer update was lost
            if not candidates or STEP_DIR.match(name) is None:
                return directory / name
            newest = candidates[-1][1]
            pointed = int(STEP_DIR.match(name).group(1))
            return newest if candidates[-1][0] > pointed else directory / name
    candidates = step_checkpoints(directory)
    return candidates[-1][1] if candidates else None


def write_latest(directory: str | Path, name: str) -> None:
    """Point `latest` at `name` atomically (temp file, fsync, os.replace)."""
    directory = Path(directory)
    tmp = directory / f".{LATEST_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / LATEST_FILE)
    _fsync_dir_only(directory)


def save_step_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Save `directory/step-N` atomically, point `latest` at it, then prune old step dirs.

    Order matters for crash safety: the new checkpoint and the pointer are in place before
    anything older is deleted. `keep_last=None` keeps every checkpoint.
    """
    directory = Path(directory)
    path = save_checkpoint(directory / step_dir_name(step), model, optimizer, state)
    write_latest(directory, path.name)
    if keep_last is not None:
        prune_checkpoints(directory, keep_last)
    return path


def prune_checkpoints(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step dirs (never `best/` or what `latest` names),
    and temp dirs left by crashed saves of other processes."""
    directory = Path(directory)
    keep = max(int(keep_last), 1)
    latest = find_latest(directory)
    removed = []
    for _, path in step_checkpoints(directory)[:-keep]:
        if latest is not None and path.resolve() == latest.resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for child in directory.iterdir():  # leftovers of a killed save (another pid's temp dir)
        leftover = re.match(r"^\.step-\d+\.(tmp|old)-(\d+)$", child.name)
        if leftover and child.is_dir() and int(leftover.group(2)) != os.getpid():
            shutil.rmtree(child, ignore_errors=True)
    return removed


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load weights (and optimizer/RNG state) from a checkpoint directory; returns state.json."""
    path = Path(path)
    if is_sharded_checkpoint(path) and (path / STATE_FILE).is_file():
        return load_sharded_checkpoint(path, model, optimizer, restore_rng_state)
    if _is_sharded(model):
        raise CheckpointError(
            f"{path} is a single-file (DDP or one-process) checkpoint and this run shards the "
            "model (strategy fsdp); resume it with distributed.strategy: ddp, or start a new run"
        )
    if not (path / STATE_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a complete groundup checkpoint (needs {MODEL_FILE} and {STATE_FILE})"
        )
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path / STATE_FILE} is corrupted; use an earlier checkpoint"
        ) from None
    load_weights(model, path / MODEL_FILE)
    extra: dict[str, torch.Tensor] = {}
    if (path / OPTIMIZER_FILE).is_file():
        try:
            extra = load_file(str(path / OPTIMIZER_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path / OPTIMIZER_FILE}: {exc}") from None
    if optimizer is not None and "optimizer" in state:
        optimizer_from_flat(optimizer, extra, state["optimizer"])
    if restore_rng_state:
        restore_rng(extra, state.get("rng", {}))
    return state


def save_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write an FSDP2 checkpoint with torch.distributed.checkpoint; every rank must call it.

    Atomic like `save_checkpoint`: all ranks write into one temporary directory (named by rank
    0's pid), and after a barrier rank 0 adds state.json and renames it into place. For several
    nodes, the run directory must be on a file system every node sees.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    path = Path(path)
    main = dist.get_rank() == 0
    box = [f".{path.name}.tmp-{os.getpid()}"]
    dist.broadcast_object_list(box, src=0)
    tmp = path.with_name(box[0])
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / DCP_DIR).mkdir(parents=True)
    dist.barrier()
    tensors: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        tensors["optim"] = get_optimizer_state_dict(model, optimizer)
    dcp.save(tensors, checkpoint_id=str(tmp / DCP_DIR))
    slow = os.environ.get("GROUNDUP_TEST_SLOW_SAVE")
    if slow:
        time.sleep(float(slow))
    dist.barrier()  # every rank's shard file is on disk
    if main:
        payload = dict(state or {})
        rng, rng_meta = rng_tensors()
        payload["rng"] = rng_meta
        payload["format"] = "dcp"
        payload["has_optimizer"] = optimizer is not None
        if optimizer is not None:
            # Trap: dcp.load fills only the keys the fresh optimizer's groups already have,
            # so keys added later (initial_lr, which the LR schedule reads) must travel here.
            payload["optimizer_groups"] = [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
            ]
        payload["saved_world_size"] = dist.get_world_size()
        save_file(rng, str(tmp / RNG_FILE))
        (tmp / STATE_FILE).write_text(json.dumps(payload, default=_json_default), encoding="utf-8")
        _fsync_dir(tmp / DCP_DIR)
        _fsync_dir(tmp)
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        _fsync_dir_only(path.parent)
        if old.exists():
            shutil.rmtree(old)
    dist.barrier()
    return path


def save_sharded_step_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """`save_step_checkpoint` for FSDP2: sharded save by all ranks, pointer and pruning by rank 0."""
    import torch.distributed as dist

    directory = Path(directory)
    path = save_sharded_checkpoint(directory / step_dir_name(step), model, optimizer, state)
    if dist.get_rank() == 0:
        write_latest(directory, path.name)
        if keep_last is not None:
            prune_checkpoints(directory, keep_last)
    dist.barrier()
    return path


def load_sharded_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load a torch.distributed.checkpoint directory into `model` (sharded or not, any number
    of ranks: DCP reshards) and `optimizer`; returns state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path / STATE_FILE} is corrupted; use an earlier checkpoint"
        ) from None
    with_optim = optimizer is not None and state.get("has_optimizer", True)
    target: dict[str, Any] = {"model": get_model_state_dict(model)}
    if with_optim:
        target["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():
            # one plain process reading a sharded checkpoint: the intended case here
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load")
            dcp.load(target, checkpoint_id=str(path / DCP_DIR))
    except Exception as exc:  # DCP wraps every reader failure in its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read the sharded checkpoint {path / DCP_DIR}: {first}; the files are "
            "damaged or from another model config"
        ) from None
    set_model_state_dict(model, target["model"])
    if with_optim:
        set_optimizer_state_dict(model, optimizer, target["optim"])
        for group, saved in zip(optimizer.param_groups, state.get("optimizer_groups", [])):
            for key, value in saved.items():
                if isinstance(group.get(key), torch.Tensor):
                    group[key].fill_(value)  # a tensor LR (fused/capturable): keep the tensor
                else:
                    group[key] = tuple(value) if isinstance(value, list) else value
    if restore_rng_state and (path / RNG_FILE).is_file():
        try:
            rng = load_file(str(path / RNG_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path / RNG_FILE}: {exc}") from None
        restore_rng(rng, state.get("rng", {}))
    return state


def _fsync_dir(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir_only(directory)


def _fsync_dir_only(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def config_diff(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested config dicts differ (`train.max_steps`)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            name = f"{prefix}{key}"
            if key not in saved or key not in current:
                out.append(name)
            else:
                out.extend(config_diff(saved[key], current[key], name + "."))
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [prefix.rstrip(".") or "<config>"]


def check_config(saved: dict[str, Any] | None, current: dict[str, Any] | None, where: Any) -> None:
    """Refuse to resume a checkpoint made with another config, naming the differing fields."""
    if saved is None or current is None:
        return
    diff = config_diff(saved, current)
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise CheckpointError(
            f"--resume needs the config the run started with ({where}); these fields differ: "
            f"{shown}; undo those changes or start a new run_dir"
        )
