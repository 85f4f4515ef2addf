"""LoRA adapters in PEFT's format, both ways: `export_peft` writes a groundup LoRA model's
adapter as a folder `peft.PeftModel.from_pretrained(hf_base, DIR)` loads onto the Hugging Face
export of its base; `load_peft_adapter` puts a PEFT adapter onto our GPT as `LoRALinear`s (to
start a LoRA run from it). Pure tensor and JSON work: neither peft nor transformers is imported.

Layout facts that matter:
- PEFT stores A as (r, in) and B as (out, r) for every layer kind, GPT-2's Conv1D included
  (`fan_in_fan_out` only says how the update merges into a Conv1D weight), as LoRALinear does:
  no tensor is transposed either way.
- Our Llama attention has one fused qkv Linear; transformers has q_proj, k_proj and v_proj. One
  rank-r adapter on qkv is three rank-r adapters sharing A, each with its rows of B (exact).
  The other way, separate q/k/v adapters become one adapter of rank r_q + r_k + r_v on qkv,
  A stacked and B block-diagonal, unless their A matrices are equal (then rank r again).
- LoRALinear has one rank and one alpha per model (save_lora needs that): adapters of smaller
  rank are padded with zero rows of A and columns of B (the same function; those directions
  stay zero in training), and a layer whose PEFT scale alpha/r differs has it folded into B.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from groundup.checkpoint import unwrap
from groundup.checkpoint.folders import swap_in
from groundup.errors import CheckpointError, ConfigError, MissingFileError
from groundup.interop.gpt_weights import _GPT2_LAYER, _LLAMA_LAYER
from groundup.models.gpt import GPT, GPTConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's wrapper names around the transformers model
_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight")


# ------------------------------------------------------------------------------ module names


def _layer_table(cfg: GPTConfig) -> dict[str, str]:
    """Our Linear names inside a block -> transformers' (qkv of llama is split, not here)."""
    if cfg.flavour == "gpt2":
        return {
            k.removesuffix(".weight"): hf.removesuffix(".weight")
            for k, (hf, _) in _GPT2_LAYER.items()
            if k.endswith(".weight") and "norm" not in k
        }
    return {
        k.removesuffix(".weight"): hf.removesuffix(".weight")
        for k, hf in _LLAMA_LAYER.items()
        if k.endswith(".weight") and "norm" not in k  # norms (q_norm too) are no Linears
    }


def hf_modules(cfg: GPTConfig, name: str) -> list[tuple[str, slice]]:
    """The transformers module(s) our Linear `name` is, each with its rows of our output.

    "blocks.3.attn.qkv" -> [("transformer.h.3.attn.c_attn", all rows)] (gpt2), or the three
    q/k/v projections of "model.layers.3.self_attn" with their row ranges (llama).
    """
    if name == "lm_head":
        return [("lm_head", slice(None))]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m is None:
        raise ConfigError(f"{name} is not a Linear of a GPT block or lm_head; it has no PEFT name")
    i, inner = m[1], m[2]
    if cfg.flavour == "gpt2":
        return [(f"transformer.h.{i}.{_layer_table(cfg)[inner]}", slice(None))]
    if inner == "attn.qkv":
        q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        rows = {
            "q_proj": slice(0, q),
            "k_proj": slice(q, q + kv),
            "v_proj": slice(q + kv, q + 2 * kv),
        }
        return [(f"model.layers.{i}.self_attn.{p}", r) for p, r in rows.items()]
    return [(f"model.layers.{i}.{_layer_table(cfg)[inner]}", slice(None))]


def _ours_by_hf(model: GPT) -> dict[str, tuple[str, slice]]:
    """transformers module name -> (our Linear name, its rows), for every Linear of the GPT."""
    out: dict[str, tuple[str, slice]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (name == "lm_head" or name.startswith("blocks.")):
            for hf, rows in hf_modules(model.config, name):
                out[hf] = (name, rows)
    return out


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    from groundup.finetune.lora import LoRALinear  # lazy: interop needs LoRA only here

    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def _target_modules(cfg: GPTConfig, hf_names: Sequence[str]) -> list[str]:
    """PEFT's target_modules: "attn.c_attn" when every layer has that adapter (PEFT matches
    a name by its dotted suffix), else the full names of the layers that do."""
    by_suffix: dict[str, set[str]] = {}
    for hf in hf_names:
        m = re.fullmatch(r"(?:transformer\.h|model\.layers)\.(\d+)\.(.+)", hf)
        if m is None:
            by_suffix.setdefault(hf, set()).add(hf)
        else:
            by_suffix.setdefault(m[2], set()).add(m[1])
    out: list[str] = []
    for suffix, layers in by_suffix.items():
        if suffix in layers or layers == {str(i) for i in range(cfg.n_layer)}:
            out.append(suffix)
        else:
            out.extend(hf for hf in hf_names if hf.endswith("." + suffix))
    return out


# ---------------------------------------------------------------------------------- export


def export_peft(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the LoRA adapters of `model` (a GPT language model with LoRALinear layers) as a
    PEFT folder: adapter_config.json + adapter_model.safetensors, named as in the Hugging Face
    export of the base (`export_hf` of the model without adapters).

    `base_model_name_or_path` is recorded for PEFT (the base's Hugging Face export). The folder
    is written beside `out` and renamed into place; a non-empty `out` that is not a PEFT
    adapter folder is refused unless overwrite=True.
    """
    model = unwrap(model)
    if not isinstance(model, GPT) or model.lm_head is None:
        raise ConfigError(
            f"PEFT export writes the LoRA adapters of GPT language models (causal_lm and sft "
            f"runs), not of a {type(model).__name__}; export it merged with --format hf"
        )
    layers = _lora_layers(model)
    if not layers:
        raise ConfigError(
            "the model has no LoRA adapters, so there is no PEFT adapter to write; export "
            "LoRA runs with --format peft, other models with --format hf"
        )
    merged = [n for n, m in layers.items() if m.merged]
    if merged:
        raise ConfigError(f"{merged[0]} has its adapter merged into the weight; unmerge() it first")
    hyper = {(m.rank, m.alpha, m.dropout) for m in layers.values()}
    if len(hyper) > 1:
        raise ConfigError(
            f"adapters with different (rank, alpha, dropout) {sorted(hyper)} do not fit one "
            "adapter_config.json; use one rank and alpha for all targets"
        )
    rank, alpha, dropout = hyper.pop()
    out = Path(out)
    _check_target(out, overwrite)
    cfg = model.config
    tensors: dict[str, Tensor] = {}
    hf_names: list[str] = []
    for name, layer in layers.items():
        a, b = layer.lora_a.detach().cpu(), layer.lora_b.detach().cpu()  # (r, in), (out, r)
        for hf, rows in hf_modules(cfg, name):
            hf_names.append(hf)
            tensors[f"{PREFIX}{hf}.lora_A.weight"] = a.clone().contiguous()
            tensors[f"{PREFIX}{hf}.lora_B.weight"] = b[rows].clone().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": _target_modules(cfg, hf_names),
        # GPT-2's c_attn/c_proj/c_fc are Conv1D (weight (in, out)): PEFT merges transposed
        "fan_in_fan_out": cfg.flavour == "gpt2",
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        text = json.dumps(config, indent=2) + "\n"
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"PEFT export target {out} is a file; pass a folder path")
    previous = (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    if out.is_dir() and any(out.iterdir()) and not previous and not overwrite:
        raise ConfigError(
            f"PEFT export target {out} is not empty and is not an adapter folder; pick an empty "
            "folder or pass overwrite=True (--overwrite; this deletes what is there)"
        )


# ------------------------------------------------------------------------------------ load


def _read_peft(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    if not folder.is_dir():
        raise MissingFileError(f"PEFT adapter folder not found: {folder}")
    cfg_file, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_file.is_file():
        raise MissingFileError(f"no {CONFIG_FILE} in {folder}; point at a PEFT adapter folder")
    if not weights.is_file():
        hint = " (adapter_model.bin is a pickle: re-save it with safetensors)"
        raise MissingFileError(
            f"no {WEIGHTS_FILE} in {folder}"
            + (hint if (folder / "adapter_model.bin").is_file() else "")
        )
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{cfg_file} is not valid JSON ({exc}); the file is damaged"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file} must hold a JSON object; the file is damaged")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights} ({exc}); the file is truncated") from None
    return config, tensors


def _check_peft_config(config: Mapping[str, Any], where: Path) -> None:
    """Refuse what LoRALinear cannot reproduce, naming the option."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ConfigError(
            f"{where} holds a {config.get('peft_type')!r} adapter; groundup loads LoRA adapters"
        )
    refused = {
        "use_dora": (bool(config.get("use_dora")), "DoRA"),
        "lora_bias": (bool(config.get("lora_bias")), "LoRA biases"),
        "bias": (config.get("bias", "none") != "none", "trained biases"),
        "modules_to_save": (bool(config.get("modules_to_save")), "fully trained modules"),
        "alpha_pattern": (bool(config.get("alpha_pattern")), "per-layer alpha"),
        "layer_replication": (bool(config.get("layer_replication")), "replicated layers"),
    }
    for key, (bad, what) in refused.items():
        if bad:
            raise ConfigError(
                f"{where}/{CONFIG_FILE} sets {key} ({what}), which groundup's LoRA does not "
                "implement; use an adapter without it"
            )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise CheckpointError(f"{where}/{CONFIG_FILE} needs a positive {key}, got {value!r}")


def load_peft_adapter(model: nn.Module, folder: str | os.PathLike[str]) -> list[str]:
    """Apply the PEFT LoRA adapter in `folder` to our GPT `model` (in place): its Linears
    become LoRALinear with the adapter's values and every other weight is frozen, as after
    `apply_lora`. Returns our module names, in module order.

    The adapter must have been trained on the Hugging Face form of this very base (its
    module names and shapes are checked before the model is touched). Rank, alpha and dropout
    come from the adapter (see the module docstring for fused qkv and mixed ranks).
    """
    from groundup.finetune.lora import apply_lora

    folder = Path(folder)
    model = unwrap(model)
    if not isinstance(model, GPT):
        raise ConfigError(
            f"PEFT adapters load onto GPT language models, not a {type(model).__name__}"
        )
    config, tensors = _read_peft(folder)
    _check_peft_config(config, folder)
    pairs = _pairs(tensors, folder)
    known = _ours_by_hf(model)
    r0, alpha0 = int(config["r"]), float(config["lora_alpha"])
    rslora = bool(config.get("use_rslora"))

    def scale(r: int) -> float:  # PEFT's scale of a layer of rank r
        return alpha0 / (math.sqrt(r) if rslora else r)

    ours = scale(r0)  # our one scale: the adapter's own at its configured rank
    # our Linear -> [(rows, A, B)], B rescaled where a layer's own scale differs from ours
    parts: dict[str, list[tuple[slice, Tensor, Tensor]]] = {}
    modules = dict(model.named_modules())
    for hf, (a, b) in pairs.items():
        if hf not in known:
            raise CheckpointError(
                f"the adapter in {folder} targets {hf}, which this GPT (flavour "
                f"{model.config.flavour}, {model.config.n_layer} layers) does not have; load it "
                "onto the base it was trained on"
            )
        name, rows = known[hf]
        linear = modules[name]
        n_rows = len(range(*rows.indices(linear.out_features)))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise CheckpointError(
                f"{folder}: {hf} has lora_A {tuple(a.shape)} and lora_B "
                f"{tuple(b.shape)}, which are not a LoRA pair"
            )
        if a.shape[1] != linear.in_features or b.shape[0] != n_rows:
            raise CheckpointError(
                f"{folder}: {hf} has lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} but the "
                f"layer is ({n_rows} out, {linear.in_features} in); the adapter is for another "
                "base model"
            )
        ratio = scale(a.shape[0]) / ours
        parts.setdefault(name, []).append(
            (rows, a.float(), b.float() * ratio if ratio != 1 else b.float())
        )

    fused = {name: _fuse(p, modules[name].out_features) for name, p in parts.items()}
    rank = max(a.shape[0] for a, _ in fused.values())
    names = [n for n in modules if n in fused]  # module order
    apply_lora(
        model, names, rank=rank, alpha=ours * rank, dropout=float(config.get("lora_dropout", 0.0))
    )
    layers = _lora_layers(model)
    with torch.no_grad():
        for name in names:
            a, b = fused[name]
            r = a.shape[0]
            layer = layers[name]
            layer.lora_a.zero_()
            layer.lora_b.zero_()
            layer.lora_a[:r].copy_(a)
            layer.lora_b[:, :r].copy_(b)
    return names


def _pairs(tensors: Mapping[str, Tensor], folder: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """transformers module name -> (lora_A, lora_B), every key accounted for."""
    a_of: dict[str, Tensor] = {}
    b_of: dict[str, Tensor] = {}
    for key, t in tensors.items():
        m = _KEY.fullmatch(key)
        if m is None:
            raise ConfigError(
                f"{folder}/{WEIGHTS_FILE} holds {key}, which is not a LoRA A/B weight of a Linear "
                "layer (embedding adapters, DoRA magnitudes and saved modules are not supported)"
            )
        (a_of if m[2] == "A" else b_of)[m[1]] = t
    if set(a_of) != set(b_of) or not a_of:
        odd = sorted(set(a_of) ^ set(b_of))
        raise CheckpointError(
            f"{folder}/{WEIGHTS_FILE} has no LoRA pairs"
            if not a_of
            else f"{folder}/{WEIGHTS_FILE} lacks the A or B half of {odd[0]}; the file is damaged"
        )
    return {hf: (a_of[hf], b_of[hf]) for hf in a_of}


def _fuse(parts: list[tuple[slice, Tensor, Tensor]], out_features: int) -> tuple[Tensor, Tensor]:
    """One (A, B) for a Linear from the adapters of its row ranges (q/k/v of a fused qkv).
    Equal A matrices over all rows share one A (exact, rank r); otherwise
    A is stacked and B block-diagonal (rank = the sum of the parts' ranks)."""
    if len(parts) == 1 and parts[0][0] == slice(None):
        return parts[0][1], parts[0][2]
    a0 = parts[0][1]
    covered = sum(len(range(*rows.indices(out_features))) for rows, _, _ in parts)
    if covered == out_features and all(torch.equal(a, a0) for _, a, _ in parts):
        b = torch.zeros(out_features, a0.shape[0])
        for rows, _, part_b in parts:
            b[rows] = part_b
        return a0, b
    a = torch.cat([part_a for _, part_a, _ in parts], dim=0)  # (sum r, in)
    b = torch.zeros(out_features, a.shape[0])
    start = 0
    for rows, part_a, part_b in parts:
        r = part_a.shape[0]
        b[rows, start : start + r] = part_b
        start += r
    return a, b
