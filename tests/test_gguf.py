"""GGUF export: every tensor, the metadata and the tokenizer read back with gguf's own reader
(`gguf.GGUFReader`) and compared with the model; q/k in llama.cpp's RoPE order; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError, DependencyError
from groundup.models.blocks import RotaryEmbedding, apply_rotary
from groundup.models.gpt import GPT, GPTConfig, GPTForSequenceClassification

gguf = pytest.importorskip("gguf")

from groundup.interop.gguf_export import (  # noqa: E402 (needs gguf)
    export_gguf,
    permute_rotary,
    portable_chat_template,
    unpermute_rotary,
)

TEXT = (
    "The list type is a mutable sequence. Lists may be constructed in several ways: "
    "using a pair of square brackets, a list comprehension, or the type constructor. "
    "def add(a, b):\n    return a + b\n"
) * 8

MODELS = {
    # tied embeddings, learned positions, every bias (GPT-2's exact form)
    "gpt2": dict(flavour="gpt2", n_layer=2, n_head=4, n_embd=64, block_size=32),
    # no biases: llama.cpp's gpt2 needs them, so zeros are written
    "gpt2-nobias": dict(flavour="gpt2", n_layer=1, n_head=2, n_embd=64, block_size=16, bias=False),
    # grouped-query attention, untied head
    "llama": dict(flavour="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=32),
    # biases on q/k/v (Qwen2's form): the q/k biases are permuted too
    "llama-qkv-bias": dict(
        flavour="llama", n_layer=1, n_head=2, n_embd=64, block_size=16, qkv_bias=True
    ),
}


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train([TEXT], kind="bpe", vocab_size=300)


def tiny(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=320, **MODELS[name])).eval()  # 320 > the tokenizer's ids
    with torch.no_grad():  # biases and norm weights away from their 0/1 init, so a mix-up shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def read(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (type name, float32 array in torch layout))."""
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        tensors[t.name] = (t.tensor_type.name, np.asarray(data, dtype=np.float32).reshape(shape))
    return fields, tensors


def ours_from_gguf(tensors: dict, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The GGUF tensors back in our names and layout (q/k permutation undone, qkv fused)."""
    top = {"token_embd": "tok_emb", "position_embd": "pos_emb", "output_norm": "norm"}
    top["output"] = "lm_head"
    layer = {"attn_norm": "norm1", "attn_qkv": "attn.qkv", "attn_output": "attn.proj"}
    layer.update(ffn_norm="norm2", ffn_gate="mlp.gate", ffn_up="mlp.up", ffn_down="mlp.down")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, (_, data) in tensors.items():
        t = torch.from_numpy(data.copy())
        module, kind = name.rsplit(".", 1)
        if not module.startswith("blk."):
            out[f"{top[module]}.{kind}"] = t
            continue
        _, i, part = module.split(".")
        if part in ("attn_q", "attn_k", "attn_v"):
            heads = {"attn_q": cfg.n_head, "attn_k": cfg.n_kv_head}
            qkv.setdefault((i, kind), {})[part] = (
                unpermute_rotary(t, heads[part]) if part in heads else t
            )
        else:
            out[f"blocks.{i}.{layer[part]}.{kind}"] = t
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
            [parts["attn_q"], parts["attn_k"], parts["attn_v"]]
        )
    return out


# ------------------------------------------------------------------------------ tensors


@pytest.mark.parametrize("name", list(MODELS))
def test_f32_and_f16_tensors_are_ours_exactly(tmp_path: Path, bpe: Tokenizer, name: str) -> None:
    model = tiny(name)
    sd = model.state_dict()
    cfg = model.config
    for dtype in ("f32", "f16"):
        _, tensors = read(export_gguf(model, tmp_path / f"{dtype}.gguf", bpe, dtype=dtype))
        got = ours_from_gguf(tensors, cfg)
        expected = dict(sd)
        if cfg.tie_embeddings:  # the tied head is not written: llama.cpp reads token_embd
            assert "output.weight" not in tensors
            expected.pop("lm_head.weight")
        else:
            assert "output.weight" in tensors
        extra = set(got) - set(expected)  # gpt2 without biases: zero biases, nothing else
        assert bool(extra) == (cfg.flavour == "gpt2" and not cfg.bias)
        assert all(k.endswith(".bias") and not got[k].any() for k in extra)
        assert set(expected) <= set(got)
        for key, want in expected.items():
            kind = tensors[_gguf_name(key, cfg)][0]
            if dtype == "f16" and want.dim() == 2 and not key.startswith("pos_emb"):
                assert kind == "F16", key
                want = want.half().float()
            else:  # 1-D tensors and the position table stay f32, as llama.cpp expects
                assert kind == "F32", key
            assert torch.equal(got[key], want), key


def _gguf_name(key: str, cfg: GPTConfig) -> str:
    """One GGUF tensor that holds (part of) our `key`, to look at its stored type."""
    top = {"tok_emb": "token_embd", "pos_emb": "position_embd", "norm": "output_norm"}
    top["lm_head"] = "output"
    module, kind = key.rsplit(".", 1)
    if not module.startswith("blocks."):
        return f"{top[module]}.{kind}"
    _, i, inner = module.split(".", 2)
    inner_map = {"norm1": "attn_norm", "attn.proj": "attn_output", "norm2": "ffn_norm"}
    inner_map.update({"mlp.gate": "ffn_gate", "mlp.up": "ffn_up", "mlp.down": "ffn_down"})
    inner_map["attn.qkv"] = "attn_qkv" if cfg.flavour == "gpt2" else "attn_q"
    return f"blk.{i}.{inner_map[inner]}.{kind}"


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_q8_0_is_within_its_quantization_error(tmp_path: Path, bpe: Tokenizer, name: str) -> None:
    model = tiny(name)
    cfg = model.config
    path = export_gguf(model, tmp_path / "q8.gguf", bpe, dtype="q8_0")
    fields, tensors = read(path)
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    got = ours_from_gguf(tensors, cfg)
    checked = 0
    for key, want in model.state_dict().items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue
        kind = tensors[_gguf_name(key, cfg)][0]
        if want.dim() < 2 or key.startswith("pos_emb"):
            assert kind == "F32" and torch.equal(got[key], want), key
            continue
        assert kind == "Q8_0", key
        # per block of 32 values along a row: |error| <= the block's scale, max|w| / 127
        blocks = want.reshape(-1, 32)
        bound = blocks.abs().amax(dim=1, keepdim=True) / 127
        err = (got[key].reshape(-1, 32) - blocks).abs()
        assert bool((err <= bound).all()), key
        assert err.max() > 0  # really quantized, not a float copy
        checked += 1
    assert checked >= 5
    smaller = export_gguf(model, tmp_path / "f16.gguf", bpe, dtype="f16")
    assert path.stat().st_size < 0.75 * smaller.stat().st_size


def test_q8_0_falls_back_to_f16_for_rows_it_cannot_block(tmp_path: Path, bpe: Tokenizer) -> None:
    """A row of 48 values is not a whole number of q8_0 blocks: llama.cpp's converter writes
    such matrices f16, and so do we (ffn_down's rows are the 4*48=192-wide ones: q8_0)."""
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(flavour="gpt2", n_layer=1, n_head=2, n_embd=48, block_size=8, vocab_size=320)
    )
    _, tensors = read(export_gguf(model, tmp_path / "m.gguf", bpe, dtype="q8_0"))
    assert tensors["blk.0.attn_qkv.weight"][0] == "F16"  # rows of n_embd = 48
    assert tensors["blk.0.ffn_down.weight"][0] == "Q8_0"  # rows of 192


def test_permutation_is_llama_cpps_rope_order() -> None:
    """Rotating q in our (rotate_half) order and then permuting equals permuting and then
    rotating neighbouring pairs, as llama.cpp's llama does: the model computes the same."""
    n_head, head_dim, positions = 3, 8, 5
    q = torch.randn(positions, n_head * head_dim, dtype=torch.float64)
    rope = RotaryEmbedding(head_dim, positions, theta=10000.0)
    cos, sin = (t.to(torch.float64) for t in rope(0, positions))  # (T, hs)
    ours = apply_rotary(q.reshape(positions, n_head, head_dim).transpose(0, 1), cos, sin)
    ours = ours.transpose(0, 1).reshape(positions, -1)  # (T, nh*hs)
    permuted_after = permute_rotary(ours.T, n_head).T

    x = permute_rotary(q.T, n_head).T.reshape(positions, n_head, head_dim // 2, 2)
    inv = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angle = torch.arange(positions, dtype=torch.float64)[:, None] * inv  # (T, hs/2)
    c, s = angle.cos()[:, None, :], angle.sin()[:, None, :]
    pairs = torch.stack(
        (x[..., 0] * c - x[..., 1] * s, x[..., 0] * s + x[..., 1] * c), dim=-1
    )  # llama.cpp's "normal" RoPE on (x0, x1), (x2, x3), ...
    assert torch.allclose(pairs.reshape(positions, -1), permuted_after, atol=1e-12)
    # and on rows: row 2j of a head is our row j, row 2j+1 our row j + head_dim/2
    w = torch.arange(n_head * head_dim, dtype=torch.float64)[:, None]
    p = permute_rotary(w, n_head)[:, 0]
    assert p[:head_dim].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert torch.equal(unpermute_rotary(permute_rotary(w, n_head), n_head), w)


def test_tensor_names_are_those_llama_cpp_knows(tmp_path: Path, bpe: Tokenizer) -> None:
    for name, arch in (("gpt2", gguf.MODEL_ARCH.GPT2), ("llama", gguf.MODEL_ARCH.LLAMA)):
        _, tensors = read(export_gguf(tiny(name), tmp_path / f"{name}.gguf", bpe))
        known = set()
        for kind in gguf.MODEL_TENSORS[arch]:
            pattern = gguf.TENSOR_NAMES[kind]
            known.update(pattern.format(bid=i) for i in range(2))
        assert {n.rsplit(".", 1)[0] for n in tensors} <= known


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_metadata_and_tokenizer(tmp_path: Path, bpe: Tokenizer, name: str) -> None:
    model = tiny(name)
    cfg = model.config
    fields, _ = read(export_gguf(model, tmp_path / "m.gguf", bpe, name="tiny-model"))
    arch = cfg.flavour
    assert fields["general.architecture"] == arch
    assert fields["general.name"] == "tiny-model"
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert fields[f"{arch}.context_length"] == cfg.block_size
    assert fields[f"{arch}.embedding_length"] == cfg.n_embd
    assert fields[f"{arch}.feed_forward_length"] == cfg.intermediate_size
    assert fields[f"{arch}.block_count"] == cfg.n_layer
    assert fields[f"{arch}.attention.head_count"] == cfg.n_head
    assert fields[f"{arch}.attention.head_count_kv"] == cfg.n_kv_head
    if arch == "llama":
        assert fields["llama.rope.freq_base"] == pytest.approx(cfg.rope_theta)
        assert fields["llama.rope.dimension_count"] == cfg.head_dim
        assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.norm_eps)
    else:
        assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg.norm_eps)

    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == cfg.vocab_size  # llama.cpp's n_vocab: the table's rows
    assert tokens[: bpe.vocab_size] == [bpe.id_to_token(i) for i in range(bpe.vocab_size)]
    assert len(set(tokens)) == len(tokens)
    specials = {bpe.token_to_id(t) for t in bpe.special_tokens}
    for i, kind in enumerate(types):
        want = gguf.TokenType.CONTROL if i in specials else gguf.TokenType.NORMAL
        want = gguf.TokenType.UNUSED if i >= bpe.vocab_size else want
        assert kind == want, (i, tokens[i])
    merges = json.loads(bpe.to_json())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    assert fields["tokenizer.ggml.eos_token_id"] == bpe.eot_id
    assert fields["tokenizer.ggml.bos_token_id"] == bpe.eot_id  # no BOS token: end-of-text
    assert fields["tokenizer.ggml.padding_token_id"] == bpe.pad_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert "tokenizer.chat_template" not in fields


def test_gguf_vocabulary_alone_encodes_as_our_tokenizer(tmp_path: Path, bpe: Tokenizer) -> None:
    """A byte-level BPE built from nothing but the file's tokens and merges (what llama.cpp
    has) gives our ids on new text."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    fields, _ = read(export_gguf(tiny("gpt2"), tmp_path / "m.gguf", bpe))
    tokens = fields["tokenizer.ggml.tokens"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"]]
    hf = HFTokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    text = "A list comprehension, or square brackets: def sub(a, b): return a - b  \n\tok é"
    assert hf.encode(text).ids == bpe.encode(text)


def test_sft_run_exports_merged_with_its_chat_template(tmp_path: Path, bpe: Tokenizer) -> None:
    from groundup.config import from_dict
    from groundup.jobs.export import run_export
    from groundup.jobs.finetune import FinetuneConfig, run_finetune
    from groundup.models.folders import load_model, save_model_dir

    torch.manual_seed(0)
    base = tmp_path / "base"
    llama = GPT(GPTConfig(vocab_size=320, **{**MODELS["llama"], "block_size": 128}))
    save_model_dir(base / "model", llama, bpe)
    rows = [{"prompt": f"add {a} and {a + 1}", "response": str(2 * a + 1)} for a in range(12)]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    cfg = from_dict(
        FinetuneConfig,
        {
            "run_dir": str(tmp_path / "run"),
            "task": "sft",
            "method": "lora",
            "base": {"path": str(base)},
            "lora": {"targets": ["*.attn.qkv", "*.mlp.down"], "rank": 4},
            "data": {"train": str(train), "template": "plain"},
            "optim": {"name": "adamw", "lr": 1e-2},
            "train": {"max_steps": 2, "batch_size": 4, "device": "cpu", "precision": "fp32"},
        },
    )
    run_finetune(None, config=cfg, verbose=0)
    out = run_export(cfg.run_dir, tmp_path / "sft.gguf", format="gguf", dtype="f32", verbose=0)
    fields, tensors = read(out)
    tm = load_model(cfg.run_dir)
    from groundup.finetune.lora import merge_lora

    merged = merge_lora(tm.model).state_dict()
    got = ours_from_gguf(tensors, tm.model.config)
    base_sd = load_model(base).model.state_dict()
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], base_sd["blocks.0.attn.qkv.weight"])
    for key, want in merged.items():
        assert torch.equal(got[key], want), key
    template = fields["tokenizer.chat_template"]
    assert "### Response:" in template and "eos_token" in template
    assert "endgeneration" not in template and "{% generation" not in template
    assert fields["general.name"] == "run"


def test_portable_template_renders_the_same_text() -> None:
    import jinja2

    src = (
        "{% for m in messages %}\n{{- m['role'] + ': ' -}}\n"
        "{% if m['role'] == 'assistant' %}\n{% generation %}{{ m['content'] }}{% endgeneration %}\n"
        "{% else %}\n{{- m['content'] -}}\n{% endif %}\n{{- '|' -}}\n{% endfor %}\n"
    )
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    portable = portable_chat_template(src)
    assert "endgeneration" not in portable and "{% generation" not in portable
    assert env.from_string(portable).render(messages=messages) == "user: hi|assistant: yo|"
    # deleting the tags instead would leak the newline that trim_blocks took after the block
    deleted = src.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert env.from_string(deleted).render(messages=messages) == "user: hi|assistant: yo\n|"


# ---------------------------------------------------------------------------- bad input


def test_tokenizers_llama_cpp_cannot_load_are_refused(tmp_path: Path) -> None:
    model = tiny("gpt2")
    char = Tokenizer.train([TEXT], kind="char")
    byte = Tokenizer.train(None, kind="bytes")
    for tok, word in ((char, "char tokenizer"), (byte, "bytes tokenizer")):
        with pytest.raises(ConfigError, match=word + ".*byte-level BPE"):
            export_gguf(model, tmp_path / "m.gguf", tok)
    with pytest.raises(ConfigError, match="has none"):
        export_gguf(model, tmp_path / "m.gguf", None)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_models_gguf_cannot_hold_are_refused(tmp_path: Path, bpe: Tokenizer) -> None:
    from groundup.models.bert import Bert, BertConfig

    cfg = GPTConfig(vocab_size=320, **MODELS["gpt2"])
    with pytest.raises(ConfigError, match="GPT language models.*GPTForSequenceClassification"):
        export_gguf(GPTForSequenceClassification(cfg, 3), tmp_path / "m.gguf", bpe)
    bert = Bert(BertConfig(vocab_size=320, n_layer=1, n_head=2, n_embd=32, block_size=16))
    with pytest.raises(ConfigError, match="--format hf"):
        export_gguf(bert, tmp_path / "m.gguf", bpe)
    with pytest.raises(ConfigError, match="q8_0"):
        export_gguf(tiny("gpt2"), tmp_path / "m.gguf", bpe, dtype="q4_0")
    assert list(tmp_path.iterdir()) == []


def test_target_checks_and_atomic_write(
    tmp_path: Path, bpe: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("gpt2")
    with pytest.raises(ConfigError, match="is a folder"):
        export_gguf(model, tmp_path, bpe)
    other = tmp_path / "notes.gguf"
    other.write_text("my notes")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        export_gguf(model, other, bpe)
    assert other.read_text() == "my notes"
    export_gguf(model, other, bpe, overwrite=True)  # replaced when asked
    first = other.read_bytes()
    export_gguf(tiny("gpt2", seed=1), other, bpe)  # a previous export is replaced as it is
    assert other.read_bytes() != first and other.read_bytes()[:4] == b"GGUF"

    def fail(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    before = other.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(model, other, bpe)
    assert other.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf"]  # no temporary left


def test_missing_gguf_package_names_the_extra(
    tmp_path: Path, bpe: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(DependencyError, match=r"groundup\[gguf\]"):
        export_gguf(tiny("gpt2"), tmp_path / "m.gguf", bpe)


def test_export_job_refuses_bad_options_before_loading(tmp_path: Path) -> None:
    from groundup.jobs.export import run_export

    missing = tmp_path / "no-such-run"  # never read: the options are checked first
    with pytest.raises(ConfigError, match="q8_0"):
        run_export(missing, tmp_path / "m.gguf", format="gguf", dtype="q4")
    with pytest.raises(ConfigError, match="--format gguf only"):
        run_export(missing, tmp_path / "out", format="hf", dtype="f16")
    with pytest.raises(ConfigError, match="hf, gguf, peft"):
        run_export(missing, tmp_path / "out", format="onnx")


def test_llama_cpp_logits_match_ours(tmp_path: Path, bpe: Tokenizer) -> None:
    """With llama.cpp's own Python binding installed (llama-cpp-python, not a dependency): it
    tokenizes as we do and computes our logits. Weights are scaled up so that attention is
    sharp: q/k rows in the wrong RoPE order then change the logits by about their own size."""
    llama_cpp = pytest.importorskip("llama_cpp")
    text = "The list type is a sequence"
    ids = bpe.encode(text)[:12]
    for name in MODELS:
        model = tiny(name)  # gpt2: GPT-2's tanh GELU, the one llama.cpp computes
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(5)
        path = export_gguf(model, tmp_path / f"{name}.gguf", bpe, dtype="f32")
        llm = llama_cpp.Llama(str(path), n_ctx=16, logits_all=True, verbose=False, n_threads=1)
        try:
            assert llm.tokenize(text.encode(), add_bos=False, special=False)[:12] == ids
            llm.eval(ids)
            got = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
        finally:
            llm.close()
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0]
        scale = float(want.abs().max())
        assert math.isfinite(scale) and scale > 1
        assert float((got - want).abs().max()) < 1e-2 * scale, name
