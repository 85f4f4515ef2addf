"""Activation memory of the GPT and BERT families from their shape alone: no forward pass.

What autograd saves per token in one block, written out from the models in
`groundup.models` (pre-norm GPT-2 and Llama blocks, post-norm BERT blocks), plus the
embeddings and the head. `saved.py` measures the same thing on the real model and
tests/test_estimate.py holds the two together. Symbols: C = n_embd, H = the MLP width,
hs = head size, nh/nkv = query/key-value heads, T = tokens per sequence, V = vocabulary;
a = bytes of the compute dtype (2 under bf16 autocast), r = bytes of the residual stream (the
weights' dtype: autocast leaves the residual adds in float32).

Traps the formula follows (each measured on torch 2.13):
- SDPA on the CPU runs its flash kernel (saves q, k, v, out and a float32 log-sum-exp) except
  with dropout, where it falls back to the math path and saves three (nh, T, T) tensors: the
  attention scores, often the biggest term. CUDA's flash/memory-efficient kernels handle
  dropout themselves; only float64 takes the math path there.
- bf16 attention on the CPU: up to 256 keys, `attend` runs two bf16 batched matmuls (saving
  q, k, v as contiguous copies, the (nh, T, T) softmax output, with dropout its mask and the
  dropped weights too, a bool mask);
  otherwise it upcasts to float32, so SDPA saves float32 copies.
- Dropout saves its mask in the tensor's dtype on the CPU, as bool (1 byte) on CUDA.
- The loss saves its float32 log-softmax (4 bytes per logit), whatever the autocast dtype.
- Autocast caches one low-precision copy of every matmul weight until backward (`fixed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from groundup.estimate.memory import Activations, dtype_bytes, loss_transient_bytes
from groundup.models.attention_kernels import CPU_MATMUL_ATTENTION_MAX_KEYS


@dataclass(frozen=True)
class Setup:
    """How the training step computes: where, with which weights and autocast dtype."""

    device_type: str = "cpu"
    weight_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    residual_bytes: int | None = None  # default: the weights' (FSDP2 bf16: 2)

    @property
    def a(self) -> int:  # compute bytes
        return dtype_bytes(self.autocast_dtype or self.weight_dtype)

    @property
    def r(self) -> int:  # residual stream bytes
        return self.residual_bytes or dtype_bytes(self.weight_dtype)


@dataclass(frozen=True)
class Shape:
    """The numbers of a transformer the formula needs (see `shape_of`)."""

    family: str  # gpt2, llama, bert
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    hidden: int
    vocab_size: int
    dropout: float
    head: str = "lm"  # lm: logits for every token; classify: one row of labels per sequence
    num_labels: int = 2
    head_dim: int = 0  # 0: n_embd // n_head (Qwen3 and Gemma set their own)
    gated: bool | None = None  # a gated MLP (SwiGLU, GeGLU); None: the family's (llama: gated)

    @property
    def hs(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def is_gated(self) -> bool:
        return self.family == "llama" if self.gated is None else self.gated


def shape_of(model: nn.Module) -> Shape | None:
    """The Shape of a groundup GPT/BERT (LoRA-wrapped or not); None for any other module."""
    from groundup.models.bert import BertForMaskedLM, BertForSequenceClassification
    from groundup.models.gpt import GPT, GPTForSequenceClassification

    if isinstance(model, (GPT, GPTForSequenceClassification)):
        c = model.config
        head = "lm" if isinstance(model, GPT) else "classify"
        labels = getattr(model, "num_labels", 2)
        return Shape(
            c.flavour, c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.intermediate_size,
            c.vocab_size, c.dropout, head, labels, c.head_dim,
            c.flavour == "llama" and c.activation != "relu2",
        )  # fmt: skip
    if isinstance(model, (BertForMaskedLM, BertForSequenceClassification)):
        c = model.config
        head = "lm" if isinstance(model, BertForMaskedLM) else "classify"
        labels = getattr(model, "num_labels", 2)
        return Shape(
            "bert", c.n_layer, c.n_head, c.n_head, c.n_embd, c.intermediate_size,
            c.vocab_size, c.dropout, head, labels,
        )  # fmt: skip
    return None


def transformer_activations(shape: Shape, seq_len: int, setup: Setup) -> Activations:
    """Activations of one training forward, per sequence of `seq_len` tokens (module doc)."""
    T = seq_len
    block = _block_per_token(shape, T, setup)
    head = _head_per_token(shape, setup)
    embed = _embed_per_token(shape, setup)
    per_sample = T * (embed + shape.n_layer * block + head)
    kept = setup.r * shape.n_embd  # checkpointing keeps each block's input
    per_sample_ckpt = T * (embed + shape.n_layer * kept + head)
    if shape.head == "classify":
        per_sample += _classify_per_sequence(shape, setup)
        per_sample_ckpt += _classify_per_sequence(shape, setup)
    outputs = T * shape.vocab_size if shape.head == "lm" else shape.num_labels
    fixed, fixed_block = _weight_copies(shape, setup)
    return Activations(
        per_sample=per_sample,
        fixed=fixed + shape.n_layer * fixed_block,
        transient_per_sample=loss_transient_bytes(outputs, setup.a),
        per_sample_ckpt=per_sample_ckpt,
        recompute_per_sample=T * block,
        fixed_ckpt=fixed + fixed_block,
        per_token_layer=block,
        source="architecture",
    )


# ---------------------------------------------------------------- the parts
def _stats(setup: Setup) -> int:
    """A norm's per-token statistics (LayerNorm: mean and 1/std; RMSNorm: 1/rms)."""
    return max(4, setup.r)


def _mask(setup: Setup, dtype_bytes_: int) -> int:
    """Bytes of a dropout mask element."""
    return 1 if setup.device_type == "cuda" else dtype_bytes_


def _norm(shape: Shape, setup: Setup) -> int:
    """A pre-norm's saved bytes per token: its input, plus (RMSNorm) the normalized copy."""
    C, r = shape.n_embd, setup.r
    if shape.family == "llama":
        return 2 * r * C + _stats(setup)
    return r * C + 2 * _stats(setup)


def _attention(shape: Shape, T: int, setup: Setup) -> float:
    """SDPA and the output projection's input, per token (q, k, v, output, log-sum-exp; the
    scores on the math path)."""
    nh, nkv, hs, a = shape.n_head, shape.n_kv_head, shape.hs, setup.a
    padded = shape.family == "bert" and shape.head == "classify"  # a padding mask
    cpu_bf16 = setup.device_type == "cpu" and a == 2
    if cpu_bf16 and T <= CPU_MATMUL_ATTENTION_MAX_KEYS:
        # attend's bf16 matmul path: q, k, v reshaped to contiguous copies (grouped k/v
        # expanded to every query head: nh heads each), the softmax output (with dropout
        # also its mask and the dropped weights), the output copied into proj, and a
        # padding mask as bools
        weights = (3 if shape.dropout > 0 else 1) * a * nh * T
        return 3 * a * nh * hs + weights + a * nh * hs + (1 if padded else 0)
    upcast = cpu_bf16  # attend computes in float32
    s = 4 if upcast else a
    math = (setup.device_type == "cpu" and shape.dropout > 0) or (
        setup.device_type == "cuda" and a == 8
    )
    if math:
        scores = (3 if shape.dropout > 0 else 1) * s * nh * T  # softmax, mask, dropped
        # q (scaled), k and v as contiguous copies (views only at batch 1; grouped k/v
        # expanded to every query head), and the output copied by the reshape into proj
        return 3 * s * nh * hs + scores + a * nh * hs
    lse = max(4, s) * nh
    if upcast:  # float32 copies of q, k, v
        inputs = s * (nh + 2 * nkv) * hs
    else:  # views of the fused qkv output; llama's rotated q and k are new tensors
        rotated = a * (nh + nkv) * hs if shape.family == "llama" else 0
        inputs = a * (nh + 2 * nkv) * hs + rotated
    mask = s if padded else 0  # padding, as floats
    # the flash output is laid out (B, T, nh, hs): the transpose-reshape into proj is a view
    # of it, unless the upcast output was cast back to bf16 first
    proj_in = a * nh * hs if upcast else 0
    return inputs + s * nh * hs + lse + mask + proj_in


def _mlp(shape: Shape, setup: Setup) -> int:
    C, H, a = shape.n_embd, shape.hidden, setup.a
    if shape.is_gated:  # gate and up each cast the input under autocast
        casts = 2 if setup.autocast_dtype is not None else 1
        return casts * a * C + 4 * a * H
    return a * C + 2 * a * H  # up's input, GELU's input, down's input


def _block_per_token(shape: Shape, T: int, setup: Setup) -> float:
    C, a, r = shape.n_embd, setup.a, setup.r
    drop = 2 * _mask(setup, a) * C if shape.dropout > 0 else 0
    attn = a * C + _attention(shape, T, setup)  # qkv input, SDPA and proj input
    if shape.family == "bert":  # post-norm: each LayerNorm saves the residual sum
        norms = 2 * (r * C + 2 * _stats(setup))
        return attn + _mlp(shape, setup) + norms + drop
    return 2 * _norm(shape, setup) + attn + _mlp(shape, setup) + drop


def _embed_per_token(shape: Shape, setup: Setup) -> int:
    """Token ids (int64) and the embedding dropout mask; BERT's embedding LayerNorm."""
    C, r = shape.n_embd, setup.r
    drop = _mask(setup, r) * C if shape.dropout > 0 else 0
    if shape.family == "bert":
        return 8 + r * C + 2 * _stats(setup) + drop
    return 8 + drop


def _head_per_token(shape: Shape, setup: Setup) -> int:
    """The final norm, the head's matmul input and the loss's log-softmax and targets."""
    C, a = shape.n_embd, setup.a
    logsm = max(4, setup.r) * shape.vocab_size + 8
    if shape.family == "bert":
        if shape.head != "lm":
            # the pooler reads hidden[:, 0], a view that keeps the whole last hidden state
            # alive unless autocast copies it first; the rest is counted per sequence
            return setup.r * C if setup.autocast_dtype is None else 0
        ln = (a if setup.device_type == "cpu" else max(4, a)) * C  # CUDA autocast: in fp32
        return 2 * a * C + ln + 2 * _stats(setup) + a * C + logsm
    final = _norm(shape, setup)
    if shape.head != "lm":
        return final
    return final + a * C + logsm


def _classify_per_sequence(shape: Shape, setup: Setup) -> int:
    """A sequence classifier's pooled vector, its head and the loss: tiny next to the trunk."""
    C, a = shape.n_embd, setup.a
    return 3 * a * C + (max(4, setup.r) + 8) * shape.num_labels


def _weight_copies(shape: Shape, setup: Setup) -> tuple[int, int]:
    """Autocast's cached weight copies: (outside the blocks, in one block); (0, 0) without."""
    if setup.autocast_dtype is None:
        return 0, 0
    C, H, a = shape.n_embd, shape.hidden, setup.a
    hs = shape.hs
    attn = C * (shape.n_head + 2 * shape.n_kv_head) * hs + shape.n_head * hs * C
    mlp = (3 if shape.is_gated else 2) * C * H
    head = shape.vocab_size * C if shape.head == "lm" else shape.num_labels * C
    if shape.family == "bert" and shape.head == "lm":
        head += C * C  # the MLM head's transform
    return a * head, a * (attn + mlp)


def describe(shape: Shape) -> dict[str, Any]:
    """The shape as plain numbers (for a results dict)."""
    return dict(shape.__dict__)


def flops_per_sample(model: nn.Module, seq_len: int) -> float | None:
    """Forward + backward FLOPs of one sequence (the PaLM/nanoGPT convention: 6 per weight
    per token plus the attention scores); None for a module that is not a GPT/BERT."""
    from groundup.models.bert import BertForMaskedLM, BertForSequenceClassification
    from groundup.models.gpt import GPT, GPTForSequenceClassification

    if isinstance(model, GPT):
        return float(model.flops_per_token(seq_len) * seq_len)
    if isinstance(model, GPTForSequenceClassification):
        return float(model.gpt.flops_per_token(seq_len) * seq_len)
    if isinstance(model, (BertForMaskedLM, BertForSequenceClassification)):
        bert, c = model.bert, model.config
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        n -= bert.pos_emb.weight.numel() + bert.type_emb.weight.numel()  # looked up only
        return float((6 * n + 12 * c.n_layer * c.n_embd * seq_len) * seq_len)
    return None
