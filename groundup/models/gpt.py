"""GPT: a decoder-only transformer in two flavours.

- "gpt2": learned absolute positions, LayerNorm, GELU MLP, biases, tied embeddings.
- "llama": RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, no biases, untied embeddings.
  Mistral is the same architecture; Qwen2 is llama with `qkv_bias=True` (biases on q/k/v only);
  Qwen3 is llama with `qk_norm` and an explicit `head_dim`; Gemma is llama with
  `norm_unit_offset`, `embedding_scale`, GeGLU (`activation: gelu_tanh`) and a wide `head_dim`.

Both are the same `GPT` module; the constructor picks the pieces (blocks.py) by flavour and
passes them to `Block`, so the forward pass has no flavour branches.
`recipe: modern` fills the fields a config leaves unset with today's speedrun choices
(`RECIPES`); `GPTForSequenceClassification` puts a linear `score` head on the last real token
of each row.
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
    GatedMLP,
    KVCache,
    RMSNorm,
    RotaryEmbedding,
    document_mask,
    document_positions,
)
from groundup.models.model_config import ModelConfig, check_positive_int
from groundup.registry import lookup

FLAVOURS = {"gpt2": "gpt2", "llama": "llama"}
# Activations each flavour's MLP takes: gelu/gelu_tanh/relu2 in a plain MLP (gpt2), silu and
# gelu_tanh gated (SwiGLU, GeGLU), relu2 plain (llama).
ACTIVATIONS = {"gpt2": ("gelu_tanh", "gelu", "relu2"), "llama": ("silu", "gelu_tanh", "relu2")}

# A recipe fills every field a config leaves unset (None). "modern": what the modded-nanogpt
# speedrun converged on: RoPE, RMSNorm and no biases (flavour llama), untied embeddings,
# QK-norm, a plain relu^2 MLP, logits soft-capped at 15, residual projections started at zero.
RECIPES: dict[str, dict[str, Any]] = {
    "modern": dict(
        flavour="llama",
        bias=False,
        tie_embeddings=False,
        qk_norm=True,
        activation="relu2",
        zero_init_proj=True,
    ),
}


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
    "modern-tiny": dict(
        recipe="modern", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64, vocab_size=96
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
    # Qwen3-0.6B's shape (596M parameters, tied): 16 heads of 128 over a 1024 model width.
    "qwen3-0.6b": dict(
        flavour="llama",
        n_layer=28,
        n_head=16,
        n_kv_head=8,
        n_embd=1024,
        head_dim=128,
        intermediate_size=3072,
        block_size=4096,
        vocab_size=151936,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        tie_embeddings=True,
        qk_norm=True,
    ),
    # Gemma 2B's shape (2.51B parameters, tied; multi-query attention, heads of 256).
    "gemma-2b": dict(
        flavour="llama",
        n_layer=18,
        n_head=8,
        n_kv_head=1,
        n_embd=2048,
        head_dim=256,
        intermediate_size=16384,
        block_size=8192,
        vocab_size=256000,
        norm_eps=1e-6,
        tie_embeddings=True,
        activation="gelu_tanh",
        norm_unit_offset=True,
        embedding_scale=True,
    ),
}


@dataclass
class GPTConfig(ModelConfig):
    """Shape and options of a GPT. `None` fields take the recipe's value if `recipe` is set,
    else the flavour's default, in __post_init__; the resolved values are what `to_dict`
    saves, so a saved config rebuilds the same model whatever the recipe holds later.

    `from_name`, `from_dict`, `to_dict`: ModelConfig.
    """

    presets = PRESETS
    preset_kind = "model preset"
    config_kind = "GPT config"

    flavour: str | None = None  # "gpt2" or "llama"; None: gpt2 (recipe modern: llama)
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention (query) heads
    n_kv_head: int | None = None  # None: n_head (plain multi-head attention)
    n_embd: int = 768  # width of the residual stream
    block_size: int = 1024  # the longest sequence (context) the model takes
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64 for fast matmuls
    # None: 4*n_embd (gpt2 and relu2), llama_intermediate_size (gated llama MLPs)
    intermediate_size: int | None = None
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool | None = None  # None: True (gpt2), False (llama)
    rope_theta: float = 10000.0  # llama only
    norm_eps: float = 1e-5  # LayerNorm/RMSNorm epsilon
    tie_embeddings: bool | None = None  # None: True (gpt2), False (llama)
    init_std: float = (
        0.02  # std of the normal init of weights (residual projections: / sqrt(2 n_layer))
    )
    # gpt2 MLP: "gelu_tanh" (GPT-2's own, HF "gelu_new"), "gelu" (exact erf, as nanoGPT;
    # about 2x cheaper on CPUs) or "relu2". llama: "silu" (SwiGLU), "gelu_tanh" (GeGLU,
    # Gemma) or "relu2" (a plain MLP, no gate). None: gelu_tanh (gpt2), silu (llama).
    activation: str | None = None
    # Biases on the q/k/v projections even when bias=False (Qwen2); llama flavour only.
    # With bias=True the projections have biases anyway and this changes nothing.
    qkv_bias: bool = False
    # Size of each attention head; None: n_embd // n_head. The llama flavour takes any even
    # size (Qwen3, Gemma): attention then works in n_head * head_dim, not n_embd.
    head_dim: int | None = None
    # RMSNorm over head_dim on every q and k head, before RoPE (Qwen3). None: false.
    qk_norm: bool | None = None
    # RMSNorms scale by (1 + weight), weights starting at 0 (Gemma); llama flavour only.
    norm_unit_offset: bool = False
    # Token embeddings times sqrt(n_embd) before the first block (Gemma).
    embedding_scale: bool = False
    # logits = c * tanh(logits / c) (Gemma 2's final soft-cap; modded-nanogpt uses 15-30);
    # 0 is off. None: 0.
    logit_softcap: float | None = None
    # attn.proj and mlp.down start at zero, so each block starts as the identity. None: false.
    zero_init_proj: bool | None = None
    # "modern" fills every field left unset (null): flavour llama, bias false, tie_embeddings
    # false, qk_norm true, activation relu2, zero_init_proj true (logit_softcap left off: at
    # small scale it slowed the time to loss; benchmarks/bench_time_to_loss.py).
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.recipe is not None:
            recipe = lookup(RECIPES, self.recipe, "model recipe")
            self.recipe = self.recipe.lower()
            for name, value in recipe.items():
                if getattr(self, name) is None:  # only what the config left unset
                    setattr(self, name, value)
        self.flavour = lookup(
            FLAVOURS, "gpt2" if self.flavour is None else self.flavour, "model flavour"
        )
        gpt2 = self.flavour == "gpt2"
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_positive_int("n_kv_head", self.n_kv_head)
        if self.activation is None:
            self.activation = "gelu_tanh" if gpt2 else "silu"
        valid = ACTIVATIONS[self.flavour]
        if self.activation not in valid:
            raise ConfigError(
                f"activation {self.activation!r} is not available for flavour {self.flavour!r}; "
                f"use one of {', '.join(valid)}"
            )
        if self.intermediate_size is None:
            plain = gpt2 or self.activation == "relu2"
            self.intermediate_size = (
                4 * self.n_embd if plain else llama_intermediate_size(self.n_embd)
            )
        check_positive_int("intermediate_size", self.intermediate_size)
        if self.bias is None:
            self.bias = gpt2
        if self.tie_embeddings is None:
            self.tie_embeddings = gpt2
        self.qk_norm = bool(self.qk_norm)
        self.zero_init_proj = bool(self.zero_init_proj)
        self.logit_softcap = float(self.logit_softcap or 0.0)
        self._resolve_head_dim()
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
        if gpt2 and self.qkv_bias:
            raise ConfigError(
                "qkv_bias is a llama-flavour option (Qwen2); for flavour 'gpt2' use bias=True"
            )
        if gpt2 and self.norm_unit_offset:
            raise ConfigError(
                "norm_unit_offset is a llama-flavour option (Gemma's RMSNorm); flavour 'gpt2' "
                "uses LayerNorm: drop it or set flavour: llama"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.logit_softcap < math.inf:
            raise ConfigError(
                f"logit_softcap must be a finite number >= 0 (0 turns it off), got "
                f"{self.logit_softcap}"
            )

    def _resolve_head_dim(self) -> None:
        """head_dim None -> n_embd // n_head; an explicit one is checked against the flavour."""
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ConfigError(
                    f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                    "pick n_embd as a multiple of n_head (e.g. head size 64) or set head_dim"
                )
            self.head_dim = self.n_embd // self.n_head
        check_positive_int("head_dim", self.head_dim)
        if self.flavour == "gpt2" and self.head_dim * self.n_head != self.n_embd:
            raise ConfigError(
                f"head_dim {self.head_dim} * n_head {self.n_head} != n_embd {self.n_embd} needs "
                "flavour 'llama'; for flavour 'gpt2' drop head_dim"
            )
        if self.flavour == "llama" and self.head_dim % 2:
            raise ConfigError(
                f"head size {self.head_dim} is odd; RoPE needs an even head size (set head_dim, "
                "or n_embd/n_head, to an even number)"
            )


class GPT(nn.Module):
    """Decoder-only transformer. `forward(idx) -> logits` (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        gpt2 = cfg.flavour == "gpt2"
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        # Gemma's sqrt(n_embd) embedding scale, a buffer as in transformers so it follows the
        # model's dtype: under bf16 weights the scale itself is rounded to bf16 first.
        scale = torch.tensor(math.sqrt(cfg.n_embd)) if cfg.embedding_scale else None
        self.register_buffer("embed_scale", scale, persistent=False)
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
        return RMSNorm(cfg.n_embd, eps=cfg.norm_eps, unit_offset=cfg.norm_unit_offset)

    def _make_block(self, layer_idx: int) -> Block:
        cfg = self.config
        q_norm = k_norm = None
        if cfg.qk_norm:
            q_norm, k_norm = (
                RMSNorm(cfg.head_dim, eps=cfg.norm_eps, unit_offset=cfg.norm_unit_offset)
                for _ in range(2)
            )
        attn = CausalSelfAttention(
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.bias,
            cfg.dropout,
            layer_idx,
            qkv_bias=cfg.bias or cfg.qkv_bias,
            head_dim=cfg.head_dim,
            q_norm=q_norm,
            k_norm=k_norm,
        )
        if cfg.flavour == "gpt2" or cfg.activation == "relu2":
            mlp: nn.Module = MLP(cfg.n_embd, cfg.intermediate_size, cfg.bias, cfg.activation)
        else:
            mlp = GatedMLP(cfg.n_embd, cfg.intermediate_size, cfg.bias, cfg.activation)
        return Block(attn, mlp, self._make_norm(), self._make_norm(), cfg.dropout)

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 initialization: normal(0, init_std) for Linear and Embedding weights, zero biases,
        unit norms; the two projections that write into the residual stream (attn.proj and
        mlp.down) get std / sqrt(2 * n_layer) so the residual variance does not grow with depth,
        or start at zero with zero_init_proj (each block then starts as the identity; the
        first step moves only those projections, since no gradient passes a zero matrix).

        Also recomputes the RoPE tables and the embedding scale, so a model built on the meta
        device becomes usable after `model.to_empty(device=...)` and `model.init_weights()`.
        """
        cfg = self.config
        std = cfg.init_std
        resid_std = 0.0 if cfg.zero_init_proj else std / math.sqrt(2 * cfg.n_layer)
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
        if self.embed_scale is not None:
            self.embed_scale.fill_(math.sqrt(cfg.n_embd))

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
        return self.logits(self.hidden_states(idx, kv_cache, doc_ids))  # (B, T, vocab_size)

    def logits(self, hidden: Tensor) -> Tensor:
        """The vocabulary logits of final hidden states (..., n_embd): lm_head, then the
        soft-cap c * tanh(logits / c) when logit_softcap is set. Code that runs the trunk and
        the head apart (scoring only some positions) must call this, not lm_head, or it
        skips the cap."""
        logits = self.lm_head(hidden)  # (..., vocab_size)
        cap = self.config.logit_softcap
        if cap:
            logits = cap * torch.tanh(logits / cap)
        return logits

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
        if self.embed_scale is not None:
            x = x * self.embed_scale.to(x.dtype)
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
        """Model FLOPs per token for forward + backward: 6*N + 12*n_layer*n_head*head_dim*T.

        The convention of the PaLM paper (appendix B) and nanoGPT's estimate_mfu: 6 FLOPs per
        weight per token (2 forward, 4 backward) with N = num_params(non_embedding=True), plus
        the attention scores and weighted sum (2 * 2 * n_layer * T * n_head * head_dim
        forward, times 3; n_head * head_dim is n_embd unless head_dim is set apart).
        T is seq_len (default block_size); activation recomputation is not counted.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        attn_width = cfg.n_head * cfg.head_dim
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * attn_width * T

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
