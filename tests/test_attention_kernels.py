"""attend's kernel choice and the bf16 matmul path's values, against SDPA in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groundup.models import attention_kernels
from groundup.models.attention_kernels import CPU_MATMUL_ATTENTION_MAX_KEYS, attend
from groundup.models.bert import Bert, BertConfig
from groundup.models.gpt import GPT, GPTConfig


def qkv(
    L: int, S: int, nh: int = 4, nkv: int = 4, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, nh, L, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, nkv, S, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, nkv, S, 16, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v))


def sdpa(q, k, v, is_causal):
    nh, nkv = q.shape[1], k.shape[1]
    if nkv != nh:
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize(
    ("L", "S", "nkv", "is_causal"),
    [(24, 24, 4, True), (24, 24, 4, False), (24, 24, 2, True), (1, 30, 4, False), (5, 9, 1, True)],
)
def test_matmul_attention_equals_sdpa_in_float64(L, S, nkv, is_causal):
    """Values and all three gradients, causal masks aligned top-left as SDPA's."""
    q, k, v = qkv(L, S, nkv=nkv)
    got = attention_kernels.matmul_attention(q, k, v, is_causal)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, (q, k, v), g)
    want = sdpa(q, k, v, is_causal)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    assert (got - want).abs().max() < 1e-12
    for a, b in zip(grads, want_grads, strict=True):
        assert (a - b).abs().max() < 1e-12


def masks(S: int) -> dict[str, torch.Tensor]:
    """The masks the models pass: key padding (BERT, one sequence all padding), packed
    documents (GPT SFT), and a plain (L, S) mask with one query that sees nothing."""
    padding = torch.ones(2, 1, 1, S, dtype=torch.bool)
    padding[0, ..., S // 2 :] = False
    padding[1] = False  # nothing to attend to: SDPA gives zeros
    doc = torch.zeros(2, S, dtype=torch.long)
    doc[:, S // 3 :] = 1
    packed = (doc[:, :, None] == doc[:, None, :]) & torch.ones(S, S, dtype=torch.bool).tril()
    plain = torch.rand(S, S, generator=torch.Generator().manual_seed(1)) > 0.5
    plain[3] = False
    return {"padding": padding, "packed": packed.unsqueeze(1), "plain": plain}


@pytest.mark.parametrize("kind", ["padding", "packed", "plain"])
def test_masked_matmul_attention_equals_sdpa_in_float64(kind):
    """With a bool mask, rows that see nothing included: values and gradients as SDPA's."""
    q, k, v = qkv(24, 24)
    mask = masks(24)[kind]
    got = attention_kernels.matmul_attention(q, k, v, mask=mask)
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, (q, k, v), g)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() < 1e-12
    for a, b in zip(grads, want_grads, strict=True):
        assert torch.isfinite(a).all() and (a - b).abs().max() < 1e-12


def test_matmul_attention_dropout_is_unbiased_and_drops_weights():
    """Dropout on the attention weights, scaled by 1/(1-p): the mean over many draws is the
    dropout-free output (within 5 standard errors), single draws differ from it."""
    q, k, v = (t.detach() for t in qkv(6, 6, nh=1, nkv=1))
    exact = attention_kernels.matmul_attention(q, k, v, True)
    torch.manual_seed(0)
    draws = torch.stack(
        [attention_kernels.matmul_attention(q, k, v, True, None, 0.5) for _ in range(4000)]
    )
    assert (draws[0] - exact).abs().max() > 1e-3
    error = (draws.mean(0) - exact).abs()
    assert (error <= 5 * draws.std(0) / 4000**0.5 + 1e-12).all()


def test_bf16_matmul_path_stays_within_bf16_noise():
    """In bf16 the scores are rounded once more than in SDPA's fp32-internal kernels; the
    output error against float64 stays within a few times the rounding of the exact output
    itself (measured 1.4-2.1x over six seeds; SDPA's fp32 path: 1.0x)."""
    q, k, v = qkv(64, 64, seed=3)
    exact = sdpa(q, k, v, True).detach()
    out = attend(*(t.detach().bfloat16() for t in (q, k, v)), is_causal=True).double()
    rounding = (exact.bfloat16().double() - exact).abs().max()
    assert (out - exact).abs().max() <= 4 * rounding


def spy_on_matmul_path(monkeypatch) -> list[bool]:
    taken: list[bool] = []
    real = attention_kernels.matmul_attention

    def spy(*args):
        taken.append(True)
        return real(*args)

    monkeypatch.setattr(attention_kernels, "matmul_attention", spy)
    return taken


@pytest.mark.parametrize(
    ("dtype", "S", "mask", "dropout", "expect_matmul"),
    [
        (torch.bfloat16, 64, None, 0.0, True),
        (torch.bfloat16, CPU_MATMUL_ATTENTION_MAX_KEYS, None, 0.0, True),
        (torch.bfloat16, CPU_MATMUL_ATTENTION_MAX_KEYS + 1, None, 0.0, False),
        (torch.bfloat16, 64, "bool", 0.0, True),
        (torch.bfloat16, 64, "float", 0.0, False),
        (torch.bfloat16, 64, None, 0.1, True),
        (torch.bfloat16, CPU_MATMUL_ATTENTION_MAX_KEYS + 1, None, 0.1, False),
        (torch.float32, 64, None, 0.0, False),
    ],
)
def test_attend_picks_the_kernel_from_the_call(monkeypatch, dtype, S, mask, dropout, expect_matmul):
    """The choice depends on the tensors only (no timing), so a resumed run takes the same one."""
    taken = spy_on_matmul_path(monkeypatch)
    q, k, v = (t.detach().to(dtype) for t in qkv(S, S))
    allowed = torch.ones(S, S, dtype=torch.bool).tril()
    if mask == "float":  # an additive mask, as SDPA also takes
        allowed = torch.zeros(S, S, dtype=dtype).masked_fill(~allowed, float("-inf"))
    out = attend(q, k, v, None if mask is None else allowed, dropout, is_causal=mask is None)
    assert out.dtype == dtype and out.shape == q.shape
    assert bool(taken) == expect_matmul


def test_gpt_bf16_logits_agree_across_the_two_kernels(monkeypatch):
    """A bf16-autocast GPT gives the same logits on the matmul path as on the fp32 SDPA path,
    to bf16's noise (0.3% of the largest logit, measured), packed rows (document masks) too,
    and its kv-cache decoding (one query over the cached keys) agrees with its full forward."""
    cfg = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, flavour="gpt2")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 64, (2, 32))
    docs = (torch.arange(32) >= 12).long().expand(2, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, fast_packed = model(idx).float(), model(idx, doc_ids=docs).float()
        cache = model.new_kv_cache()
        model(idx[:, :31], kv_cache=cache)
        last = model(idx[:, 31:], kv_cache=cache).float()
        monkeypatch.setattr(attention_kernels, "CPU_MATMUL_ATTENTION_MAX_KEYS", 0)
        flash, flash_packed = model(idx).float(), model(idx, doc_ids=docs).float()
    scale = flash.abs().max()
    assert (fast - flash).abs().max() < 0.01 * scale  # measured 0.003
    assert (fast_packed - flash_packed).abs().max() < 0.01 * scale
    assert (last[:, -1] - fast[:, -1]).abs().max() < 0.01 * scale


def test_bert_bf16_padded_batch_agrees_across_the_two_kernels(monkeypatch):
    """BERT's key-padding mask on the matmul path: the real tokens' hidden states as on the
    fp32 SDPA path, to bf16's noise."""
    torch.manual_seed(0)
    cfg = BertConfig(n_layer=2, n_head=4, n_embd=64, intermediate_size=128, vocab_size=50,
                     block_size=32, dropout=0.0)  # fmt: skip
    model = Bert(cfg).eval()
    idx = torch.randint(1, 50, (2, 20))
    attention_mask = torch.ones(2, 20, dtype=torch.long)
    attention_mask[0, 13:] = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(idx, attention_mask).float()
        monkeypatch.setattr(attention_kernels, "CPU_MATMUL_ATTENTION_MAX_KEYS", 0)
        flash = model(idx, attention_mask).float()
    real = attention_mask.bool()
    assert (fast[real] - flash[real]).abs().max() < 5e-3 * flash[real].abs().max()  # 1e-4
