"""Qwen3 and Gemma against transformers on tiny random models, through the production converter.

Both directions (HF random model -> our import, our GPT -> export -> HF model), folders as
transformers writes and reads them, greedy generation with the KV cache, refusals naming the
field, LoRA fine-tuning of a Qwen3 import with its PEFT export, and the GGUF layout of both
architectures. Weights are randomized (norm weights too) so a swapped tensor cannot hide; heads
are 16 wide over a 32-wide model, so q/k/v sizes that assume n_embd/n_head would fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from groundup.data.tokenizers import Tokenizer  # noqa: E402
from groundup.errors import ConfigError  # noqa: E402
from groundup.finetune.lora import apply_lora  # noqa: E402
from groundup.interop.gpt_weights import (  # noqa: E402
    gpt_config_from_hf,
    gpt_config_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
)
from groundup.interop.hf_dir import load_hf_gpt, read_hf_dir  # noqa: E402
from groundup.interop.hf_export import export_hf  # noqa: E402
from groundup.models.gpt import GPT, GPTConfig  # noqa: E402

V, ATOL = 96, 1e-4
IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
HF_CLASSES = {
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
}
SHAPE = dict(
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
    head_dim=16, intermediate_size=48, vocab_size=V, max_position_embeddings=64,
    rope_theta=500.0, rms_norm_eps=1e-6,
)  # fmt: skip
# Our side of the same two families: llama flavour plus each family's options.
OURS = {
    "qwen3": dict(qk_norm=True),
    "gemma": dict(norm_unit_offset=True, embedding_scale=True, activation="gelu_tanh"),
}


def hf_config(family: str, **kw):
    cls = HF_CLASSES[family][0]
    tie = {"tie_word_embeddings": family == "gemma"}  # each family's usual choice
    return cls(**{**SHAPE, **tie, **IDS, **kw})


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random, norm scales around their identity (1, or 0 for Gemma's 1 + w)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            at_one = p.dim() == 1 and bool((p == 1).all())
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if at_one else 0.0))
    return model


def hf_model(family: str, attn: str = "eager", **kw):
    cls = HF_CLASSES[family][1]
    return randomize(cls._from_config(hf_config(family, **kw), attn_implementation=attn)).eval()


def ours_config(family: str, **kw) -> GPTConfig:
    shape = dict(
        flavour="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, head_dim=16,
        intermediate_size=48, block_size=64, vocab_size=V, rope_theta=500.0, norm_eps=1e-6,
        tie_embeddings=family == "gemma",
    )  # fmt: skip
    return GPTConfig(**{**shape, **OURS[family], **kw})


def tokens(batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(2))


def ours_from_hf(hf) -> GPT:
    cfg = gpt_config_from_hf(hf.config.to_dict())
    model = GPT(cfg).eval()
    model.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg), strict=True)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------- HF -> groundup


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "family, kw",
    [
        ("qwen3", {}),
        ("qwen3", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
        ("gemma", {"num_key_value_heads": 1}),  # multi-query attention, as Gemma 2B
        ("gemma", {"tie_word_embeddings": False}),
    ],
)
def test_hf_to_groundup_logits(family, kw, attn):
    hf = hf_model(family, attn, **kw)
    ours = ours_from_hf(hf)
    assert (ours.config.head_dim, ours.config.n_head * ours.config.head_dim) == (16, 64)
    x = tokens()
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)
    assert ref.abs().max() > 1.0  # randomized weights give non-trivial logits
    assert max_diff(got, ref) < ATOL


def test_hf_configs_are_read_as_their_family():
    q = gpt_config_from_hf(hf_config("qwen3").to_dict())
    assert (q.qk_norm, q.head_dim, q.activation, q.norm_unit_offset, q.bias) == (
        True, 16, "silu", False, False,
    )  # fmt: skip
    g = gpt_config_from_hf(hf_config("gemma"))  # a config object works too
    assert (g.norm_unit_offset, g.embedding_scale, g.activation, g.qk_norm) == (
        True, True, "gelu_tanh", False,
    )  # fmt: skip
    assert g.tie_embeddings and (g.norm_eps, g.rope_theta) == (1e-6, 500.0)
    # Fields a config.json leaves out mean what the family's transformers class says
    assert gpt_config_from_hf({"model_type": "gemma"}).tie_embeddings is True
    assert gpt_config_from_hf({"model_type": "gemma"}).head_dim == 256
    assert gpt_config_from_hf({"model_type": "qwen3"}).head_dim == 128
    # Gemma's legacy hidden_act "gelu" is the tanh form in transformers
    legacy = gpt_config_from_hf({**hf_config("gemma").to_dict(), "hidden_act": "gelu"})
    assert legacy.activation == "gelu_tanh"


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_greedy_generation_matches_hf(family):
    """Our cached generation against HF's generate: QK-norm and the scaled embedding with a
    KV cache, RoPE offsets of wide heads."""
    hf = hf_model(family)
    ours = ours_from_hf(hf)
    x = tokens(1, 5)
    ref = hf.generate(x, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
    assert torch.equal(ours.generate(x, 10, temperature=0), ref)


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_save_pretrained_folder_loads(tmp_path: Path, family: str):
    """The folder transformers writes (config.json + model.safetensors) through read_hf_dir."""
    hf = hf_model(family)
    hf.save_pretrained(tmp_path / "hf")
    ours, tokenizer = load_hf_gpt(tmp_path / "hf")
    assert tokenizer is None and read_hf_dir(tmp_path / "hf").architecture.startswith(
        {"qwen3": "Qwen3", "gemma": "Gemma"}[family]
    )
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL


# --------------------------------------------------------------------------- groundup -> HF


def to_hf_model(cfg: GPTConfig, ours: GPT):
    d = gpt_config_to_hf(cfg)
    config_cls, model_cls = HF_CLASSES[d["model_type"]]
    config = config_cls(**{k: v for k, v in d.items() if k != "model_type"}, **IDS)
    hf = model_cls._from_config(config, attn_implementation="eager").eval()
    hf.load_state_dict(state_dict_to_hf(ours, include_tied=True), strict=True)
    return hf


@pytest.mark.parametrize(
    "family, kw",
    [
        ("qwen3", {}),
        ("qwen3", {"tie_embeddings": True, "n_kv_head": 1, "rope_theta": 123.0}),
        ("gemma", {}),
        ("gemma", {"tie_embeddings": False, "n_kv_head": 4}),
    ],
)
def test_groundup_to_hf_logits(family, kw):
    cfg = ours_config(family, **kw)
    ours = randomize(GPT(cfg), seed=1).eval()
    hf = to_hf_model(cfg, ours)
    assert hf.config.model_type == family
    assert gpt_config_from_hf(hf.config.to_dict()) == cfg
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL
    back = state_dict_from_hf(state_dict_to_hf(ours), cfg)
    for key, t in ours.state_dict().items():
        assert torch.equal(back[key], t), key


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_export_hf_folder_loads_in_transformers(tmp_path: Path, family: str):
    """export_hf's folder (config.json, safetensors, tokenizer) with AutoModelForCausalLM."""
    cfg = ours_config(family, vocab_size=320)
    ours = randomize(GPT(cfg), seed=3).eval()
    tok = Tokenizer.train(None, kind="bytes")
    out = export_hf(ours, tmp_path / "out", tok)
    config = json.loads((out / "config.json").read_text())
    prefix = {"qwen3": "Qwen3", "gemma": "Gemma"}[family]
    assert (config["model_type"], config["architectures"]) == (family, [f"{prefix}ForCausalLM"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == f"{prefix}ForCausalLM"
    x = torch.tensor([list(b"add 3 and 4")])
    with torch.no_grad():
        assert max_diff(ours(x), hf(input_ids=x).logits) < ATOL


def test_llama_with_its_own_head_dim_is_plain_llama():
    """head_dim apart from n_embd/n_head and no other option: LlamaForCausalLM has it."""
    cfg = GPTConfig.from_name("llama-tiny", head_dim=16)
    assert gpt_config_to_hf(cfg)["model_type"] == "llama"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"recipe": "modern"}, "activation='relu2'"),
        ({"recipe": "modern", "activation": "silu", "logit_softcap": 15.0}, "logit_softcap=15.0"),
        ({"activation": "relu2"}, "activation='relu2'"),
        ({"logit_softcap": 30.0}, "logit_softcap=30.0"),
        ({"embedding_scale": True}, "norm_unit_offset=False"),  # Gemma needs all three
        ({"norm_unit_offset": True, "embedding_scale": True}, "activation='silu'"),
        ({**OURS["gemma"], "qk_norm": True}, "qk_norm=True"),
        ({"qk_norm": True, "bias": True}, "bias=True"),
        ({"qk_norm": True, "qkv_bias": True}, "qkv_bias=True"),
    ],
)
def test_export_refuses_what_no_family_computes(tmp_path: Path, overrides, field):
    cfg = GPTConfig.from_name("llama-tiny", **overrides)
    with pytest.raises(ConfigError, match=f"cannot export GPT option {field}.*Hugging Face"):
        gpt_config_to_hf(cfg)
    with pytest.raises(ConfigError, match=field.split("=")[0]):
        export_hf(GPT(cfg), tmp_path / "out")  # refused before anything is written
    assert not any(tmp_path.iterdir())


def test_gpt2_flavour_refuses_the_modern_options():
    for overrides, field in [
        ({"activation": "relu2"}, "activation"),
        ({"qk_norm": True}, "qk_norm"),
        ({"embedding_scale": True}, "embedding_scale"),
    ]:
        with pytest.raises(ConfigError, match=field):
            gpt_config_to_hf(GPTConfig.from_name("gpt2-tiny", **overrides))


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "family, changes, field",
    [
        ("qwen3", {"use_sliding_window": True}, "use_sliding_window"),
        ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ("qwen3", {"attention_bias": True}, "attention_bias"),
        (
            "qwen3",
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
            "rope_parameters.rope_type",
        ),
        ("qwen3", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ("qwen3", {"hidden_act": "gelu"}, "hidden_act"),
        ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gemma", {"attention_bias": True}, "attention_bias"),
        ("gemma", {"hidden_act": "relu"}, "hidden_act='relu'"),
        ("gemma", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_unsupported_hf_configs_name_the_field(family, changes, field):
    d = {**hf_config(family).to_dict(), **changes}
    with pytest.raises(ConfigError, match=f"field {field}"):
        gpt_config_from_hf(d)


@pytest.mark.parametrize("name, published", [("qwen3-0.6b", 596_049_920), ("gemma-2b", None)])
def test_presets_have_the_shape_of_the_released_models(name, published):
    """Our presets against transformers' models of the same config.json, on the meta device."""
    cfg = GPTConfig.from_name(name)
    d = gpt_config_to_hf(cfg)
    config_cls, model_cls = HF_CLASSES[d["model_type"]]
    with torch.device("meta"):
        ours = GPT(cfg)
        hf = model_cls(config_cls(**{k: v for k, v in d.items() if k != "model_type"}, **IDS))
    ours_shapes = {k: tuple(v.shape) for k, v in state_dict_to_hf(ours).items()}
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert ours_shapes == hf_shapes
    n = ours.num_params()
    assert n == sum(p.numel() for p in hf.parameters())
    if published is not None:
        assert n == published  # Qwen3-0.6B's model card: 0.6B, 0.44B without embeddings
    else:
        assert 2.50e9 < n < 2.51e9  # Gemma 2B: 2.51B


# ------------------------------------------------------------------ fine-tuning a Qwen3 import


def test_lora_on_a_qwen3_import_trains_and_exports_to_peft(tmp_path: Path):
    """A Qwen3 import takes LoRA on its Linears (q_norm/k_norm are norms, not targets), trains
    a step, and its adapter loads with peft onto the transformers base, giving our logits."""
    peft = pytest.importorskip("peft")
    from groundup.interop.peft_adapter import export_peft

    base = hf_model("qwen3", tie_word_embeddings=True)
    base.save_pretrained(tmp_path / "base")
    ours, _ = load_hf_gpt(tmp_path / "base")
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        apply_lora(ours, ["*.attn.q_norm"])
    names = apply_lora(ours, ["*.attn.qkv", "*.attn.proj", "*.mlp.down"], rank=4, alpha=8)
    assert len(names) == 6 and not any("norm" in n for n in names)
    ours.train()
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    x = tokens(2, 16)
    loss = torch.nn.functional.cross_entropy(ours(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    ours.eval()
    out = export_peft(ours, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.down_proj",
    ]  # fmt: skip
    hf_base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    with torch.no_grad():
        before = hf_base(x).logits
        tuned = peft.PeftModel.from_pretrained(hf_base, str(out)).eval()
        got, want = tuned(x).logits, ours(x)
    assert max_diff(got, want) < ATOL
    assert max_diff(got, before) > 1e-3  # the trained adapter changed the model


def test_lora_sft_run_on_a_qwen3_folder_exports_merged_and_peft(tmp_path: Path):
    """The production path: `groundup finetune` (LoRA SFT) from a Qwen3 Hugging Face folder,
    then `groundup export` as a merged Qwen3 folder and as a PEFT adapter for that base."""
    peft = pytest.importorskip("peft")
    from groundup.config import from_dict
    from groundup.jobs.export import run_export
    from groundup.jobs.finetune import FinetuneConfig, run_finetune
    from groundup.models.folders import load_model

    tok = Tokenizer.train(None, kind="bytes")
    export_hf(randomize(GPT(ours_config("qwen3", vocab_size=320)), seed=5), tmp_path / "hf", tok)
    rows = [{"prompt": f"add {a} and {a + 1}", "response": str(2 * a + 1)} for a in range(16)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(tmp_path / "lora"),
            "task": "sft",
            "method": "lora",
            "base": {"path": str(tmp_path / "hf")},
            "lora": {"targets": ["*.attn.qkv", "*.attn.proj"], "rank": 4, "alpha": 8},
            "data": {"train": str(train)},
            "optim": {"name": "adamw", "lr": 2e-2},
            "train": {"max_steps": 3, "batch_size": 8, "device": "cpu", "precision": "fp32"},
        },
    )
    run_finetune(None, config=cfg, verbose=0)
    merged = run_export(tmp_path / "lora", tmp_path / "merged", format="hf", verbose=0)
    adapter = run_export(tmp_path / "lora", tmp_path / "peft", format="peft", verbose=0)
    x = torch.tensor([list(b"add 3 and 4")])
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        before = base(input_ids=x).logits
        ours = load_model(tmp_path / "lora").model.eval()(x)
        tuned = peft.PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=x).logits
        hf_merged = transformers.AutoModelForCausalLM.from_pretrained(str(merged)).eval()
        assert type(hf_merged).__name__ == "Qwen3ForCausalLM"
        assert max_diff(hf_merged(input_ids=x).logits, ours) < ATOL
    assert max_diff(tuned, ours) < ATOL
    assert max_diff(tuned, before) > 1e-4  # the three steps moved the adapter


# --------------------------------------------------------------------------------------- GGUF

TEXT = "The list type is a mutable sequence. def add(a, b):\n    return a + b\n" * 20


def read_gguf(path: Path, gguf) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        tensors[t.name] = np.asarray(t.data, dtype=np.float32).reshape(shape)
    return fields, tensors


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_gguf_layout_of_qwen3_and_gemma(tmp_path: Path, family: str):
    """llama.cpp's qwen3/gemma rotate halves as we do (no q/k reordering), read heads from
    key_length, and gemma scales by its norm weights as they are (our 1 + w written out)."""
    gguf = pytest.importorskip("gguf")
    from groundup.interop.gguf_export import export_gguf

    bpe = Tokenizer.train([TEXT], kind="bpe", vocab_size=300)
    cfg = ours_config(family, vocab_size=320, tie_embeddings=True)
    model = randomize(GPT(cfg), seed=4).eval()
    path = export_gguf(model, tmp_path / "m.gguf", bpe, dtype="f32")
    fields, tensors = read_gguf(path, gguf)
    assert fields["general.architecture"] == family
    assert fields[f"{family}.attention.key_length"] == 16
    assert fields[f"{family}.attention.value_length"] == 16
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family)
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    for name in tensors:
        assert re.sub(r"^blk\.\d+\.", "blk.{bid}.", name.rsplit(".", 1)[0]) in known, name
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    qkv = model.blocks[1].attn.qkv.weight.detach()
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"], qkv[:64].numpy())
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"], qkv[64:96].numpy())
    offset = 1.0 if family == "gemma" else 0.0
    norm = model.blocks[0].norm2.weight.detach().numpy()
    np.testing.assert_allclose(tensors["blk.0.ffn_norm.weight"], norm + offset, rtol=0, atol=0)
    final = model.norm.weight.detach().numpy()
    np.testing.assert_allclose(tensors["output_norm.weight"], final + offset, rtol=0, atol=0)
    if family == "qwen3":
        q_norm = model.blocks[0].attn.q_norm.weight.detach().numpy()
        np.testing.assert_array_equal(tensors["blk.0.attn_q_norm.weight"], q_norm)


def test_gguf_refuses_what_llama_cpp_cannot_run(tmp_path: Path):
    pytest.importorskip("gguf")
    from groundup.interop.gguf_export import export_gguf

    bpe = Tokenizer.train([TEXT], kind="bpe", vocab_size=300)
    cases = [
        (ours_config("gemma", vocab_size=320, tie_embeddings=False), "tie_embeddings=False"),
        (GPTConfig.from_name("modern-tiny", vocab_size=320), "activation='relu2'.*GGUF"),
        (GPTConfig.from_name("llama-tiny", vocab_size=320, logit_softcap=20.0), "logit_softcap"),
    ]
    for cfg, fragment in cases:
        with pytest.raises(ConfigError, match=fragment):
            export_gguf(GPT(cfg), tmp_path / "m.gguf", bpe)
    assert not (tmp_path / "m.gguf").exists()
