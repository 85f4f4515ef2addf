"""GPT: a decoder-only transformer in two flavours.

- "gpt2": learned absolute positions, LayerNorm, GELU MLP, biases, tied embeddings.
- "llama": RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied embeddings.
  Mistral is the same architecture; Qwen2 is llama with `qkv_bias=True` (biases on q/k/v only).

Both are the same `GPT` module; the constructor picks the pieces (blocks.py) by flavour and
passes them to `Block`, so the forward pass has no flavour branches.
`GPTForSequenceClassification` puts a linear `score` head on the last real token of each row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.generate import generate
from groundup.models.blocks import (
    MLP,
    Block,
    CausalSelfAttention,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    document_mask,
    document_positions,
)
from groundup.models.model_config import ModelConfig, check_positive_int
from groundup.registry import lookup

FLAVOURS = {"gpt2": "gpt2", "llama": "llama"}


def llama_intermediate_size(n_embd: int, multiple_of: int = 256) -> int:
    """Llama's SwiGLU width: 2/3 of 4*n_embd (same FLOPs as a GELU MLP), rounded up."""
    hidden = int(8 * n_embd / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# Presets: plain dicts of GPTConfig fields. Vocabulary sizes are placeholders wherever a
# tokenizer decides them; override vocab_size to match yours.
PRESETS: dict[str, dict[str, Any]] = {
    # Test sizes: build in milliseconds.
    "gpt2-tiny": dict(flavour="gpt2", n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=96),
    "llama-tiny": dict(
        flavour="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64, vocab_size=96
    ),
    # nanoGPT's CPU "baby GPT" for character-level Shakespeare (its README command line:
    # bias=False there, 65 characters).
    "baby-shakespeare": dict(
        flavour="gpt2",
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=64,
        vocab_size=65,
        bias=False,
        activation="gelu",
    ),
    "gpt2-small": dict(flavour="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-124m": dict(flavour="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(flavour="gpt2", n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    # GaLore's LLaMA-60M shape (32k vocabulary, SwiGLU width 1376).
    "llama-60m": dict(
        flavour="llama",
        n_layer=8,
        n_head=8,
        n_embd=512,
        intermediate_size=1376,
        block_size=1024,
        vocab_size=32000,
    ),
    # Llama 3.2 1B shape. block_size is a pretraining context, not its 128k: we do not
    # implement Llama 3's rope_scaling, so its long-context extension does not carry over.
    "llama-1b": dict(
        flavour="llama",
        n_layer=16,
        n_head=32,
        n_kv_head=8,
        n_embd=2048,
        intermediate_size=8192,
        block_size=2048,
        vocab_size=128256,
        rope_theta=500000.0,
        tie_embeddings=True,
    ),
}


@dataclass
class GPTConfig(ModelConfig):
    """Shape and options of a GPT. `None` fields take the flavour's default in __post_init__.

    `from_name`, `from_dict`, `to_dict`: ModelConfig.
    """

    presets = PRESETS
    preset_kind = "model preset"
    config_kind = "GPT config"

    flavour: str = "gpt2"
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: n_head (plain multi-head attention)
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for fast matmuls
    intermediate_size: int | None = None  # None: 4*n_embd (gpt2), llama_intermediate_size (llama)
    dropout: float = 0.0
    bias: bool | None = None  # None: True (gpt2), False (llama)
    rope_theta: float = 10000.0  # llama only
    norm_eps: float = 1e-5
    tie_embeddings: bool | None = None  # None: True (gpt2), False (llama)
    init_std: float = 0.02
    # gpt2 MLP: "gelu_tanh" (GPT-2's own, HF "gelu_new") or "gelu" (exact erf, as nanoGPT;
    # about 2x cheaper on CPUs). llama always uses SwiGLU ("silu").
    activation: str | None = None
    # Biases on the q/k/v projections even when bias=False (Qwen2); llama flavour only.
    # With bias=True the projections have biases anyway and this changes nothing.
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        self.flavour = lookup(FLAVOURS, self.flavour, "model flavour")
        gpt2 = self.flavour == "gpt2"
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_positive_int("n_kv_head", self.n_kv_head)
        if self.intermediate_size is None:
            self.intermediate_size = (
                4 * self.n_embd if gpt2 else llama_intermediate_size(self.n_embd)
            )
        check_positive_int("intermediate_size", self.intermediate_size)
        if self.bias is None:
            self.bias = gpt2
        if self.tie_embeddings is None:
            self.tie_embeddings = gpt2
        if self.activation is None:
            self.activation = "gelu_tanh" if gpt2 else "silu"
        valid = ("gelu_tanh", "gelu") if gpt2 else ("silu",)
        if self.activation not in valid:
            raise ConfigError(
                f"activation {self.activation!r} is not available for flavour {self.flavour!r}; "
                f"use one of {', '.join(valid)}"
            )
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                "pick n_embd as a multiple of n_head (e.g. head size 64)"
            )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}; "
                "set n_kv_head to a divisor of n_head"
            )
        if gpt2 and self.n_kv_head != self.n_head:
            raise ConfigError(
                f"n_kv_head {self.n_kv_head} != n_head {self.n_head} needs flavour 'llama'; "
                "grouped-query attention is not part of GPT-2 (drop n_kv_head or switch flavour)"
            )
        if not gpt2 and self.head_dim % 2:
            raise ConfigError(
                f"head size n_embd/n_head = {self.head_dim} is odd; RoPE needs an even head size"
            )
        if gpt2 and self.qkv_bias:
            raise ConfigError(
                "qkv_bias is a llama-flavour option (Qwen2); for flavour 'gpt2' use bias=True"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class GPT(nn.Module):
    """Decoder-only transformer. `forward(idx) -> logits` (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        gpt2 = cfg.flavour == "gpt2"
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # Position information: learned table (gpt2) or rotary angles inside attention (llama).
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd) if gpt2 else None
        self.rope = None if gpt2 else RotaryEmbedding(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList([self._make_block(i) for i in range(cfg.n_layer)])
        self.norm = self._make_norm()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # one tensor, two uses
        self.init_weights()

    def _make_norm(self) -> nn.Module:
        cfg = self.config
        if cfg.flavour == "gpt2":
            return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        return RMSNorm(cfg.n_embd, eps=cfg.norm_eps)

    def _make_block(self, layer_idx: int) -> Block:
        cfg = self.config
        attn = CausalSelfAttention(
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.bias,
            cfg.dropout,
            layer_idx,
            qkv_bias=cfg.bias or cfg.qkv_bias,
        )
        if cfg.flavour == "gpt2":
            approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
            mlp: nn.Module = MLP(cfg.n_embd, cfg.intermediate_size, cfg.bias, approximate)
        else:
            mlp = SwiGLU(cfg.n_embd, cfg.intermediate_size, cfg.bias)
        return Block(attn, mlp, self._make_norm(), self._make_norm(), cfg.dropout)

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialization: normal(0, init_std) for Linear and Embedding weights, zero biases,
        unit norms; the two projections that write into the residual stream (attn.proj and
        mlp.down) get std / sqrt(2 * n_layer) so the residual variance does not grow with depth.

        Also recomputes the RoPE tables, so a model built on the meta device becomes usable
        after `model.to_empty(device=...)` and `model.init_weights()`.
        """
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_resid = name.endswith(("attn.proj", "mlp.down"))
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if is_resid else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm, RotaryEmbedding)):
                module.reset_parameters()

    def forward(
        self, idx: Tensor, kv_cache: KVCache | None = None, doc_ids: Tensor | None = None
    ) -> Tensor:
        """Logits (B, T, vocab_size) for token ids idx (B, T), in the compute dtype.

        With `kv_cache`, idx holds only the new tokens; they sit at positions kv_cache.pos...
        and the cache advances by T. Token ids are not range-checked here (that costs a device
        sync per step); `generate` checks them once.

        doc_ids (B, T): packed rows, several documents (contiguous runs of one id) per row;
        each token attends only within its document and positions restart at each, so a
        packed row gives exactly the logits of its documents run one by one. A batch whose
        input is one tensor carries them as idx of shape (B, 2, T): token ids, then doc ids
        (what packed SFT batches hold). Without them the model runs SDPA's causal kernel.
        """
        return self.lm_head(self.hidden_states(idx, kv_cache, doc_ids))  # (B, T, vocab_size)

    def hidden_states(
        self, idx: Tensor, kv_cache: KVCache | None = None, doc_ids: Tensor | None = None
    ) -> Tensor:
        """Final-normed hidden states (B, T, n_embd): the trunk without the lm_head, for heads."""
        if idx.dim() == 3 and idx.shape[1] == 2 and doc_ids is None:
            idx, doc_ids = idx[:, 0], idx[:, 1]  # the packed form: (B, 2, T)
        if idx.dim() != 2:
            raise ShapeError(
                f"GPT expects token ids of shape (batch, time), got {tuple(idx.shape)}; "
                "add a batch dimension with idx.unsqueeze(0)"
            )
        B, T = idx.shape
        if doc_ids is not None:
            if doc_ids.shape != idx.shape:
                raise ShapeError(
                    f"doc_ids {tuple(doc_ids.shape)} must have the shape of idx {(B, T)}; give "
                    "one document id per token"
                )
            if kv_cache is not None:
                raise ShapeError(
                    "doc_ids (packed rows) cannot be used with a KV cache; generate one "
                    "sequence per row instead"
                )
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.config.block_size:
            where = f"{start} cached + {T} new tokens" if start else f"sequence of {T} tokens"
            raise ShapeError(
                f"{where} exceeds block_size {self.config.block_size}; crop the input to the "
                f"last {self.config.block_size} tokens or use a model with a larger block_size"
            )
        x = self.tok_emb(idx)  # (B, T, C)
        mask = rope = None
        if doc_ids is None:
            if self.pos_emb is not None:
                pos = torch.arange(start, start + T, device=idx.device)  # (T,)
                x = x + self.pos_emb(pos)  # (B, T, C) + (T, C)
            if self.rope is not None:
                rope = self.rope(start, T)  # 2 x (T, hs)
        else:
            pos = document_positions(doc_ids)  # (B, T)
            mask = document_mask(doc_ids)  # (B, 1, T, T)
            if self.pos_emb is not None:
                x = x + self.pos_emb(pos)  # (B, T, C)
            if self.rope is not None:
                rope = self.rope.at(pos)  # 2 x (B, 1, T, hs)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, kv_cache, mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(x)  # (B, T, C)

    def new_kv_cache(self, max_len: int | None = None) -> KVCache:
        """An empty cache for up to max_len positions (default block_size)."""
        max_len = self.config.block_size if max_len is None else max_len
        if not 0 < max_len <= self.config.block_size:
            raise ShapeError(
                f"KV cache length {max_len} must be in 1..block_size {self.config.block_size}"
            )
        return KVCache(self.config.n_layer, max_len)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, tied weights counted once.

        non_embedding=True drops the tables that are only looked up, never multiplied: the
        position table and, when untied, the token table. A tied token table stays counted
        because it is also the lm_head matmul (nanoGPT's convention). This is the N of
        `flops_per_token`.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.tok_emb.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Model FLOPs per token for forward + backward: 6*N + 12*n_layer*n_embd*T.

        The convention of the PaLM paper (appendix B) and nanoGPT's estimate_mfu: 6 FLOPs per
        weight per token (2 forward, 4 backward) with N = num_params(non_embedding=True), plus
        the attention scores and weighted sum (2 * 2 * n_layer * T * n_embd forward, times 3).
        T is seq_len (default block_size); activation recomputation is not counted.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * T

    def generate(self, idx: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """Sample a continuation; see `groundup.generate.generate` for the options."""
        return generate(self, idx, max_new_tokens, **kwargs)


class GPTForSequenceClassification(nn.Module):
    """`forward(idx) -> logits (B, num_labels)` from the hidden state of each row's last real
    token, the rule of transformers' GPT2/LlamaForSequenceClassification, so exported weights
    give the same logits there.

    The trunk is a `GPT` at `.gpt` with its lm_head removed (`gpt.lm_head is None`: calling
    `self.gpt(idx)` is an error, use `self.gpt.hidden_states`). A causal-LM state dict loads
    into the trunk with `model.gpt.load_state_dict(sd, strict=False)` (only lm_head.weight is
    unexpected), or build from a loaded GPT with `from_gpt`.

    pad_id: rows are padded with it (right or left); the last token that is not pad_id is
    pooled (position 0 for a row of padding only). None: always the last position, which is
    only right for unpadded batches.
    """

    def __init__(self, config: GPTConfig, num_labels: int, pad_id: int | None = None) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels <= 0:
            raise ConfigError(f"num_labels must be a positive integer, got {num_labels!r}")
        if pad_id is not None and not 0 <= pad_id < config.vocab_size:
            raise ConfigError(
                f"pad_id {pad_id} is outside the vocabulary (0..{config.vocab_size - 1}); "
                "pass the tokenizer's pad id"
            )
        self.config, self.num_labels, self.pad_id = config, num_labels, pad_id
        self.gpt = GPT(config)
        # The classifier never uses the vocabulary projection: drop it (an untied head would be
        # vocab_size x n_embd of dead weights, and unused parameters upset DDP).
        self.gpt.lm_head = None
        self.score = nn.Linear(config.n_embd, num_labels, bias=False)
        nn.init.normal_(self.score.weight, mean=0.0, std=config.init_std)

    @classmethod
    def from_gpt(
        cls, gpt: GPT, num_labels: int, pad_id: int | None = None
    ) -> GPTForSequenceClassification:
        """A classifier whose trunk holds a copy of `gpt`'s weights (a fresh `score` head)."""
        model = cls(gpt.config, num_labels, pad_id)
        sd = {k: v for k, v in gpt.state_dict().items() if k != "lm_head.weight"}
        model.gpt.load_state_dict(sd, strict=True)
        return model.to(device=gpt.tok_emb.weight.device, dtype=gpt.tok_emb.weight.dtype)

    def last_token_index(self, idx: Tensor) -> Tensor:
        """(B,) position of each row's last non-pad token, as transformers computes it."""
        T = idx.shape[1]
        if self.pad_id is None:
            return torch.full((idx.shape[0],), T - 1, dtype=torch.long, device=idx.device)
        real = (idx != self.pad_id).long()  # (B, T)
        positions = torch.arange(T, device=idx.device)  # (T,)
        return (positions * real).argmax(-1)  # (B,): rightmost real token, 0 if none

    def forward(self, idx: Tensor) -> Tensor:
        hidden = self.gpt.hidden_states(idx)  # (B, T, C)
        rows = torch.arange(idx.shape[0], device=idx.device)
        pooled = hidden[rows, self.last_token_index(idx)]  # (B, C)
        return self.score(pooled)  # (B, num_labels)
