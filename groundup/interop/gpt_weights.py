"""GPT weights and configs to and from Hugging Face transformers' naming and layout.

Covers `GPT2LMHeadModel` (flavour "gpt2") and `LlamaForCausalLM` (flavour "llama"), plus
Mistral (read as llama: same architecture) and Qwen2 (llama with `qkv_bias=True`). Pure
tensor and dict work: transformers itself is not imported, so converting needs only torch.

Layout differences that matter:
- GPT-2 uses `Conv1D`, whose weight is (in, out): the transpose of `nn.Linear`'s (out, in).
- Our attention has one fused qkv Linear; HF Llama has q_proj, k_proj, v_proj (concatenated
  in that order along the output dimension). GPT-2's c_attn is already fused, same order.
- Our RoPE uses HF's rotate_half layout, so Llama q/k weights need no permutation.
- Tied embeddings: HF files omit lm_head.weight; HF modules still list it in state_dict().
- Classifier and base-model files have no lm_head at all: convert them with lm_head=False.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from groundup.errors import CheckpointError, ConfigError
from groundup.interop.checks import check_fits, few
from groundup.models.gpt import GPT, GPTConfig

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


# ---------------------------------------------------------------------------------- configs


def gpt_config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A transformers config dict (config.json content) describing the same model.

    Token ids (bos/eos/pad) are not known here; the exporter adds them from the tokenizer.
    A llama-flavour config with qkv_bias (and bias=False) is written as Qwen2, the
    transformers architecture with exactly that layout.
    """
    if cfg.flavour == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size,
            "n_embd": cfg.n_embd,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.intermediate_size,
            "activation_function": "gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "layer_norm_epsilon": cfg.norm_eps,
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    if cfg.qkv_bias and not cfg.bias:
        return _qwen2_config_to_hf(cfg)
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta, >= 5 reads rope_parameters: write both.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def _qwen2_config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layer,
        "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")


def gpt_config_from_hf(hf_config: Mapping[str, Any] | Any) -> GPTConfig:
    """A GPTConfig from a transformers config dict (or config object) of GPT-2, Llama,
    Mistral or Qwen2.

    A setting we cannot reproduce exactly (rope scaling, another activation, ...) is a
    ConfigError naming it, rather than a model that loads and quietly computes something else.
    """
    d = dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)
    model_type = d.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config_from_hf(d)
    if model_type == "llama":
        return _llama_config_from_hf(d)
    if model_type == "mistral":
        return _mistral_config_from_hf(d)
    if model_type == "qwen2":
        return _qwen2_config_from_hf(d)
    raise ConfigError(
        f"unsupported Hugging Face model_type {model_type!r} for GPT; supported: "
        + ", ".join(map(repr, SUPPORTED_MODEL_TYPES))
    )


def _unsupported(field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"Hugging Face config field {field}={value!r} is not supported: {why}")


def _gpt2_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    act = d.get("activation_function", "gelu_new")
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    if act not in activations:
        raise _unsupported(
            "activation_function", act, f"GPT flavour gpt2 supports {', '.join(activations)}"
        )
    if d.get("scale_attn_by_inverse_layer_idx", False):
        raise _unsupported("scale_attn_by_inverse_layer_idx", True, "set it to false")
    if not d.get("scale_attn_weights", True):
        raise _unsupported("scale_attn_weights", False, "attention is always scaled")
    if d.get("add_cross_attention", False):
        raise _unsupported("add_cross_attention", True, "GPT is decoder-only")
    n_embd = d.get("n_embd", 768)
    return GPTConfig(
        flavour="gpt2",
        n_layer=d.get("n_layer", 12),
        n_head=d.get("n_head", 12),
        n_embd=n_embd,
        block_size=d.get("n_positions", d.get("n_ctx", 1024)),
        vocab_size=d.get("vocab_size", 50257),
        intermediate_size=d.get("n_inner") or 4 * n_embd,
        dropout=float(d.get("resid_pdrop", 0.1)),
        bias=True,
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(d.get("tie_word_embeddings", True)),
        init_std=float(d.get("initializer_range", 0.02)),
        activation=activations[act],
    )


def _mistral_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    """Mistral is Llama's architecture plus a sliding attention window; a window that never
    cuts inside the context (null, or >= max_position_embeddings) is plain causal attention."""
    window, context = d.get("sliding_window"), d.get("max_position_embeddings", 4096 * 32)
    if window is not None and window < context:
        raise _unsupported(
            "sliding_window",
            window,
            f"sliding-window attention is not implemented; it is exact for contexts up to "
            f"{window} tokens, so set max_position_embeddings to {window} (or sliding_window "
            "to null) in config.json to use the model with that context",
        )
    if "layer_types" in d and any(t != "full_attention" for t in d["layer_types"] or []):
        raise _unsupported("layer_types", d["layer_types"], "only full attention is implemented")
    return _llama_config_from_hf(d)


def _qwen2_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    """Qwen2: Llama's architecture with biases on q/k/v (not on o_proj or the MLP)."""
    if d.get("use_sliding_window", False):
        raise _unsupported(
            "use_sliding_window", True, "sliding-window attention is not implemented; set it false"
        )
    if any(t != "full_attention" for t in d.get("layer_types") or []):
        raise _unsupported("layer_types", d["layer_types"], "only full attention is implemented")
    for field in ("attention_bias", "mlp_bias"):
        if field in d:  # not Qwen2 fields: a file that sets them is something else
            raise _unsupported(field, d[field], "Qwen2 has biases on q/k/v only")
    cfg = _llama_config_from_hf(d)
    return GPTConfig.from_dict({**cfg.to_dict(), "qkv_bias": True})


def _llama_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise _unsupported("hidden_act", act, "GPT flavour llama uses SwiGLU with 'silu'")
    if d.get("rope_scaling"):
        raise _unsupported("rope_scaling", d["rope_scaling"], "only plain RoPE is implemented")
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise _unsupported(
            "rope_parameters.rope_type", rope["rope_type"], "only plain RoPE is implemented"
        )
    partial = rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _unsupported("partial_rotary_factor", partial, "RoPE here rotates the whole head")
    if d.get("pretraining_tp", 1) != 1:
        raise _unsupported("pretraining_tp", d["pretraining_tp"], "set it to 1")
    attn_bias, mlp_bias = bool(d.get("attention_bias", False)), bool(d.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise _unsupported(
            "attention_bias/mlp_bias", (attn_bias, mlp_bias), "GPT has one `bias` for both"
        )
    hidden, n_head = d.get("hidden_size", 4096), d.get("num_attention_heads", 32)
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * n_head != hidden:
        raise _unsupported("head_dim", head_dim, "it must be hidden_size/num_attention_heads")
    return GPTConfig(
        flavour="llama",
        n_layer=d.get("num_hidden_layers", 32),
        n_head=n_head,
        n_kv_head=d.get("num_key_value_heads") or n_head,
        n_embd=hidden,
        block_size=d.get("max_position_embeddings", 2048),
        vocab_size=d.get("vocab_size", 32000),
        intermediate_size=d.get("intermediate_size", 11008),
        dropout=float(d.get("attention_dropout", 0.0)),
        bias=attn_bias,
        rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        init_std=float(d.get("initializer_range", 0.02)),
    )


# ------------------------------------------------------------------------------ state dicts


def state_dict_to_hf(
    model_or_sd: nn.Module | Mapping[str, Tensor],
    cfg: GPTConfig | None = None,
    *,
    include_tied: bool = False,
    lm_head: bool = True,
) -> dict[str, Tensor]:
    """Our GPT state dict in HF naming and layout, ready for `GPT2LMHeadModel` or
    `LlamaForCausalLM` (or `Qwen2ForCausalLM` with qkv_bias).

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
            sizes = [cfg.n_embd, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
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
    Mistral or Qwen2 weights (an LM-head model's state dict or model.safetensors, with or
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
