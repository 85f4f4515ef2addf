"""GPT weights to and from Hugging Face transformers' naming and layout (configs: gpt_configs.py).

Covers `GPT2LMHeadModel` (flavour "gpt2") and `LlamaForCausalLM` (flavour "llama"), plus
Mistral (read as llama: same architecture), Qwen2 (llama with `qkv_bias=True`), Qwen3 (llama
with q_norm/k_norm) and Gemma (llama's tensor names; its (1 + w) norm weights are stored as
they are, since our RMSNorm has the same offset). Pure tensor and dict work: transformers
itself is not imported, so converting needs only torch.

Layout differences that matter:
- GPT-2 uses `Conv1D`, whose weight is (in, out): the transpose of `nn.Linear`'s (out, in).
- Our attention has one fused qkv Linear; HF Llama has q_proj, k_proj, v_proj (concatenated
  in that order along the output dimension). GPT-2's c_attn is already fused, same order.
- Our RoPE uses HF's rotate_half layout, so Llama q/k weights need no permutation.
- q takes n_head * head_dim rows of the fused qkv, which is not n_embd when head_dim is set
  apart (Qwen3, Gemma).
- Tied embeddings: HF files omit lm_head.weight; HF modules still list it in state_dict().
- Classifier and base-model files have no lm_head at all: convert them with lm_head=False.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from groundup.errors import CheckpointError, ConfigError
from groundup.interop.checks import check_fits, few
from groundup.interop.gpt_configs import (  # the config half, re-exported for old imports
    SUPPORTED_MODEL_TYPES,
    gpt_config_from_hf,
    gpt_config_to_hf,
    hf_model_type,
)
from groundup.models.gpt import GPT, GPTConfig

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "gpt_config_from_hf",
    "gpt_config_to_hf",
    "hf_model_type",
    "state_dict_from_hf",
    "state_dict_to_hf",
]

# Our per-layer names -> HF per-layer names (after "transformer.h.{i}." / "model.layers.{i}.").
# The bool says the weight is transposed (GPT-2 Conv1D).
_GPT2_LAYER = {
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),
    "norm2.bias": ("ln_2.bias", False),
    "mlp.up.weight": ("mlp.c_fc.weight", True),
    "mlp.up.bias": ("mlp.c_fc.bias", False),
    "mlp.down.weight": ("mlp.c_proj.weight", True),
    "mlp.down.bias": ("mlp.c_proj.bias", False),
}
_GPT2_TOP = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "norm.weight": "transformer.ln_f.weight",
    "norm.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_LAYER = {
    "norm1.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.proj.bias": "self_attn.o_proj.bias",
    "attn.q_norm.weight": "self_attn.q_norm.weight",  # QK-norm (Qwen3)
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.gate.bias": "mlp.gate_proj.bias",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.up.bias": "mlp.up_proj.bias",
    "mlp.down.weight": "mlp.down_proj.weight",
    "mlp.down.bias": "mlp.down_proj.bias",
}
_LLAMA_TOP = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
# HF keys that are buffers, not weights: old GPT-2 files store the causal mask, old Llama
# files the RoPE frequencies. Both are recomputed, so they are dropped on import.
_IGNORED_HF = {
    "gpt2": re.compile(r"\.attn\.(bias|masked_bias)$"),
    "llama": re.compile(r"rotary_emb\.inv_freq$"),
}
_LAYER_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


# ------------------------------------------------------------------------------ state dicts


def state_dict_to_hf(
    model_or_sd: nn.Module | Mapping[str, Tensor],
    cfg: GPTConfig | None = None,
    *,
    include_tied: bool = False,
    lm_head: bool = True,
) -> dict[str, Tensor]:
    """Our GPT state dict in HF naming and layout, ready for `GPT2LMHeadModel`,
    `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM` or `GemmaForCausalLM` (the
    family `hf_model_type(cfg)` names; the tensors alone do not refuse an option the family
    lacks: `gpt_config_to_hf` does).

    cfg defaults to the model's config. A tied lm_head.weight is left out (as in HF's own
    files; safetensors also refuses two names for one tensor) unless include_tied=True, which
    `hf_model.load_state_dict(sd, strict=True)` needs. GPT-2 without biases exports zero
    biases, since HF GPT-2 always has them. lm_head=False converts a trunk without the head
    (a classifier's `.gpt`): lm_head.weight is neither needed nor written.
    """
    if isinstance(model_or_sd, nn.Module):
        module = getattr(model_or_sd, "_orig_mod", model_or_sd)  # torch.compile wrapper
        module = getattr(module, "module", module)  # DDP wrapper
        cfg = cfg or module.config
        sd = module.state_dict()
    else:
        sd = dict(model_or_sd)
    if cfg is None:
        raise ConfigError("state_dict_to_hf needs cfg when given a state dict; pass the GPTConfig")
    if cfg.tie_embeddings and lm_head:
        # A file saved with deduplicated shared tensors may hold only one of the two names.
        for a, b in (("tok_emb.weight", "lm_head.weight"), ("lm_head.weight", "tok_emb.weight")):
            if a not in sd and b in sd:
                sd[a] = sd[b]
    expected = _expected_shapes(cfg)
    if not lm_head:
        expected.pop("lm_head.weight")
    _check_against(sd, expected, what="GPT state dict")

    gpt2 = cfg.flavour == "gpt2"
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key == "lm_head.weight" and cfg.tie_embeddings and not include_tied:
            continue
        m = _LAYER_KEY.fullmatch(key)
        if m is None:
            out[(_GPT2_TOP if gpt2 else _LLAMA_TOP)[key]] = t
        elif gpt2:
            hf_name, transpose = _GPT2_LAYER[m[2]]
            out[f"transformer.h.{m[1]}.{hf_name}"] = t.t().contiguous() if transpose else t
        elif m[2].startswith("attn.qkv."):
            kind = m[2].rsplit(".", 1)[1]  # weight or bias
            q, kv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
            sizes = [q, kv, kv]
            for proj, part in zip(
                ("q_proj", "k_proj", "v_proj"), t.split(sizes, dim=0), strict=True
            ):
                # clone: the three slices would share one storage, which safetensors refuses
                out[f"model.layers.{m[1]}.self_attn.{proj}.{kind}"] = part.clone()
        else:
            out[f"model.layers.{m[1]}.{_LLAMA_LAYER[m[2]]}"] = t
    if gpt2 and not cfg.bias:
        for hf_key, shape in _expected_hf_shapes(cfg, include_tied).items():
            if hf_key == "lm_head.weight":
                continue  # the head is never a bias: present above or left out on purpose
            if hf_key not in out:  # a bias we do not have: zero is the same function
                emb = sd["tok_emb.weight"]
                out[hf_key] = torch.zeros(shape, dtype=emb.dtype, device=emb.device)
    return out


def state_dict_from_hf(
    hf_sd: Mapping[str, Tensor], cfg: GPTConfig, *, lm_head: bool = True
) -> dict[str, Tensor]:
    """A state dict for `GPT(cfg).load_state_dict(..., strict=True)` from HF GPT-2, Llama,
    Mistral, Qwen2, Qwen3 or Gemma weights (an LM-head model's state dict or model.safetensors, with or
    without the "transformer."/"model." prefix). Wrong keys or shapes are a CheckpointError.

    lm_head=False reads the trunk only (a base model or a classifier's weights, after taking
    out its score head): no lm_head.weight is needed, and one in the file is dropped.
    """
    gpt2 = cfg.flavour == "gpt2"
    prefix = "transformer." if gpt2 else "model."
    ignored = _IGNORED_HF[cfg.flavour]
    sd: dict[str, Tensor] = {}
    for key, t in hf_sd.items():
        if ignored.search(key):
            continue
        if not key.startswith((prefix, "lm_head.")):
            key = prefix + key  # bare base-model files (e.g. the original gpt2 checkpoint)
        sd[key] = t
    if cfg.tie_embeddings or not lm_head:
        sd.pop("lm_head.weight", None)  # tied: the embedding is the head, the copy is redundant
    expected = _expected_hf_shapes(cfg)
    if not lm_head:
        expected.pop("lm_head.weight", None)
    _check_against(sd, expected, what="Hugging Face state dict")

    out: dict[str, Tensor] = {}
    if gpt2:
        top = {hf: ours for ours, hf in _GPT2_TOP.items()}
        layer = {hf: (ours, tr) for ours, (hf, tr) in _GPT2_LAYER.items()}
        pattern = re.compile(r"transformer\.h\.(\d+)\.(.+)")
    else:
        top = {hf: ours for ours, hf in _LLAMA_TOP.items()}
        layer = {hf: (ours, False) for ours, hf in _LLAMA_LAYER.items()}
        pattern = re.compile(r"model\.layers\.(\d+)\.(.+)")
    for key, t in sd.items():
        m = pattern.fullmatch(key)
        if m is None:
            out[top[key]] = t
            continue
        i, name = m[1], m[2]
        if name.startswith("self_attn.") and name.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            continue  # fused below
        ours, transpose = layer[name]
        if gpt2 and not cfg.bias and ours.endswith(".bias"):
            continue
        out[f"blocks.{i}.{ours}"] = t.t().contiguous() if transpose else t
    if gpt2 and not cfg.bias:
        _check_zero_biases(sd)
        out.pop("norm.bias", None)
    if not gpt2:
        kinds = ("weight", "bias") if cfg.bias or cfg.qkv_bias else ("weight",)
        for i in range(cfg.n_layer):
            for kind in kinds:
                parts = [sd[f"model.layers.{i}.self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    if cfg.tie_embeddings and lm_head:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out


# ------------------------------------------------------------------------------- checking


def _expected_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    """Our state dict's keys and shapes for cfg, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        model = GPT(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _expected_hf_shapes(cfg: GPTConfig, include_tied: bool = False) -> dict[str, torch.Size]:
    """HF keys and shapes for cfg: our meta state dict sent through the converter."""
    if cfg.flavour == "gpt2" and not cfg.bias:
        cfg = GPTConfig.from_dict({**cfg.to_dict(), "bias": True})  # HF GPT-2 always has biases
    with torch.device("meta"):
        sd = GPT(cfg).state_dict()
    return {k: v.shape for k, v in state_dict_to_hf(sd, cfg, include_tied=include_tied).items()}


def _check_against(sd: Mapping[str, Tensor], expected: Mapping[str, torch.Size], what: str) -> None:
    check_fits(sd, expected, what, "GPT", "flavour, sizes, tie_embeddings, bias")


def _check_zero_biases(sd: Mapping[str, Tensor]) -> None:
    nonzero = [k for k, t in sd.items() if k.endswith(".bias") and bool(t.any())]
    if nonzero:
        raise CheckpointError(
            f"checkpoint has nonzero biases ({few(nonzero, 3)}) but the config says bias=False; "
            "set bias=True"
        )
