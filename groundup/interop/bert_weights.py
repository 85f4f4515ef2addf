"""BERT weights and configs to and from Hugging Face transformers' naming and layout.

Covers `BertModel` (bare keys, with or without the pooler) and the head models whose encoder
sits under "bert.": `BertForMaskedLM` (cls.predictions.*), `BertForSequenceClassification`
and `BertForTokenClassification` (classifier.*). Pure tensor and dict work: transformers is
not imported.

Layout differences that matter:
- Our attention has one fused qkv Linear; HF has query, key, value (concatenated in that order).
- Our MLM decoder is the token embedding itself; HF files also list cls.predictions.decoder.*
  (tied copies of the embedding and of cls.predictions.bias), dropped on import.
- Our state dicts mirror HF's: a bare `Bert` has bare keys, head models put it under "bert.".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from groundup.errors import ConfigError
from groundup.interop.checks import check_fits
from groundup.models.bert import Bert, BertConfig, BertMLMHead

_TOP = {
    "tok_emb.weight": "embeddings.word_embeddings.weight",
    "pos_emb.weight": "embeddings.position_embeddings.weight",
    "type_emb.weight": "embeddings.token_type_embeddings.weight",
    "emb_norm.weight": "embeddings.LayerNorm.weight",
    "emb_norm.bias": "embeddings.LayerNorm.bias",
    "pooler.weight": "pooler.dense.weight",
    "pooler.bias": "pooler.dense.bias",
}
_LAYER = {
    "attn.proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "mlp.up": "intermediate.dense",
    "mlp.down": "output.dense",
    "norm2": "output.LayerNorm",
}
_HEAD = {
    "head.transform.weight": "cls.predictions.transform.dense.weight",
    "head.transform.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.bias": "cls.predictions.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
_QKV = ("query", "key", "value")
# HF keys that are not weights we keep: buffers (position ids), tied copies of the MLM
# decoder, and BertForPreTraining's next-sentence head, which we do not implement.
_IGNORED_HF = re.compile(
    r"(^|\.)embeddings\.(position_ids|token_type_ids)$"
    r"|^cls\.predictions\.decoder\.(weight|bias)$"
    r"|^cls\.seq_relationship\."
)
_OUR_LAYER = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")


# ---------------------------------------------------------------------------------- configs


def bert_config_to_hf(cfg: BertConfig) -> dict[str, Any]:
    """A transformers config dict (config.json content) describing the same encoder."""
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.block_size,
        "type_vocab_size": cfg.type_vocab_size,
        "hidden_act": cfg.activation,
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "layer_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute",
    }


def bert_config_from_hf(hf_config: Mapping[str, Any] | Any) -> BertConfig:
    """A BertConfig from a transformers BERT config dict (or config object).

    A setting we cannot reproduce exactly is a ConfigError naming the field, rather than a
    model that loads and quietly computes something else.
    """
    d = dict(hf_config.to_dict() if hasattr(hf_config, "to_dict") else hf_config)
    model_type = d.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(
            f"Hugging Face model_type {model_type!r} is not BERT; this converter reads 'bert'"
        )
    checks = (
        ("position_embedding_type", "absolute", "only learned absolute positions are implemented"),
        ("hidden_act", "gelu", "BERT here uses the exact erf GELU ('gelu')"),
        ("is_decoder", False, "BERT here is an encoder; set it to false"),
        ("add_cross_attention", False, "cross-attention is not implemented"),
    )
    for field, supported, why in checks:
        value = d.get(field, supported)
        if value != supported:
            raise ConfigError(
                f"Hugging Face config field {field}={value!r} is not supported: {why}"
            )
    return BertConfig(
        n_layer=d.get("num_hidden_layers", 12),
        n_head=d.get("num_attention_heads", 12),
        n_embd=d.get("hidden_size", 768),
        intermediate_size=d.get("intermediate_size", 3072),
        block_size=d.get("max_position_embeddings", 512),
        vocab_size=d.get("vocab_size", 30522),
        type_vocab_size=d.get("type_vocab_size", 2),
        dropout=float(d.get("hidden_dropout_prob", 0.1)),
        norm_eps=float(d.get("layer_norm_eps", 1e-12)),
        activation="gelu",
        init_std=float(d.get("initializer_range", 0.02)),
    )


# ------------------------------------------------------------------------------ state dicts


def bert_state_dict_to_hf(
    sd_or_model: nn.Module | Mapping[str, Tensor],
    cfg: BertConfig | None = None,
    *,
    include_tied: bool = False,
) -> dict[str, Tensor]:
    """Our Bert / head-model state dict in HF naming, for `BertModel` or `BertFor*`.

    cfg defaults to the model's config. include_tied=True adds the MLM decoder's tied copies
    (cls.predictions.decoder.weight/bias), which `BertForMaskedLM.load_state_dict(strict=True)`
    needs but HF's own files omit.
    """
    if isinstance(sd_or_model, nn.Module):
        module = getattr(sd_or_model, "_orig_mod", sd_or_model)  # torch.compile wrapper
        module = getattr(module, "module", module)  # DDP wrapper
        cfg = cfg or module.config
        sd = dict(module.state_dict())
    else:
        sd = dict(sd_or_model)
    if cfg is None:
        raise ConfigError("bert_state_dict_to_hf needs cfg when given a state dict; pass it")
    prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""
    _check(sd, _expected_ours(sd, cfg, prefix), "BERT state dict")
    out = _rename_to_hf(sd, cfg, prefix)
    if include_tied and "head.bias" in sd:
        out["cls.predictions.decoder.weight"] = sd[prefix + "tok_emb.weight"]
        out["cls.predictions.decoder.bias"] = sd["head.bias"]
    return out


def bert_state_dict_from_hf(hf_sd: Mapping[str, Tensor], cfg: BertConfig) -> dict[str, Tensor]:
    """A state dict for our models from HF BERT weights (model.safetensors or a state dict).

    Bare `BertModel` keys give keys for `Bert` (with "pooler.*" when the file has a pooler:
    load into `Bert(cfg, add_pooler=True)`); keys under "bert." (head checkpoints) give keys
    for our head models, with "head.*" (MLM) and "classifier.*" as the file has them.
    Wrong, missing or misshapen keys are a CheckpointError.
    """
    sd = {k: t for k, t in hf_sd.items() if not _IGNORED_HF.search(k)}
    has_head = any(k.startswith(("cls.", "classifier.")) for k in sd)
    prefix = "bert." if has_head or any(k.startswith("bert.") for k in sd) else ""
    sd = {
        (prefix + k if prefix and k.startswith(("embeddings.", "encoder.", "pooler.")) else k): t
        for k, t in sd.items()
    }
    # Expected keys: our layout for the parts the file has, sent through the renamer.
    parts: dict[str, Tensor] = {}
    if f"{prefix}pooler.dense.weight" in sd:
        parts[prefix + "pooler.weight"] = sd[f"{prefix}pooler.dense.weight"]
    if any(k.startswith("cls.predictions.") for k in sd):
        parts["head.bias"] = torch.empty(0)
    if "classifier.weight" in sd:
        parts["classifier.weight"] = sd["classifier.weight"]
    expected = {
        k: t.shape
        for k, t in _rename_to_hf(_expected_ours(parts, cfg, prefix), cfg, prefix).items()
    }
    _check(sd, expected, "Hugging Face BERT state dict")

    inverse = {hf: ours for ours, hf in (*_TOP.items(), *_HEAD.items())}
    layer_inverse = {hf: ours for ours, hf in _LAYER.items()}
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        bare = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        m = _HF_LAYER.fullmatch(bare)
        if m is None:
            our = inverse[bare]
            out[(prefix if our in _TOP else "") + our] = t
        elif m[2] not in (f"attention.self.{p}" for p in _QKV):
            out[f"{prefix}blocks.{m[1]}.{layer_inverse[m[2]]}.{m[3]}"] = t
    for i in range(cfg.n_layer):
        for kind in ("weight", "bias"):
            qkv = [sd[f"{prefix}encoder.layer.{i}.attention.self.{p}.{kind}"] for p in _QKV]
            out[f"{prefix}blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
    return out


# ------------------------------------------------------------------------------- helpers


def _rename_to_hf(sd: Mapping[str, Tensor], cfg: BertConfig, prefix: str) -> dict[str, Tensor]:
    """Key-by-key renaming of our layout (already checked) to HF's."""
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key in _HEAD:
            out[_HEAD[key]] = t
            continue
        bare = key[len(prefix) :]
        m = _OUR_LAYER.fullmatch(bare)
        if m is None:
            out[prefix + _TOP[bare]] = t
        elif m[2] == "attn.qkv":
            for name, part in zip(_QKV, t.split(cfg.n_embd, dim=0), strict=True):
                # clone: three slices of one storage would be refused by safetensors
                out[f"{prefix}encoder.layer.{m[1]}.attention.self.{name}.{m[3]}"] = part.clone()
        else:
            out[f"{prefix}encoder.layer.{m[1]}.{_LAYER[m[2]]}.{m[3]}"] = t
    return out


def _expected_ours(sd: Mapping[str, Tensor], cfg: BertConfig, prefix: str) -> dict[str, Tensor]:
    """Meta tensors of our layout for cfg and the optional parts present in sd (no memory)."""
    with torch.device("meta"):
        enc = Bert(cfg, add_pooler=f"{prefix}pooler.weight" in sd).state_dict()
        expected = {prefix + k: t for k, t in enc.items()}
        if any(k.startswith("head.") for k in sd):
            expected.update({"head." + k: t for k, t in BertMLMHead(cfg).state_dict().items()})
        if "classifier.weight" in sd:
            n = sd["classifier.weight"].shape[0]
            clf = nn.Linear(cfg.n_embd, n)
            expected.update({"classifier.weight": clf.weight, "classifier.bias": clf.bias})
    return expected


def _check(sd: Mapping[str, Tensor], expected: Mapping[str, Any], what: str) -> None:
    check_fits(sd, expected, what, "BERT", "n_layer, n_embd, vocab_size, block_size, ...")
