"""GPT configs to and from Hugging Face transformers' config.json, one family at a time.

Families: GPT-2 (flavour "gpt2"); Llama, Mistral (Llama plus a sliding window that must not
cut), Qwen2 (Llama with q/k/v biases), Qwen3 (Llama with QK-norm and an explicit head_dim) and
Gemma (Llama with (1 + w) RMSNorms, a sqrt(n_embd) embedding scale, GeGLU and wide heads), all
flavour "llama". Pure dict work: transformers is not imported.

Both directions refuse what the other side would compute differently: an HF setting we do not
implement is a ConfigError naming the field, and so is a groundup option no family expresses
(`hf_model_type` picks the family, or says which field stands in the way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groundup.errors import ConfigError
from groundup.models.gpt import GPTConfig

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma")

# config.json defaults of each llama-like family where transformers' config classes differ:
# a field a file leaves out means what the family's class says, not what Llama's does.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 128},
    "gemma": {"head_dim": 256, "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh"},
}
# hidden_act -> our activation, per family. Gemma's "gelu" is a legacy spelling that
# transformers reads as the tanh approximation.
_LLAMA_ACTS = {"silu": "silu"}
_GEMMA_ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"}


def _unsupported(field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"Hugging Face config field {field}={value!r} is not supported: {why}")


def _inexpressible(field: str, value: Any, why: str, target: str) -> ConfigError:
    return ConfigError(
        f"cannot export GPT option {field}={value!r} to {target}: {why}; keep the model "
        "in groundup's own format (or train it without that option)"
    )


# ------------------------------------------------------------------------------ the family


def hf_model_type(cfg: GPTConfig, target: str = "Hugging Face") -> str:
    """The transformers model_type that computes exactly what cfg computes: gpt2, llama,
    qwen2, qwen3 or gemma. ConfigError naming the first field no family expresses (`target`
    names the export format in that message; GGUF picks its architecture from this too)."""

    def refuse(field: str, value: Any, why: str) -> ConfigError:
        return _inexpressible(field, value, why, target)

    if cfg.activation == "relu2":
        raise refuse("activation", "relu2", "no exported family has a relu^2 MLP")
    if cfg.logit_softcap:
        raise refuse("logit_softcap", cfg.logit_softcap, "no exported family soft-caps its logits")
    if cfg.flavour == "gpt2":
        for field in ("qk_norm", "embedding_scale"):
            if getattr(cfg, field):
                raise refuse(field, True, "GPT-2 has no such option")
        return "gpt2"
    gemma = cfg.norm_unit_offset or cfg.embedding_scale or cfg.activation == "gelu_tanh"
    if gemma:
        # Gemma computes all three together; one alone is no family's model
        for field, want in (
            ("norm_unit_offset", True),
            ("embedding_scale", True),
            ("activation", "gelu_tanh"),
            ("qk_norm", False),
            ("bias", False),
            ("qkv_bias", False),
        ):
            if getattr(cfg, field) != want:
                raise refuse(
                    field,
                    getattr(cfg, field),
                    "the Gemma family (norm_unit_offset, embedding_scale, activation gelu_tanh) "
                    f"needs {field}={want!r}",
                )
        return "gemma"
    if cfg.qk_norm:
        for field in ("bias", "qkv_bias"):
            if getattr(cfg, field):
                raise refuse(
                    field, True, "Qwen3 (the QK-norm family) has no biases on q/k/v or the MLP"
                )
        return "qwen3"
    if cfg.qkv_bias and not cfg.bias:
        if cfg.head_dim * cfg.n_head != cfg.n_embd:
            raise refuse("head_dim", cfg.head_dim, "Qwen2 (q/k/v biases) needs n_embd/n_head heads")
        return "qwen2"
    return "llama"


# ---------------------------------------------------------------------------------- export


def gpt_config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A transformers config dict (config.json content) describing the same model.

    Token ids (bos/eos/pad) are not known here; the exporter adds them from the tokenizer.
    The family comes from `hf_model_type` (Qwen2 for qkv_bias, Qwen3 for qk_norm, Gemma for
    norm_unit_offset + embedding_scale + GeGLU). zero_init_proj, init_std and recipe only
    shape the initialization, so they do not travel.
    """
    model_type = hf_model_type(cfg)
    if model_type == "gpt2":
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
    prefix = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma": "Gemma"}
    d: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [f"{prefix[model_type]}ForCausalLM"],
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
        "hidden_act": "gelu_pytorch_tanh" if model_type == "gemma" else "silu",
        "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
    }
    if model_type == "llama":
        d.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
    elif model_type == "qwen2":
        del d["head_dim"]  # not a Qwen2 field: its heads are always n_embd/n_head
    else:
        d["attention_bias"] = False
    if model_type in ("qwen2", "qwen3"):
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    return d


# ---------------------------------------------------------------------------------- import


def gpt_config_from_hf(hf_config: Mapping[str, Any] | Any) -> GPTConfig:
    """A GPTConfig from a transformers config dict (or config object) of GPT-2, Llama,
    Mistral, Qwen2, Qwen3 or Gemma.

    A setting we cannot reproduce exactly (rope scaling, sliding windows, another
    activation, ...) is a ConfigError naming it, rather than a model that loads and quietly
    computes something else.
    """
    d = dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)
    model_type = d.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config_from_hf(d)
    if model_type in _HF_DEFAULTS:
        d = {**_HF_DEFAULTS[model_type], **d}
        _refuse_sliding_windows(model_type, d)
        return _FROM_HF[model_type](d)
    raise ConfigError(
        f"unsupported Hugging Face model_type {model_type!r} for GPT; supported: "
        + ", ".join(map(repr, SUPPORTED_MODEL_TYPES))
    )


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


def _refuse_sliding_windows(model_type: str, d: dict[str, Any]) -> None:
    """Mistral's window that never cuts inside the context (null, or >= the context) is plain
    causal attention; Qwen's windows are off unless use_sliding_window says otherwise."""
    if model_type == "mistral":
        window, context = d.get("sliding_window"), d.get("max_position_embeddings", 4096 * 32)
        if window is not None and window < context:
            raise _unsupported(
                "sliding_window",
                window,
                f"sliding-window attention is not implemented; it is exact for contexts up to "
                f"{window} tokens, so set max_position_embeddings to {window} (or "
                "sliding_window to null) in config.json to use the model with that context",
            )
    if d.get("use_sliding_window", False):
        raise _unsupported(
            "use_sliding_window", True, "sliding-window attention is not implemented; set it false"
        )
    if any(t != "full_attention" for t in d.get("layer_types") or []):
        raise _unsupported("layer_types", d["layer_types"], "only full attention is implemented")


def _qwen2_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    """Qwen2: Llama's architecture with biases on q/k/v (not on o_proj or the MLP)."""
    for field in ("attention_bias", "mlp_bias"):
        if field in d:  # not Qwen2 fields: a file that sets them is something else
            raise _unsupported(field, d[field], "Qwen2 has biases on q/k/v only")
    return _llama_config_from_hf(d, qkv_bias=True)


def _qwen3_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    """Qwen3: Llama's architecture with RMSNorm on every q and k head (q_norm, k_norm)."""
    if d.get("attention_bias", False):
        raise _unsupported(
            "attention_bias", True, "biases on q/k/v/o but not the MLP are not implemented"
        )
    if d.get("mlp_bias", False):
        raise _unsupported("mlp_bias", True, "Qwen3's MLP has no biases")
    return _llama_config_from_hf(d, qk_norm=True)


def _gemma_config_from_hf(d: dict[str, Any]) -> GPTConfig:
    """Gemma (v1): (1 + w) RMSNorms in float32, embeddings times sqrt(hidden_size), GeGLU."""
    if d.get("use_bidirectional_attention"):
        raise _unsupported(
            "use_bidirectional_attention", True, "GPT attention is causal; set it false"
        )
    if d.get("attention_bias", False):
        raise _unsupported(
            "attention_bias", True, "biases on q/k/v/o but not the MLP are not implemented"
        )
    return _llama_config_from_hf(
        d, activations=_GEMMA_ACTS, norm_unit_offset=True, embedding_scale=True
    )


def _llama_config_from_hf(
    d: dict[str, Any], activations: Mapping[str, str] = _LLAMA_ACTS, **extra: Any
) -> GPTConfig:
    """The fields every llama-like family shares; `extra` are the family's own GPTConfig
    fields (qkv_bias, qk_norm, ...)."""
    act = d.get("hidden_act", "silu")
    if act not in activations:
        raise _unsupported(
            "hidden_act", act, f"this family's MLP here supports {', '.join(activations)}"
        )
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
    return GPTConfig(
        flavour="llama",
        n_layer=d.get("num_hidden_layers", 32),
        n_head=n_head,
        n_kv_head=d.get("num_key_value_heads") or n_head,
        n_embd=hidden,
        head_dim=d.get("head_dim") or hidden // n_head,
        block_size=d.get("max_position_embeddings", 2048),
        vocab_size=d.get("vocab_size", 32000),
        intermediate_size=d.get("intermediate_size", 11008),
        dropout=float(d.get("attention_dropout", 0.0)),
        bias=attn_bias,
        rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
        norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        init_std=float(d.get("initializer_range", 0.02)),
        activation=activations[act],
        **extra,
    )


_FROM_HF = {
    "llama": _llama_config_from_hf,
    "mistral": _llama_config_from_hf,
    "qwen2": _qwen2_config_from_hf,
    "qwen3": _qwen3_config_from_hf,
    "gemma": _gemma_config_from_hf,
}
