"""Which attention kernel a call runs: SDPA, or for short bf16 sequences on a CPU, plain matmuls.

Every attention module calls `attend`; it picks the path from the tensors alone (device,
dtype, key length, mask type), never from a timing probe, so a run and its resume take
the same path on the same shapes.

Measured on torch 2.13 (AMD EPYC, AVX-512 BF16, 2 threads; forward and backward of one
(16, 6, T, 64) causal attention):

| T    | SDPA flash, fp32 | SDPA flash, bf16 | SDPA math (bf16 in, computes fp32) | bf16 matmuls |
|------|------------------|------------------|------------------------------------|--------------|
| 64   | 3.7 ms           | 6.5 ms           | -                                  | 1.9 ms       |
| 128  | 17.0 ms          | -                | -                                  | 9.4 ms       |
| 256  | 44 ms            | 47 ms            | 56 ms                              | 27 ms        |
| 512  | 174 ms           | -                | -                                  | 172 ms       |
| 1024 | 555 ms           | -                | -                                  | 763 ms       |

With dropout 0.2 (where SDPA falls back to its fp32 math path), 4 heads: 8.0 vs 5.6 ms at
T=64, 25.8 vs 17.1 at 128, 79.9 vs 77.3 at 256 (fp32 SDPA vs bf16 matmuls); with a bool mask
(BERT padding, packed documents) 1.3-2.1x at T=128, 1.0-1.3x at 256.

The CPU's flash kernel is slow on short rows, in either dtype, and SDPA's math path upcasts
bf16 to fp32; scores from bf16 matmuls (what eager attention under autocast computes, as in
nanoGPT's or transformers' non-fused paths) run at the matmul peak and win up to 256 keys.
Past that the flash kernel, which skips the masked half and keeps no T x T scores, wins.
The price of the matmul path is memory: backward keeps each head's (L, S) weights in bf16
(three such tensors with dropout), 128 KiB per head and sequence at 256 keys, where the flash
kernel keeps none; `groundup estimate` counts them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# The longest key sequence the bf16 matmul path takes on a CPU (the table above: it wins up
# to 256 keys and ties at 512, where its T x T scores already cost 8x the memory).
CPU_MATMUL_ATTENTION_MAX_KEYS = 256


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    **kwargs: Any,
) -> Tensor:
    """scaled_dot_product_attention's contract, on the kernel that is fastest for the call.

    bf16 on a CPU: up to 256 keys (unmasked, causal, or a bool mask; with or without dropout)
    go through bf16 matmuls (`matmul_attention`); the rest attend in fp32 (the CPU's bf16 SDPA kernels are
    slower than its fp32 ones: backward 2.6x at T=64), with autocast off there or it casts the
    inputs straight back to bf16. Everything else is SDPA as it stands.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        if (
            k.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_KEYS
            and (mask is None or (mask.dtype == torch.bool and not is_causal))
            and set(kwargs) <= {"enable_gqa"}
        ):
            return matmul_attention(q, k, v, is_causal, mask, dropout_p)
        if mask is not None and mask.is_floating_point():
            mask = mask.float()  # an additive mask must match the upcast queries
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p,
                is_causal=is_causal, **kwargs,
            )  # fmt: skip
        return y.to(torch.bfloat16)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs
    )


def matmul_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    is_causal: bool = False,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """softmax(q k^T / sqrt(hs)) v from two batched matmuls, in q's dtype: SDPA's values.
    is_causal: query i sees keys 0..i (SDPA's top-left alignment); or `mask`, bool,
    broadcastable to (B, nh, L, S), True = attend; a query that may attend to nothing gets
    zeros, as from SDPA. dropout_p drops attention weights as SDPA does (its own random draws:
    the same distribution, not SDPA's stream).

    q (B, nh, L, hs); k, v (B, nkv, S, hs) with nkv dividing nh (grouped heads share k/v).
    The scale and the causal mask ride in the first product (baddbmm adds a -inf bias above
    the diagonal), so no extra pass touches the (L, S) scores; a mask costs one in-place fill.
    The softmax reads bf16 scores and computes in fp32 inside the kernel (its output equals
    fp32 softmax rounded to bf16, measured); the scores themselves are bf16 matmul outputs.
    """
    B, nh, L, hs = q.shape
    nkv, S = k.shape[1], k.shape[2]
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    q3, k3, v3 = q.reshape(B * nh, L, hs), k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)
    with torch.autocast(q.device.type, enabled=False):
        if is_causal:
            # -inf above the diagonal, 0 on and below it
            bias = torch.full((L, S), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
            scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=hs**-0.5)
        else:
            scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(hs**-0.5)  # (B * nh, L, S)
        if mask is None:
            probs = torch.softmax(scores, dim=-1)
        else:
            probs = _masked_softmax(scores.view(B, nh, L, S), mask).view(B * nh, L, S)
        if dropout_p > 0.0:
            probs = F.dropout(probs, dropout_p)
        y = torch.bmm(probs, v3)  # (B * nh, L, hs)
    return y.view(B, nh, L, hs)


def _masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """softmax over keys of scores (B, nh, L, S) where mask (True = attend) allows it.

    Trap: a row with nothing to attend to is all -inf, and its softmax NaN (its gradient too).
    Such rows are scored 0 instead (a finite uniform softmax), then their weights set to 0:
    zeros out and zero gradients, as SDPA gives.
    """
    scores.masked_fill_(~mask, float("-inf"))  # in place: its backward needs only the mask
    empty = ~mask.any(dim=-1, keepdim=True)  # (.., L, 1): queries that see no key
    if not empty.any():
        return torch.softmax(scores, dim=-1)
    scores.masked_fill_(empty, 0.0)
    return torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)
