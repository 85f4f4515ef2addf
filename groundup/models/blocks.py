"""Transformer pieces shared by the model families: attention, MLPs, norms, RoPE, a KV cache.

Each piece is a small `nn.Module` that knows nothing about the others; a model picks its
pieces and passes them to `Block` (torchtune style) instead of branching on flags inside.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groundup.errors import ShapeError
from groundup.models.attention_kernels import attend

# SDPA grew `enable_gqa` in torch 2.5; on 2.4 we expand k/v with repeat_interleave instead.
_match = re.match(r"(\d+)\.(\d+)", torch.__version__)
_SDPA_HAS_GQA = _match is not None and (int(_match[1]), int(_match[2])) >= (2, 5)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): scale only, no mean subtraction, no bias.

    unit_offset=True is Gemma's form: the scale is (1 + weight), the weight starts at 0 (so
    weight decay pulls the scale towards 1, not 0).
    """

    def __init__(self, dim: int, eps: float = 1e-5, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalize in float32 even under bf16 autocast (as HF Llama does), then cast back;
        # float64 stays float64 (fp64 runs are the exact references of the equivalence tests).
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        # F.rms_norm: x * rsqrt(mean(x^2) + eps) in one kernel (the same values as the three
        # ops it replaces, measured: 0 difference in fp64 and bf16; ~1.7x faster on a CPU)
        x32 = F.rms_norm(x32, (x32.shape[-1],), eps=self.eps)
        if self.unit_offset:
            # Trap: Gemma multiplies by (1 + w) in float32 and casts after; Llama casts first.
            return (x32 * (1.0 + self.weight.to(x32.dtype))).to(x.dtype)
        return self.weight * x32.to(x.dtype)

    def reset_parameters(self) -> None:
        (nn.init.zeros_ if self.unit_offset else nn.init.ones_)(self.weight)


class RotaryEmbedding(nn.Module):
    """Precomputed RoPE cos/sin tables, HF Llama's "rotate_half" layout.

    The rotation pairs dimension i with i + head_dim/2 (not interleaved pairs), which is the
    layout of Hugging Face Llama checkpoints, so their q/k weights load without permutation.
    The tables are non-persistent buffers: they follow `.to(device)` but stay out of checkpoints.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim, self.max_len, self.theta = head_dim, max_len, theta
        self.register_buffer("cos", torch.empty(max_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)compute the tables; call after building on the meta device and `to_empty`."""
        device = self.cos.device
        # Angles in float32 whatever the module dtype, so high positions stay exact.
        inv_freq = 1.0 / (
            self.theta
            ** (
                torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                / self.head_dim
            )
        )
        t = torch.arange(self.max_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_len, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (max_len, head_dim)
        with torch.no_grad():
            self.cos.copy_(emb.cos())
            self.sin.copy_(emb.sin())

    def forward(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        """cos, sin for positions [start, start + length), each (length, head_dim)."""
        return self.cos[start : start + length], self.sin[start : start + length]

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin for per-row positions (B, T) (packed rows), each (B, 1, T, head_dim)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by the position angles; cos/sin are (T, hs) or (B, 1, T, hs)."""
    # Cast the tables to x's dtype: under bf16 autocast q/k are bf16 and a float32 table would
    # promote them to float32 and break SDPA's same-dtype requirement.
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hs)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer pair per layer.

    Buffers are (B, n_kv_head, max_len, head_dim), allocated on the first write with the dtype
    and device of the keys (so a cache works unchanged under bf16 autocast). `pos` is the
    number of tokens already cached; the model advances it once per forward, after all layers.
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.n_layer, self.max_len = n_layer, max_len
        self.k: list[Tensor | None] = [None] * n_layer
        self.v: list[Tensor | None] = [None] * n_layer
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, n_kv_head, T, hs) at `pos`; return all keys/values up to pos + T."""
        B, nkv, T, hs = k.shape
        end = self.pos + T
        if end > self.max_len:
            raise ShapeError(
                f"KV cache holds {self.max_len} positions but {self.pos} + {T} tokens were "
                "given; build a larger cache (max_len) or reset() it"
            )
        ck, cv = self.k[layer], self.v[layer]
        if ck is None or cv is None or (ck.shape[0], ck.dtype, ck.device) != (B, k.dtype, k.device):
            if self.pos > 0:
                raise ShapeError(
                    f"KV cache holds {self.pos} tokens of another batch size, dtype or device "
                    f"than the new keys (batch {B}, {k.dtype}); reset() it before reusing it"
                )
            ck = k.new_zeros(B, nkv, self.max_len, hs)
            cv = v.new_zeros(B, nkv, self.max_len, hs)
            self.k[layer], self.v[layer] = ck, cv
        ck[:, :, self.pos : end] = k
        cv[:, :, self.pos : end] = v
        return ck[:, :, :end], cv[:, :, :end]  # (B, nkv, pos+T, hs), views: no copy

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        """Forget the cached tokens (the buffers are kept and overwritten)."""
        self.pos = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped-query support, through SDPA.

    One fused Linear makes q, k and v: (n_head + 2 * n_kv_head) * head_dim outputs, q first.
    With n_kv_head < n_head, each k/v head serves n_head // n_kv_head consecutive query heads.
    head_dim defaults to n_embd // n_head; an explicit one (Qwen3, Gemma) need not multiply
    back to n_embd: proj maps n_head * head_dim back to n_embd.
    q_norm/k_norm (QK-norm, Qwen3's layout): norms over head_dim applied to every q and k
    head after the projection and before RoPE; give both, or neither for plain attention.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_head: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        layer_idx: int = 0,
        qkv_bias: bool | None = None,
        head_dim: int | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.n_head = n_head
        self.n_kv_head = n_kv_head or n_head
        self.head_dim = head_dim or n_embd // n_head
        self.layer_idx = layer_idx  # where this layer's keys live in a KVCache
        self.dropout = dropout
        # qkv_bias None: same as `bias`. Qwen2 has biases on q/k/v only (qkv_bias=True, bias=False).
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.qkv = nn.Linear(n_embd, (n_head + 2 * self.n_kv_head) * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.q_norm, self.k_norm = q_norm, k_norm

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """attn_mask (B, 1, T, T) bool, True = attend, replaces the causal mask (packed rows:
        `document_mask`); None keeps SDPA's is_causal kernel."""
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs)  # (B, T, nh, hs)
        k = k.view(B, T, nkv, hs)  # (B, T, nkv, hs)
        if self.q_norm is not None and self.k_norm is not None:
            # Back to the projection's dtype: under bf16 autocast the fp32 norm weight would
            # promote q and k to fp32 while v stays bf16, and SDPA needs one dtype.
            q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        k = k.transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        mask, is_causal = attn_mask, attn_mask is None
        if kv_cache is not None:
            start = kv_cache.pos
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, nkv, start+T, hs)
            if start > 0:
                # Trap: SDPA's is_causal aligns the mask top-left, which is wrong once the queries
                # sit after a cached prefix. One new token sees everything; several need the mask.
                is_causal = False
                if T > 1:
                    q_pos = torch.arange(start, start + T, device=x.device)
                    k_pos = torch.arange(start + T, device=x.device)
                    mask = k_pos[None, :] <= q_pos[:, None]  # (T, start+T), True = attend

        gqa = {}
        if nkv != nh:
            if _SDPA_HAS_GQA:
                gqa = {"enable_gqa": True}
            else:
                k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, L, hs)
                v = v.repeat_interleave(nh // nkv, dim=1)
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, dropout_p, is_causal, **gqa)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, nh*hs): reshape copies only once
        return self.proj(y)


def document_positions(doc_ids: Tensor) -> Tensor:
    """(B, T) position of each token inside its document: 0 where a new document id starts.

    Documents are contiguous runs of one id along a row (packed examples, then padding)."""
    B, T = doc_ids.shape
    t = torch.arange(T, device=doc_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values  # (B, T)
    return t - first


def document_mask(doc_ids: Tensor) -> Tensor:
    """(B, 1, T, T) bool, True = attend: causal and within the same document, so packed
    examples never see each other (every row attends at least to itself: no empty softmax)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()  # (T, T)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same & causal).unsqueeze(1)  # (B, 1, T, T)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation: GPT-2's own (HF "gelu_new"), Gemma's "gelu_pytorch_tanh"."""
    return F.gelu(x, approximate="tanh")


def relu2(x: Tensor) -> Tensor:
    """relu(x)^2 (Primer; modded-nanogpt's MLP): as cheap as ReLU, with a continuous slope."""
    return F.relu(x).square()


# Activation name -> function. "gelu" is the exact erf GELU, 2-3x cheaper than the tanh form
# on CPUs (measured, torch 2.13, forward+backward).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_tanh": gelu_tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "relu2": relu2,
}


class MLP(nn.Module):
    """Plain feed-forward: down(act(up(x))). GPT-2's with GELU; relu2 for the modern recipe."""

    def __init__(
        self,
        n_embd: int,
        hidden: int,
        bias: bool = True,
        activation: str = "gelu_tanh",
    ) -> None:
        super().__init__()
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.down = nn.Linear(hidden, n_embd, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class GatedMLP(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)); SwiGLU with "silu" (Llama, Qwen),
    GeGLU with "gelu_tanh" (Gemma)."""

    def __init__(
        self, n_embd: int, hidden: int, bias: bool = False, activation: str = "silu"
    ) -> None:
        super().__init__()
        self.gate = nn.Linear(n_embd, hidden, bias=bias)
        self.up = nn.Linear(n_embd, hidden, bias=bias)
        self.down = nn.Linear(hidden, n_embd, bias=bias)
        self.activation = activation
        self.act = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        attn: CausalSelfAttention,
        mlp: nn.Module,
        norm1: nn.Module,
        norm2: nn.Module,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        # Residual dropout; Identity when off so the hot path does not call dropout at all.
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, kv_cache, attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))
