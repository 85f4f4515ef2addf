"""Write a groundup GPT as one GGUF file: the format llama.cpp and Ollama run.

`export_gguf(model, "model.gguf", tokenizer)` writes the weights (f32, f16 or q8_0), the
architecture's metadata and the byte-level BPE tokenizer through the `gguf` package (llama.cpp's
own writer). Flavour "gpt2" becomes GGUF architecture "gpt2", flavour "llama" becomes "llama"
(q/k/v biases included), "qwen3" with QK-norm, "gemma" for the Gemma family (`gguf_arch`:
the family the Hugging Face export would write; options no family has are refused).

Layout facts that matter:
- GGUF's "llama" architecture applies RoPE to pairs of neighbouring values (x0, x1), (x2, x3),
  ...; ours (Hugging Face's rotate_half) pairs x_i with x_{i + head_dim/2}. So the q and k rows
  of every head are reordered here (`permute_rotary`), the same reordering llama.cpp's own
  converter applies to Hugging Face Llama weights; v and the output projection are unchanged.
  GGUF's "qwen3" and "gemma" rotate halves as we do (llama.cpp's NEOX RoPE): no reordering.
- llama.cpp's "gemma" scales by its norm weights as they are, so the (1 + w) offset of ours is
  added into every RMSNorm weight here (as llama.cpp's converter does); it has no separate
  output matrix (the head is the token table), so an untied Gemma is refused.
- Our qkv Linear is fused (q, k, v along the output dimension): "gpt2" keeps it fused
  (attn_qkv), the others split it (attn_q, attn_k, attn_v).
- llama.cpp's "gpt2" needs every bias and a LayerNorm bias: a model without biases gets zeros.
  It computes GPT-2's tanh GELU; a model trained with the exact GELU differs by at most 5e-4
  per activation, below the rounding of q8_0.
- 1-D tensors (norms, biases) and the position embedding stay f32, as llama.cpp expects; a
  matrix whose rows are not a multiple of 32 values cannot be q8_0 and is written f16.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from groundup.checkpoint import unwrap
from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DependencyError
from groundup.interop.gpt_configs import hf_model_type
from groundup.models.gpt import GPT, GPTConfig

DTYPES = ("f16", "q8_0", "f32")
GGUF_MAGIC = b"GGUF"
TOKENIZER_MODEL = "gpt2"  # GGUF's name for a byte-level BPE (GPT-2's kind), whatever the arch
TOKENIZER_PRE = "gpt-2"  # llama.cpp's pre-tokenizer id for GPT-2's split regex
_Q8_BLOCK = 32  # q8_0 quantizes blocks of 32 values along a row
_GENERATION = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")

# the Hugging Face family -> the GGUF architecture of llama.cpp that computes it
_ARCHS = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama", "qwen3": "qwen3", "gemma": "gemma"}

# our per-block names -> GGUF's (after "blk.{i}."); qkv of flavour llama is split below
_LAYER = {
    "norm1": "attn_norm",
    "attn.qkv": "attn_qkv",
    "attn.proj": "attn_output",
    "attn.q_norm": "attn_q_norm",
    "attn.k_norm": "attn_k_norm",
    "norm2": "ffn_norm",
    "mlp.gate": "ffn_gate",
    "mlp.up": "ffn_up",
    "mlp.down": "ffn_down",
}
_TOP = {
    "tok_emb": "token_embd",
    "pos_emb": "position_embd",
    "norm": "output_norm",
    "lm_head": "output",
}


def export_gguf(
    model: nn.Module,
    out: str | os.PathLike[str],
    tokenizer: Tokenizer | None,
    *,
    dtype: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` (a GPT language model; LoRA adapters merged into a copy) and its
    tokenizer to the GGUF file `out`, written beside it and renamed into place.

    dtype: "f16" (default), "q8_0" (8-bit blocks, about half the size) or "f32".
    chat_template: a Jinja template stored as tokenizer.chat_template (llama.cpp's and Ollama's
    chat mode use it). An existing file at `out` is replaced if it is a GGUF file, else only
    with overwrite=True. Everything is checked before anything is written.
    """
    gguf = _import_gguf()
    out = Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    model = _plain_gpt(model)
    cfg = model.config
    arch = gguf_arch(cfg)
    if tokenizer is None:
        raise ConfigError(
            "a GGUF file carries its tokenizer and this model has none; pass the tokenizer"
        )
    check_gguf_tokenizer(tokenizer)
    tokenizer.check_fits(cfg.vocab_size)
    _check_target(out, overwrite)

    tensors = gguf_tensors(model)
    writer_dtype = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0"}[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    writer = None
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=arch)
        writer.add_name(name or out.stem)
        writer.add_file_type(int(getattr(gguf.LlamaFileType, writer_dtype)))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_architecture(writer, cfg, arch)
        _add_tokenizer(writer, gguf, tokenizer, cfg.vocab_size, chat_template)
        for key, t in tensors.items():
            data, raw = _encode(gguf, key, t, dtype)
            writer.add_tensor(key, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an export is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------------- checks


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise DependencyError(
            'GGUF export needs the gguf package (llama.cpp\'s writer): pip install "groundup[gguf]"'
        ) from None
    return gguf


def _plain_gpt(model: nn.Module) -> GPT:
    """The GPT language model to write: LoRA merged into a copy, anything else refused."""
    model = unwrap(model)
    if not isinstance(model, GPT) or model.lm_head is None:
        raise ConfigError(
            f"GGUF export writes GPT language models (flavours gpt2 and llama), not a "
            f"{type(model).__name__}; export classifiers and BERT models with --format hf"
        )
    if any(type(m).__name__ == "LoRALinear" for m in model.modules()):
        from groundup.finetune.lora import merge_lora  # lazy: interop needs LoRA only here

        model = merge_lora(copy.deepcopy(model))
    if model.config.flavour not in ("gpt2", "llama"):
        raise ConfigError(
            f"GGUF export supports GPT flavours gpt2 and llama, not {model.config.flavour!r}"
        )
    return model


def gguf_arch(cfg: GPTConfig) -> str:
    """The llama.cpp architecture that computes cfg: gpt2, llama, qwen3 or gemma.
    ConfigError naming the option none has (relu2, logit_softcap, an untied Gemma, ...)."""
    arch = _ARCHS[hf_model_type(cfg, target="GGUF")]
    if arch == "gemma" and not cfg.tie_embeddings:
        raise ConfigError(
            "cannot export GPT option tie_embeddings=False to GGUF: llama.cpp's gemma reads its "
            "output head from the token table; export with --format hf instead"
        )
    return arch


def check_gguf_tokenizer(tokenizer: Tokenizer) -> None:
    """Refuse (ConfigError) a tokenizer llama.cpp would not reproduce: only a byte-level BPE
    with GPT-2's split regex and no normalizer is written (groundup's kind: bpe, GPT-2's)."""
    fix = (
        "GGUF export supports byte-level BPE tokenizers with GPT-2's split (groundup's "
        "tokenizer.kind: bpe, or GPT-2's own); retrain the tokenizer with kind bpe or export "
        "with --format hf"
    )
    if tokenizer.kind in ("char", "bytes"):
        raise ConfigError(
            f"this model's tokenizer is a {tokenizer.kind} tokenizer (a vocabulary without "
            f"merges), which llama.cpp cannot load; {fix}"
        )
    spec = json.loads(tokenizer.to_json())
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"a {model.get('type', 'unknown')} model")
    if spec.get("normalizer"):
        problems.append(f"a {spec['normalizer'].get('type', '')} normalizer")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        problems.append(f"a {pre.get('type', 'missing')} pre-tokenizer")
    elif pre.get("add_prefix_space"):
        problems.append("add_prefix_space")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        problems.append("a decoder that is not ByteLevel")
    for option in ("continuing_subword_prefix", "end_of_word_suffix", "byte_fallback"):
        if model.get(option):
            problems.append(option)
    if model.get("type") == "BPE" and not model.get("merges"):
        problems.append("no merges")
    if problems:
        raise ConfigError(f"this model's tokenizer has {', '.join(problems)}; {fix}")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ConfigError(f"GGUF export target {out} is a folder; pass a file path (model.gguf)")
    if out.exists() and not overwrite and not _is_gguf(out):
        raise ConfigError(
            f"GGUF export target {out} exists and is not a GGUF file; pick another path or pass "
            "overwrite=True (--overwrite) to replace it"
        )


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


# ---------------------------------------------------------------------------------- tensors


def permute_rotary(w: Tensor, n_head: int) -> Tensor:
    """q or k rows (or bias) from rotate_half order to llama.cpp's neighbouring pairs.

    Per head, row j of the first half goes to 2j and row j of the second half to 2j + 1.
    """
    head_dim = w.shape[0] // n_head
    rest = w.shape[1:]
    return (
        w.reshape(n_head, 2, head_dim // 2, *rest)  # (nh, half, hs/2, ...)
        .transpose(1, 2)  # (nh, hs/2, half, ...)
        .reshape(w.shape)
    )


def unpermute_rotary(w: Tensor, n_head: int) -> Tensor:
    """The inverse of `permute_rotary` (GGUF order back to ours)."""
    head_dim = w.shape[0] // n_head
    rest = w.shape[1:]
    return (
        w.reshape(n_head, head_dim // 2, 2, *rest)  # (nh, hs/2, pair, ...)
        .transpose(1, 2)  # (nh, pair, hs/2, ...)
        .reshape(w.shape)
    )


def gguf_tensors(model: GPT) -> dict[str, Tensor]:
    """Our weights under GGUF names, float32, in GGUF's layout (q/k permuted for llama, qkv
    split but for gpt2, zero biases where llama.cpp's gpt2 needs them, gemma's norm offset
    added in); a tied output is left out: llama.cpp then reads token_embd for it."""
    cfg = model.config
    arch = gguf_arch(cfg)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        module, _, kind = key.rpartition(".")  # kind: weight | bias
        if cfg.norm_unit_offset and module.rpartition(".")[2].startswith(
            ("norm", "q_norm", "k_norm")
        ):
            t = t + 1.0  # our scale is (1 + w); llama.cpp's is w
        if module.startswith("blocks."):
            _, i, inner = module.split(".", 2)
            out.update(_layer_tensors(cfg, arch, f"blk.{i}", inner, kind, t))
        else:
            out[f"{_TOP[module]}.{kind}"] = t
    if cfg.flavour == "gpt2":
        _add_zero_biases(out, cfg)
    return out


def _layer_tensors(
    cfg: GPTConfig, arch: str, blk: str, inner: str, kind: str, t: Tensor
) -> dict[str, Tensor]:
    if inner != "attn.qkv" or arch == "gpt2":
        return {f"{blk}.{_LAYER[inner]}.{kind}": t}
    q_size, kv_size = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    q, k, v = t.split([q_size, kv_size, kv_size], dim=0)
    if arch == "llama":  # llama.cpp's llama rotates neighbouring pairs; the others as we do
        q, k = permute_rotary(q, cfg.n_head), permute_rotary(k, cfg.n_kv_head)
    return {
        f"{blk}.attn_q.{kind}": q.contiguous(),
        f"{blk}.attn_k.{kind}": k.contiguous(),
        f"{blk}.attn_v.{kind}": v.contiguous(),
    }


def _add_zero_biases(out: dict[str, Tensor], cfg: GPTConfig) -> None:
    """llama.cpp's gpt2 requires every bias; a missing one is zero (the same function)."""
    sizes = {
        "attn_norm": cfg.n_embd,
        "attn_qkv": cfg.n_embd + 2 * cfg.n_kv_head * cfg.head_dim,
        "attn_output": cfg.n_embd,
        "ffn_norm": cfg.n_embd,
        "ffn_up": cfg.intermediate_size,
        "ffn_down": cfg.n_embd,
    }
    for i in range(cfg.n_layer):
        for part, size in sizes.items():
            out.setdefault(f"blk.{i}.{part}.bias", torch.zeros(size))
    out.setdefault("output_norm.bias", torch.zeros(cfg.n_embd))


def tensor_dtype(key: str, t: Tensor, dtype: str) -> str:
    """What one tensor is stored as ("f32", "f16" or "q8_0") under the file's dtype."""
    if dtype == "f32" or t.dim() < 2 or key.startswith("position_embd"):
        return "f32"
    if dtype == "q8_0" and t.shape[-1] % _Q8_BLOCK == 0:
        return "q8_0"
    return "f16"


def _encode(gguf: Any, key: str, t: Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    kind = tensor_dtype(key, t, dtype)
    data = t.numpy()
    if kind == "f32":
        return np.ascontiguousarray(data, dtype=np.float32), None
    if kind == "f16":
        return np.ascontiguousarray(data.astype(np.float16)), None
    q8 = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(np.ascontiguousarray(data), q8), q8


# --------------------------------------------------------------------------------- metadata


def _add_architecture(writer: Any, cfg: GPTConfig, arch: str) -> None:
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.n_layer)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(float(cfg.norm_eps))
        return
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(float(cfg.norm_eps))
    if arch != "llama" or cfg.head_dim * cfg.n_head != cfg.n_embd:
        # llama.cpp assumes heads of n_embd/n_head unless told (Qwen3 and Gemma always say)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)


def gguf_vocab(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for GGUF's "gpt2" tokenizer model. The model's rows past
    the tokenizer's ids (vocab_size padded to a multiple of 64) get unused placeholder tokens:
    llama.cpp takes the vocabulary size from the token list."""
    from gguf import TokenType

    spec = json.loads(tokenizer.to_json())
    added = {t["content"]: bool(t.get("special")) for t in spec.get("added_tokens", [])}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        piece = tokenizer.id_to_token(i) if i < tokenizer.vocab_size else None
        if piece is None:
            tokens.append(f"<groundup_unused_{i}>")
            types.append(int(TokenType.UNUSED))
        elif piece in added:
            tokens.append(piece)
            types.append(int(TokenType.CONTROL if added[piece] else TokenType.USER_DEFINED))
        else:
            tokens.append(piece)
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def _add_tokenizer(
    writer: Any, gguf: Any, tok: Tokenizer, vocab_size: int, chat_template: str | None
) -> None:
    tokens, types, merges = gguf_vocab(tok, vocab_size)
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(TOKENIZER_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role, token_id in special_ids(tok).items():
        getattr(writer, f"add_{role}_token_id")(token_id)
    # groundup never adds BOS/EOS around a text: llama.cpp must not either
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def special_ids(tok: Tokenizer) -> Mapping[str, int]:
    """bos/eos/pad ids as the Hugging Face export writes them: BOS falls back to end-of-text
    (groundup's documents are separated by it), absent roles are left out."""
    from groundup.interop.hf_dir import _BOS_NAMES

    eot = tok.eot_id
    bos = next((i for i in map(tok.token_to_id, _BOS_NAMES) if i is not None), eot)
    ids = {"bos": bos, "eos": eot, "pad": tok.pad_id}
    return {role: i for role, i in ids.items() if i is not None}


def portable_chat_template(source: str) -> str:
    """A chat template llama.cpp's and Ollama's Jinja engines can read: transformers'
    `{% generation %}` tag (it only marks the trained reply) becomes an always-true `if`, a
    block tag like it, so the template renders the same text, whitespace control included."""

    def swap(m: re.Match[str]) -> str:
        return f"{{%{m[1]} {'endif' if m[2] else 'if true'} {m[3]}%}}"

    return _GENERATION.sub(swap, source)
