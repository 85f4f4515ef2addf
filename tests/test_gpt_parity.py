"""GPT against Hugging Face transformers on tiny random models, through the production converter.

Both directions: HF weights -> state_dict_from_hf -> our GPT, and our GPT -> state_dict_to_hf ->
HF model loaded with strict=True; logits compared in float32 on random tokens. Weights are
randomized (norm scales and biases too) so a swapped or transposed tensor cannot hide.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from groundup.errors import CheckpointError, ConfigError  # noqa: E402
from groundup.interop.gpt_weights import (  # noqa: E402
    gpt_config_from_hf,
    gpt_config_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)
from groundup.models.gpt import GPT, GPTConfig  # noqa: E402

V, ATOL = 96, 1e-4
IDS = dict(bos_token_id=0, eos_token_id=0)  # GPT-2's default 50256 is outside a tiny vocab


def gpt2_hf_config(**kw):
    return transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=V, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, **IDS, **kw,
    )  # fmt: skip


def llama_hf_config(**kw):
    base = dict(
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
        intermediate_size=48, vocab_size=V, max_position_embeddings=64, rope_theta=500.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, **IDS,
    )  # fmt: skip
    return transformers.LlamaConfig(**{**base, **kw})


def hf_model(config, attn: str = "eager"):
    cls = (
        transformers.GPT2LMHeadModel
        if config.model_type == "gpt2"
        else transformers.LlamaForCausalLM
    )
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation=attn).eval()
    with torch.no_grad():
        for p in model.parameters():  # random everything, norms around 1
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and (p == 1).all() else 0.0))
    return model


def tokens(batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(2))


def ours_from_hf(hf) -> GPT:
    cfg = gpt_config_from_hf(hf.config.to_dict())
    model = GPT(cfg).eval()
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg), strict=True)
    return model


# --------------------------------------------------------------------------- HF -> groundup


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: gpt2_hf_config(), id="gpt2"),
        pytest.param(lambda: gpt2_hf_config(activation_function="gelu"), id="gpt2-exact-gelu"),
        pytest.param(lambda: llama_hf_config(), id="llama-gqa"),
        pytest.param(lambda: llama_hf_config(tie_word_embeddings=True), id="llama-tied"),
        pytest.param(
            lambda: llama_hf_config(attention_bias=True, mlp_bias=True, num_key_value_heads=4),
            id="llama-bias-mha",
        ),
        # heads of 16 over a 32-wide model: q/k/v/o sizes are n_head * head_dim, not n_embd
        pytest.param(lambda: llama_hf_config(head_dim=16), id="llama-head-dim"),
    ],
)
def test_hf_to_groundup_logits(make, attn):
    hf = hf_model(make(), attn)
    ours = ours_from_hf(hf)
    x = tokens()
    with torch.no_grad():
        ref = hf(x).logits
        got = ours(x)
    assert ref.abs().max() > 1.0  # randomized weights give non-trivial logits
    assert (got - ref).abs().max().item() < ATOL


def test_hf_llama_config_is_read_correctly():
    cfg = gpt_config_from_hf(llama_hf_config().to_dict())
    assert (cfg.flavour, cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == ("llama", 4, 2, 48)
    assert (cfg.rope_theta, cfg.norm_eps, cfg.tie_embeddings) == (500.0, 1e-5, False)
    assert gpt_config_from_hf(gpt2_hf_config()).tie_embeddings is True  # a config object works


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_greedy_generation_matches_hf(flavour):
    """Our cached generation against HF's generate: cache offsets, RoPE positions, masks."""
    config = gpt2_hf_config() if flavour == "gpt2" else llama_hf_config()
    hf = hf_model(config)
    ours = ours_from_hf(hf)
    x = tokens(1, 5)
    ref = hf.generate(x, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
    assert torch.equal(ours.generate(x, 10, temperature=0), ref)


# --------------------------------------------------------------------------- groundup -> HF


def to_hf_model(cfg: GPTConfig, ours: GPT):
    d = gpt_config_to_hf(cfg)
    cls = {"gpt2": transformers.GPT2Config, "llama": transformers.LlamaConfig}[d["model_type"]]
    config = cls(**{k: v for k, v in d.items() if k != "model_type"}, **IDS)
    hf_cls = (
        transformers.GPT2LMHeadModel if cfg.flavour == "gpt2" else transformers.LlamaForCausalLM
    )
    hf = hf_cls._from_config(config, attn_implementation="eager").eval()
    hf.load_state_dict(state_dict_to_hf(ours, include_tied=True), strict=True)
    return hf


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("gpt2-tiny", {}),
        ("gpt2-tiny", {"bias": False}),  # exported with zero biases
        ("gpt2-tiny", {"tie_embeddings": False}),
        ("gpt2-tiny", {"activation": "gelu"}),  # exact GELU <-> HF activation_function "gelu"
        ("llama-tiny", {"n_kv_head": 1}),  # multi-query attention
        ("llama-tiny", {}),
        ("llama-tiny", {"tie_embeddings": True, "bias": True, "rope_theta": 123.0}),
        ("llama-tiny", {"head_dim": 16}),  # attention 64 wide in a 32-wide model
        ("llama-tiny", {"head_dim": 4, "n_kv_head": 4}),  # and 16 wide
    ],
)
def test_groundup_to_hf_logits(name, overrides):
    cfg = GPTConfig.from_name(name, **overrides)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf = to_hf_model(cfg, ours)
    assert gpt_config_from_hf(hf.config.to_dict()) == GPTConfig.from_dict(
        {**cfg.to_dict(), "bias": True if cfg.flavour == "gpt2" else cfg.bias}
    )
    x = tokens()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < ATOL
    # and back: the round trip gives the same tensors
    back = state_dict_from_hf(state_dict_to_hf(ours), cfg)
    for key, t in ours.state_dict().items():
        assert torch.equal(back[key], t), key


def test_exported_tensors_do_not_share_memory():
    """safetensors refuses shared storage: q/k/v slices are cloned, the tied head is left out."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    for name in ["gpt2-tiny", "llama-tiny"]:
        sd = state_dict_to_hf(GPT(GPTConfig.from_name(name, tie_embeddings=True)))
        assert "lm_head.weight" not in sd
        safetensors_torch.save(sd)  # raises on shared or non-contiguous tensors


# ----------------------------------------------------------------------------------- errors


def test_bare_gpt2_checkpoint_with_mask_buffers_loads():
    """The original gpt2 file has GPT2Model keys ("h.0...") and old attn.bias mask buffers."""
    hf = hf_model(gpt2_hf_config())
    cfg = gpt_config_from_hf(hf.config.to_dict())
    bare = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    bare.pop("lm_head.weight")
    bare["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    bare["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    ours = GPT(cfg).eval()
    ours.load_state_dict(state_dict_from_hf(bare, cfg))
    x = tokens()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < ATOL


def test_checkpoint_errors_name_the_keys():
    hf_sd = hf_model(llama_hf_config()).state_dict()
    cfg = gpt_config_from_hf(llama_hf_config())
    missing = {k: v for k, v in hf_sd.items() if k != "model.layers.1.self_attn.k_proj.weight"}
    with pytest.raises(CheckpointError, match="missing keys: model.layers.1.self_attn.k_proj"):
        state_dict_from_hf(missing, cfg)
    with pytest.raises(CheckpointError, match="unexpected keys: model.layers.0.extra.weight"):
        state_dict_from_hf({**hf_sd, "model.layers.0.extra.weight": torch.zeros(1)}, cfg)
    wrong = dict(hf_sd, **{"model.norm.weight": torch.zeros(7)})
    with pytest.raises(CheckpointError, match=r"model.norm.weight \(7,\) vs \(32,\)"):
        state_dict_from_hf(wrong, cfg)
    with pytest.raises(CheckpointError, match="missing keys: lm_head.weight"):
        state_dict_from_hf({k: v for k, v in hf_sd.items() if k != "lm_head.weight"}, cfg)
    with pytest.raises(CheckpointError, match="missing keys: blocks.0.attn.qkv.weight"):
        sd = GPT(GPTConfig.from_name("llama-tiny")).state_dict()
        del sd["blocks.0.attn.qkv.weight"]
        state_dict_to_hf(sd, GPTConfig.from_name("llama-tiny"))
    biased = hf_model(gpt2_hf_config()).state_dict()
    with pytest.raises(CheckpointError, match="nonzero biases.*set bias=True"):
        state_dict_from_hf(biased, GPTConfig.from_name("gpt2-tiny", bias=False))


@pytest.mark.parametrize(
    "config, field",
    [
        ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, "rope_scaling"),
        ({"model_type": "llama", "rope_parameters": {"rope_type": "yarn"}}, "rope_type"),
        ({"model_type": "llama", "hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "llama", "attention_bias": True}, "attention_bias/mlp_bias"),
        ({"model_type": "gpt2", "activation_function": "relu"}, "activation_function"),
        ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by"),
        ({"model_type": "bert"}, "unsupported Hugging Face model_type 'bert'"),
        ({"model_type": "t5"}, "supported: 'gpt2', 'llama', 'mistral', 'qwen2'"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "qwen2", "layer_types": ["sliding_attention"]}, "layer_types"),
        ({"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 8192}, "sliding_window=4096"),
        ({"model_type": "llama", "rope_parameters": {"partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
    ],
)  # fmt: skip
def test_unsupported_hf_configs_name_the_field(config, field):
    with pytest.raises(ConfigError, match=field):
        gpt_config_from_hf(config)
