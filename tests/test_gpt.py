"""GPT model: presets, config validation, the modern recipe, init, tying, training signal,
the Qwen3/Gemma/modern options (head_dim, QK-norm, relu2, GeGLU, (1 + w) norms, embedding scale,
logit soft-cap, zero-init projections), KV cache and packing with them, autocast, FLOPs, compile."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from groundup.errors import ConfigError, ShapeError
from groundup.models.blocks import RMSNorm, apply_rotary
from groundup.models.gpt import GPT, PRESETS, RECIPES, GPTConfig

FLAVOURS = ["gpt2-tiny", "llama-tiny", "modern-tiny"]


def tiny(name: str, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name(name, **overrides))


def randomized(model: GPT, seed: int = 1) -> GPT:
    """All weights random (zero-initialised projections and unit norms too), so no part of
    the forward pass can hide behind its init."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


# ---------------------------------------------------------------------------- presets, configs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta(name):
    cfg = GPTConfig.from_name(name)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() > 0
    assert len(model.blocks) == cfg.n_layer


def test_gpt2_124m_param_count_matches_hand_count():
    cfg = GPTConfig.from_name("gpt2-124m")
    with torch.device("meta"):
        model = GPT(cfg)
    V, P, C, L = 50304, 1024, 768, 12
    per_layer = (
        2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    )
    expected = V * C + P * C + L * per_layer + 2 * C  # lm_head tied to the token table
    assert model.num_params() == expected == 124_475_904
    assert model.num_params(non_embedding=True) == expected - P * C


def test_llama_1b_param_count_matches_llama_3_2_1b():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_name("llama-1b"))
    assert model.num_params() == 1_235_814_400  # Llama 3.2 1B's published count (tied)
    assert model.lm_head.weight is model.tok_emb.weight


def test_gpt2_small_and_124m_are_the_same():
    assert GPTConfig.from_name("gpt2-small") == GPTConfig.from_name("GPT2-124M")


def test_flavour_defaults():
    g = GPTConfig(flavour="gpt2", n_layer=1, n_head=2, n_embd=64)
    assert (g.bias, g.tie_embeddings, g.intermediate_size, g.n_kv_head) == (True, True, 256, 2)
    ll = GPTConfig(flavour="llama", n_layer=1, n_head=2, n_embd=64)
    # Llama: 2/3 * 4 * 64 = 170, rounded up to a multiple of 256
    assert (ll.bias, ll.tie_embeddings, ll.intermediate_size) == (False, False, 256)
    assert GPTConfig(flavour="llama", n_embd=4096, n_head=32).intermediate_size == 11008
    assert GPTConfig.from_name("baby-shakespeare").bias is False


def test_from_name_overrides_and_dict_round_trip():
    cfg = GPTConfig.from_name("llama-tiny", n_layer=3)
    assert cfg.n_layer == 3 and cfg.flavour == "llama"
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n_embd=30, n_head=4), "not divisible by n_head"),
        (dict(flavour="llama", n_head=4, n_kv_head=3, n_embd=32), "not divisible by n_kv_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=-5), "vocab_size must be a positive integer"),
        (dict(block_size=2.5), "block_size must be a positive integer"),
        (dict(flavour="lama"), "did you mean 'llama'"),
        (dict(flavour="gpt2", n_head=4, n_kv_head=2, n_embd=32), "needs flavour 'llama'"),
        (dict(flavour="llama", n_head=4, n_embd=12), "RoPE needs an even head size"),
        (dict(dropout=1.0), "dropout must be in [0, 1)"),
        (dict(norm_eps=0), "norm_eps must be > 0"),
        (dict(flavour="gpt2", n_head=4, n_embd=32, head_dim=16), "needs flavour 'llama'"),
        (dict(flavour="llama", n_head=4, n_embd=32, head_dim=7), "RoPE needs an even head size"),
        (dict(flavour="llama", head_dim=0), "head_dim must be a positive integer"),
        (dict(flavour="llama", activation="gelu"), "'gelu' is not available for flavour 'llama'"),
        (dict(flavour="gpt2", activation="silu"), "'silu' is not available for flavour 'gpt2'"),
        (dict(flavour="gpt2", norm_unit_offset=True), "norm_unit_offset is a llama-flavour"),
        (dict(logit_softcap=-1.0), "logit_softcap must be a finite number >= 0"),
        (dict(logit_softcap=float("inf")), "logit_softcap must be a finite number >= 0"),
        (dict(recipe="modrn"), "unknown model recipe 'modrn'.*did you mean 'modern'"),
    ],
)
def test_config_validation(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        GPTConfig(**kwargs)


def test_explicit_head_dim_frees_n_embd_from_n_head():
    cfg = GPTConfig(flavour="llama", n_layer=1, n_head=4, n_kv_head=2, n_embd=30, head_dim=8)
    assert cfg.head_dim == 8  # 30 is no multiple of 4: fine when head_dim is given
    assert GPTConfig(flavour="llama", n_head=4, n_embd=32).head_dim == 8  # resolved default
    model = GPT(cfg)
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == ((4 + 2 * 2) * 8, 30)  # (q + k + v rows, n_embd)
    assert attn.proj.weight.shape == (30, 4 * 8)
    assert model(torch.randint(0, 10, (2, 5))).shape == (2, 5, cfg.vocab_size)


def test_modern_recipe_fills_only_the_unset_fields():
    cfg = GPTConfig.from_name("modern-tiny")
    for name, value in RECIPES["modern"].items():
        assert getattr(cfg, name) == value, name
    assert cfg.intermediate_size == 4 * 32  # relu2 is a plain MLP: 4 * n_embd
    # what the config sets wins over the recipe: the ablation rows of a benchmark
    no_qk = GPTConfig.from_dict({"recipe": "modern", "qk_norm": False, "n_head": 4, "n_embd": 32})
    assert (no_qk.qk_norm, no_qk.activation, no_qk.zero_init_proj) == (False, "relu2", True)
    assert GPTConfig(recipe="modern", logit_softcap=15.0).logit_softcap == 15.0  # an addition
    assert GPTConfig(recipe="modern", zero_init_proj=False).zero_init_proj is False
    assert GPTConfig(recipe="MODERN", flavour="gpt2").bias is False  # no biases either way
    assert GPTConfig().qk_norm is False and GPTConfig().logit_softcap == 0.0  # no recipe


@pytest.mark.parametrize(
    "fields",
    [
        {"recipe": "modern"},
        {"recipe": "modern", "qk_norm": False, "logit_softcap": 0.0, "zero_init_proj": False},
        {"recipe": "modern", "activation": "silu", "tie_embeddings": True},
    ],
)
def test_modern_config_round_trips_through_to_dict(fields):
    """A saved config keeps each resolved value, so an override of the recipe survives."""
    cfg = GPTConfig.from_dict({"n_layer": 2, "n_head": 4, "n_embd": 32, **fields})
    saved = cfg.to_dict()
    assert None not in (saved[k] for k in RECIPES["modern"])
    assert GPTConfig.from_dict(saved) == cfg
    assert GPTConfig.from_dict(saved).to_dict() == saved


def test_modern_checkpoint_reloads_identically(tmp_path):
    from groundup.data.tokenizers import Tokenizer
    from groundup.models.folders import load_model_dir, save_model_dir

    model = randomized(tiny("modern-tiny", qk_norm=False, vocab_size=320)).eval()
    save_model_dir(tmp_path / "model", model, Tokenizer.train(None, kind="bytes"))
    loaded, _ = load_model_dir(tmp_path / "model")
    assert loaded.config == model.config and loaded.config.qk_norm is False
    idx = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


def test_unknown_preset_and_unknown_key():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt2-smal'.*did you mean"):
        GPTConfig.from_name("gpt2-smal")
    with pytest.raises(
        ConfigError, match="unknown GPT config key 'n_layers'.*did you mean 'n_layer'"
    ):
        GPTConfig.from_name("gpt2-tiny", n_layers=3)


# -------------------------------------------------------------------------------- init, tying


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(flavour="gpt2", n_layer=8, n_head=4, n_embd=256, block_size=16, vocab_size=64)
    model = GPT(cfg)
    resid = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert block.mlp.down.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.norm1.weight == 1)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_zero_init_proj_starts_every_block_as_the_identity():
    model = tiny("llama-tiny", zero_init_proj=True).eval()
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.down.weight.any()
        assert block.attn.qkv.weight.std().item() > 0.01
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(idx), model.lm_head(model.norm(model.tok_emb(idx))))
    assert tiny("llama-tiny").blocks[0].attn.proj.weight.any()  # off by default


def test_tied_and_untied_embeddings():
    g = tiny("gpt2-tiny")
    assert g.lm_head.weight is g.tok_emb.weight
    assert "lm_head.weight" in g.state_dict()  # both names, one tensor
    ll = tiny("llama-tiny")
    assert ll.lm_head.weight is not ll.tok_emb.weight
    assert tiny("llama-tiny", tie_embeddings=True).lm_head.weight is not None


@pytest.mark.parametrize(
    "overrides", [{}, {"embedding_scale": True, "norm_unit_offset": True, "qk_norm": True}]
)
def test_meta_build_then_init_weights_matches_a_normal_model(overrides):
    cfg = GPTConfig.from_name("llama-tiny", **overrides)
    ref = tiny("llama-tiny", **overrides)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()  # recomputes the RoPE tables (and embed scale), garbage after to_empty
    model.load_state_dict(ref.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    torch.testing.assert_close(model(idx), ref(idx))


# ----------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", FLAVOURS)
def test_forward_shape_and_block_size_error(name):
    model = tiny(name)
    logits = model(torch.randint(0, 96, (3, 64)))
    assert logits.shape == (3, 64, 96) and logits.dtype == torch.float32
    with pytest.raises(ShapeError, match="sequence of 65 tokens exceeds block_size 64"):
        model(torch.randint(0, 96, (1, 65)))
    with pytest.raises(ShapeError, match="batch, time"):
        model(torch.randint(0, 96, (10,)))


@pytest.mark.parametrize("name", FLAVOURS)
def test_forward_is_causal(name):
    """Changing a later token must not change the logits of earlier positions."""
    model = tiny(name).eval()
    idx = torch.randint(0, 96, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 96
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def reference_attention_block(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """The first llama block written out by hand: explicit mask, softmax, repeated k/v."""
    block, cfg = model.blocks[0], model.config
    B, T, C = x.shape
    nh, nkv, hs = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * block.norm1.weight
    q, k, v = block.attn.qkv(h).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    q, k, v = (t.view(B, T, -1, hs).transpose(1, 2) for t in (q, k, v))
    pos = torch.arange(T, dtype=torch.float32)
    inv = cfg.rope_theta ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    ang = torch.cat([pos[:, None] * inv] * 2, dim=-1)  # (T, hs)

    def rot(t):
        t1, t2 = t[..., : hs // 2], t[..., hs // 2 :]
        return t * ang.cos() + torch.cat([-t2, t1], dim=-1) * ang.sin()

    q, k = rot(q), rot(k)
    k = k.repeat_interleave(nh // nkv, dim=1)
    v = v.repeat_interleave(nh // nkv, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    x = x + block.attn.proj(y)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * block.norm2.weight
    mlp = block.mlp
    return x + mlp.down(F.silu(mlp.gate(h)) * mlp.up(h))


def test_llama_block_matches_a_hand_written_reference():
    model = tiny("llama-tiny")
    x = torch.randn(2, 9, 32)
    rope = model.rope(0, 9)
    torch.testing.assert_close(model.blocks[0](x, rope), reference_attention_block(model, x))


def rms(t: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_modern_block_matches_a_hand_written_reference():
    """QK-norm over each head before RoPE, heads wider than n_embd/n_head, relu^2 MLP."""
    model = randomized(tiny("modern-tiny", head_dim=16))
    block, cfg = model.blocks[0], model.config
    B, T, C, nh, nkv, hs = 2, 9, 32, 4, 2, 16
    x = torch.randn(B, T, C)
    h = rms(x, block.norm1.weight, cfg.norm_eps)
    q, k, v = block.attn.qkv(h).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    q = rms(q.view(B, T, nh, hs), block.attn.q_norm.weight, cfg.norm_eps).transpose(1, 2)
    k = rms(k.view(B, T, nkv, hs), block.attn.k_norm.weight, cfg.norm_eps).transpose(1, 2)
    v = v.view(B, T, nkv, hs).transpose(1, 2)
    cos, sin = model.rope(0, T)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
    x2 = x + block.attn.proj((att @ v).transpose(1, 2).reshape(B, T, nh * hs))
    h = rms(x2, block.norm2.weight, cfg.norm_eps)
    want = x2 + block.mlp.down(F.relu(block.mlp.up(h)) ** 2)
    assert not hasattr(block.mlp, "gate")  # relu2 is a plain MLP
    torch.testing.assert_close(block(x, (cos, sin)), want)


def test_gelu_tanh_on_llama_is_a_gated_mlp():
    """GeGLU (Gemma): down(gelu_tanh(gate(x)) * up(x))."""
    mlp = tiny("llama-tiny", activation="gelu_tanh").blocks[0].mlp
    x = torch.randn(3, 32)
    want = mlp.down(F.gelu(mlp.gate(x), approximate="tanh") * mlp.up(x))
    torch.testing.assert_close(mlp(x), want)


def test_unit_offset_rmsnorm_scales_by_one_plus_weight():
    norm = RMSNorm(8, eps=1e-6, unit_offset=True)
    assert not norm.weight.any()  # starts at zero: the scale 1 + w starts at one
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 8)
    normed = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    torch.testing.assert_close(norm(x), normed * (1 + norm.weight))
    assert norm(x.to(torch.bfloat16)).dtype == torch.bfloat16  # cast back after the scale


def test_embedding_scale_is_sqrt_n_embd_in_the_model_dtype():
    scaled = randomized(tiny("llama-tiny", embedding_scale=True)).eval()
    plain = GPT(GPTConfig.from_name("llama-tiny")).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        plain.tok_emb.weight.mul_(math.sqrt(32))
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(scaled(idx), plain(idx))
    assert "embed_scale" not in scaled.state_dict()  # recomputed, never saved
    half = scaled.to(torch.bfloat16)
    assert half.embed_scale.dtype == torch.bfloat16
    assert half.embed_scale.item() == torch.tensor(math.sqrt(32)).to(torch.bfloat16).item()


def test_logit_softcap_bounds_the_logits():
    model = randomized(tiny("llama-tiny", logit_softcap=2.0)).eval()
    idx = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        raw = model.lm_head(model.hidden_states(idx))
        logits = model(idx)
    assert raw.abs().max() > 2.0  # the cap does bite on these weights
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    torch.testing.assert_close(model.logits(model.hidden_states(idx)), logits)
    assert logits.abs().max() < 2.0


def test_qk_norm_kv_cache_decoding_equals_the_full_forward():
    """Token by token through the cache (q/k normed, then rotated at their offsets) gives the
    logits of one forward over the whole sequence."""
    model = randomized(tiny("modern-tiny", head_dim=16)).double().eval()
    idx = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_kv_cache()
        steps = [model(idx[:, :5], kv_cache=cache)]  # a prompt of 5, then one at a time
        steps += [model(idx[:, t : t + 1], kv_cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
    greedy = model.generate(idx[:1, :4], 6, temperature=0)
    for t in range(4, 10):  # each generated token is the full forward's argmax
        with torch.no_grad():
            assert greedy[0, t] == model(greedy[:, :t])[0, -1].argmax()


def test_packed_rows_equal_documents_one_by_one_with_qk_norm_and_relu2():
    model = randomized(tiny("modern-tiny")).double().eval()
    docs = [
        torch.randint(0, 96, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 9, 3)
    ]
    idx = torch.cat(docs)[None]  # (1, 17)
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        packed = model(idx, doc_ids=doc_ids)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        leaky = model(idx)[0]  # the control: attending across documents differs
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-10)
    assert (leaky - alone).abs().max() > 1e-3


def test_rmsnorm_and_rotary_basics():
    norm = RMSNorm(8, eps=1e-6)
    x = torch.randn(3, 8)
    torch.testing.assert_close(norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    q = torch.randn(1, 1, 1, 8)
    zero = torch.zeros(1, 8)
    torch.testing.assert_close(apply_rotary(q, zero + 1, zero), q)  # angle 0 = identity
    # RoPE rotates the pairs (i, i + hs/2): the norm of each pair is kept
    cos, sin = tiny("llama-tiny").rope(5, 1)  # (1, 8): head size 8
    r = apply_rotary(q, cos, sin)
    torch.testing.assert_close(r[..., :4] ** 2 + r[..., 4:] ** 2, q[..., :4] ** 2 + q[..., 4:] ** 2)
    assert not torch.allclose(r, q)


@pytest.mark.parametrize("name", FLAVOURS)
def test_loss_decreases_with_adamw(name):
    model = tiny(name)
    seq = torch.arange(16).repeat(2)[None, :].repeat(4, 1)  # (4, 32), a repeated pattern
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(96), rel=0.05)  # uniform at init
    assert losses[-1] < 0.3 * losses[0]


def test_dropout_only_in_training():
    model = tiny("gpt2-tiny", dropout=0.3)
    idx = torch.randint(0, 96, (2, 8))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))


@pytest.mark.parametrize("name", FLAVOURS)
def test_bf16_autocast_forward_and_backward(name):
    model = tiny(name)
    idx = torch.randint(0, 96, (2, 16))
    ref = model(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), ref, atol=0.05, rtol=0.05)
    logits.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_flops_per_token_formula():
    model = tiny("gpt2-tiny")
    cfg = model.config
    C, L, V, T = 32, 2, 96, 64
    n = model.num_params()
    # non-embedding: drop the position table; the tied token table is the lm_head matmul
    assert model.num_params(non_embedding=True) == n - T * C
    assert model.flops_per_token() == 6 * (n - T * C) + 12 * L * C * T
    assert model.flops_per_token(seq_len=16) == 6 * (n - T * C) + 12 * L * C * 16
    llama = tiny("llama-tiny")
    assert llama.num_params(non_embedding=True) == llama.num_params() - V * C  # untied table
    assert cfg.block_size == T


def test_params_and_flops_with_wide_heads_and_relu2():
    """Hand counts: heads of 16 (attention 64 wide in a 32-wide model), QK-norm, relu2 MLP."""
    model = tiny("modern-tiny", head_dim=16)
    C, L, V, T, nh, nkv, hs, H = 32, 2, 96, 64, 4, 2, 16, 128
    per_layer = (
        2 * C  # norm1, norm2
        + C * (nh + 2 * nkv) * hs  # qkv, no bias
        + nh * hs * C  # proj
        + 2 * hs  # q_norm, k_norm
        + 2 * C * H  # up, down: no gate
    )
    n = V * C + L * per_layer + C + V * C  # untied head, final norm
    assert model.num_params() == n
    assert model.num_params(non_embedding=True) == n - V * C
    assert model.flops_per_token() == 6 * (n - V * C) + 12 * L * nh * hs * T


# ----------------------------------------------------------------------------------- compile


@pytest.mark.parametrize("name", FLAVOURS)
def test_compile_traces_without_graph_breaks(name):
    """fullgraph=True fails on any graph break; aot_eager also traces the backward pass.
    (The inductor backend compiles C++ on CPU, 30+ s: see the slow test below.)"""
    model = tiny(name, n_layer=1)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 96, (2, 16))
    out = compiled(idx)
    torch.testing.assert_close(out, model(idx))
    out.sum().backward()
    assert model.tok_emb.weight.grad is not None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GROUNDUP_SLOW"), reason="set GROUNDUP_SLOW=1 (~90 s)")
@pytest.mark.parametrize("name", FLAVOURS)
def test_compile_inductor_matches_eager(name):
    model = tiny(name, n_layer=1)
    compiled = torch.compile(model)
    idx = torch.randint(0, 96, (2, 16))
    torch.testing.assert_close(compiled(idx), model(idx), atol=1e-5, rtol=1e-5)
