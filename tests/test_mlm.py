"""BERT pretraining from scratch (`groundup pretrain` with `objective: mlm`): the masking
recipe, the loss against transformers' BertForMaskedLM and DataCollatorForLanguageModeling, the
job end to end (pretrain -> fine-tune -> export), its resume after a kill, and bad input."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml

from groundup.cli import main
from groundup.data.masking import (
    BERT_SPECIAL_TOKENS,
    IGNORE,
    MaskedWindows,
    MaskingConfig,
    TokenMasker,
)
from groundup.data.tokenizers import Tokenizer
from groundup.data.windows import RandomWindows
from groundup.errors import ConfigError, TokenizerError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_reliability import log_records  # noqa: E402
from test_run_lifecycle import run_cli, same_weights  # noqa: E402

WORDS = "the cat sat on the mat while a dog slept by the warm door and birds sang".split()


def corpus_text(n_docs: int = 60, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(50)) for _ in range(n_docs))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(
        [corpus_text()], kind="bpe", vocab_size=300, special_tokens=BERT_SPECIAL_TOKENS
    )


def big_batch(tokenizer: Tokenizer, rows: int = 256, length: int = 64) -> torch.Tensor:
    ids = tokenizer.encode_array(corpus_text(rows * length // 40, seed=1))
    ids = torch.as_tensor(ids[: rows * (length - 1)].reshape(rows, length - 1), dtype=torch.long)
    cls = torch.full((rows, 1), tokenizer.token_to_id("[CLS]"))
    return torch.cat([cls, ids], dim=1)


# ---------------------------------------------------------------- the masking recipe
def test_masking_statistics_on_a_large_batch(tokenizer) -> None:
    masker = TokenMasker(MaskingConfig(), tokenizer, tokenizer.vocab_size, seed=0)
    ids = big_batch(tokenizer)
    x, y = masker(ids, key=0)
    special = torch.isin(ids, torch.tensor([tokenizer.token_to_id(t) for t in BERT_SPECIAL_TOKENS]))
    chosen = y != IGNORE
    n = int(chosen.sum())
    assert int((chosen & special).sum()) == 0  # [CLS]/[SEP] are never masked
    assert abs(n / int((~special).sum()) - 0.15) < 0.01  # 16k ordinary tokens: +-1% is 7 sigma
    assert torch.equal(y[chosen], ids[chosen]) and torch.equal(x[~chosen], ids[~chosen])
    masked = int((x[chosen] == masker.mask_id).sum())
    kept = int((x[chosen] == ids[chosen]).sum())
    replaced = n - masked - kept
    assert abs(masked / n - 0.8) < 0.02 and abs(kept / n - 0.1) < 0.02
    # a random replacement may draw the token itself (kept then): a 1/vocab share of them
    assert abs(replaced / n - 0.1) < 0.02
    assert not torch.isin(
        x[chosen & (x != masker.mask_id)],
        torch.tensor([tokenizer.token_to_id(t) for t in BERT_SPECIAL_TOKENS if t != "[MASK]"]),
    ).any()


def test_masks_are_dynamic_seeded_and_the_same_on_any_number_of_ranks(tokenizer) -> None:
    masker = TokenMasker(MaskingConfig(), tokenizer, tokenizer.vocab_size, seed=3)
    ids = big_batch(tokenizer, rows=8)
    a, b = masker(ids, key=5), masker(ids, key=6)
    assert not torch.equal(a[1], b[1])  # a new mask each time a window is drawn
    assert torch.equal(masker(ids, key=5)[1], a[1])  # and the same one again for the same key
    halves = [
        masker(ids[r * 4 : (r + 1) * 4], 5, part=slice(r * 4, (r + 1) * 4), rows=8)
        for r in range(2)
    ]
    assert torch.equal(torch.cat([h[0] for h in halves]), a[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), a[1])
    stream = torch.as_tensor(tokenizer.encode_array(corpus_text(20)))
    one = MaskedWindows(RandomWindows(stream, 31, 8, seed=1), masker)
    two = [
        MaskedWindows(RandomWindows(stream, 31, 4, seed=1, rank=r, world_size=2), masker)
        for r in range(2)
    ]
    for _ in range(3):
        x, y = next(one)
        parts = [next(w) for w in two]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_whole_word_masking_chooses_every_piece_of_a_word() -> None:
    tok = Tokenizer.train(
        [corpus_text() + " catastrophically unbelievable " * 30],
        kind="bpe",
        vocab_size=280,
        special_tokens=BERT_SPECIAL_TOKENS,
    )
    masker = TokenMasker(MaskingConfig(whole_word=True, probability=0.3), tok, tok.vocab_size)
    ids = big_batch(tok, rows=64)
    x, y = masker(ids, key=1)
    starts = masker.starts_word[ids]
    starts[:, 1:] |= masker.ends_space[ids[:, :-1]]  # after a newline or tab: a new word
    chosen = y != IGNORE
    for row in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            after_special = masker.is_special[ids[row, t - 1]]
            if not starts[row, t] and not masker.is_special[ids[row, t]] and not after_special:
                assert chosen[row, t] == chosen[row, t - 1]  # a continuation follows its word


def test_whole_words_end_at_newlines_and_punctuation() -> None:
    text = ("bar.baz(1)\nprint(foo(2))\nReturn the value.\n" * 40) + corpus_text()
    tok = Tokenizer.train([text], kind="bpe", vocab_size=320, special_tokens=BERT_SPECIAL_TOKENS)
    masker = TokenMasker(MaskingConfig(whole_word=True), tok, tok.vocab_size)
    ids = torch.tensor(
        [[tok.token_to_id("[CLS]")] + tok.encode("bar.baz(1)\nprint(foo(2))\nReturn")]
    )
    starts = masker.starts_word[ids]
    starts[:, 1:] |= masker.ends_space[ids[:, :-1]]
    assert int(starts.sum()) >= 6  # not one 15-token "word": punctuation and lines split it


def test_bad_masking_settings_and_tokenizers_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"mlm.probability must be in \(0, 1\)"):
        MaskingConfig(probability=1.2)
    with pytest.raises(ConfigError, match="adding to at most 1"):
        MaskingConfig(mask_share=0.9, random_share=0.2)
    plain = Tokenizer.train([corpus_text()], kind="bpe", vocab_size=280)
    with pytest.raises(TokenizerError, match=r"lacks \[CLS\], \[SEP\], \[MASK\]"):
        TokenMasker(MaskingConfig(), plain, plain.vocab_size)


# ---------------------------------------------------------------- against transformers
def test_mlm_loss_equals_transformers_on_its_own_collator_and_our_masks(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    from groundup.interop.hf_export import export_hf
    from groundup.models.bert import BertConfig, BertForMaskedLM
    from groundup.train.losses import SparseCategoricalCrossentropy

    torch.manual_seed(0)
    cfg = BertConfig.from_name("bert-tiny", vocab_size=tokenizer.vocab_size, dropout=0.0)
    ours = BertForMaskedLM(cfg).eval()
    export_hf(ours, tmp_path / "hf", tokenizer=tokenizer)
    hf = transformers.BertForMaskedLM.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    loss = SparseCategoricalCrossentropy(from_logits=True)
    ids = big_batch(tokenizer, rows=16, length=32)
    collator = transformers.DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, seed=0)
    theirs = collator([{"input_ids": row.tolist()} for row in ids])
    masker = TokenMasker(MaskingConfig(), tokenizer, tokenizer.vocab_size, seed=0)
    with torch.no_grad():
        for x, y in ((theirs["input_ids"], theirs["labels"]), masker(ids, key=0)):
            want = hf(input_ids=x, labels=y).loss
            got = loss(ours(x), y)
            assert abs(float(got) - float(want)) < 1e-5


# ---------------------------------------------------------------- the job
def mlm_config(folder: Path, name: str, **train) -> Path:
    (folder / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    cfg = {
        "run_dir": str(folder / name),
        "seed": 0,
        "objective": "mlm",
        "data": {"source": str(folder / "corpus.txt"), "shards_dir": str(folder / "shards")},
        "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "model": {"preset": "bert-tiny", "block_size": 32},
        "optim": {"name": "adamw", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 3},
        "train": {
            "max_steps": 16,
            "batch_size": 8,
            "eval_every": 8,
            "eval_batches": 2,
            "log_every": 1,
            "checkpoint_every": 4,
            "keep_last": 1,
            "device": "cpu",
            "precision": "fp32",
            **train,
        },
        "sample": {"prompt": "the cat sat on the [MASK]"},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_pretrain_then_finetune_then_export_with_equal_logits(tmp_path, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    import groundup as gu

    assert main(["pretrain", str(mlm_config(tmp_path, "bert"))]) == 0
    out = capsys.readouterr().out
    assert "bert (masked LM)" in out and "val_accuracy" in out and "-> " in out
    results = json.loads((tmp_path / "bert" / "results.json").read_text())
    assert results["steps"] == 16 and 0.0 <= results["final_val_accuracy"] <= 1.0
    rows = ["text,label"] + [f'"the {w} sat",{w}' for w in ("cat", "dog", "bird") * 12]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ft = {
        "run_dir": str(tmp_path / "ft"),
        "task": "classification",
        "base": {"path": str(tmp_path / "bert")},
        "data": {"train": str(tmp_path / "labels.csv"), "max_len": 16},
        "train": {"max_steps": 3, "batch_size": 8, "device": "cpu", "precision": "fp32"},
    }
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(ft), encoding="utf-8")
    assert main(["finetune", str(tmp_path / "ft.yaml")]) == 0
    assert main(["export", str(tmp_path / "bert"), "--out", str(tmp_path / "mlm-hf")]) == 0
    assert main(["export", str(tmp_path / "ft"), "--out", str(tmp_path / "cls-hf")]) == 0
    for run, export, auto in (
        (tmp_path / "bert", "mlm-hf", transformers.AutoModelForMaskedLM),
        (tmp_path / "ft", "cls-hf", transformers.AutoModelForSequenceClassification),
    ):
        ours = gu.load_model(run)
        hf = auto.from_pretrained(str(tmp_path / export)).eval()
        x = torch.tensor(
            [[ours.tokenizer.token_to_id("[CLS]")] + ours.tokenizer.encode("the cat sat")]
        )
        with torch.no_grad():
            assert (ours.model(x) - hf(input_ids=x).logits).abs().max() < 1e-4
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "bert")]) == 2
    assert "masked language model" in capsys.readouterr().err


def test_mlm_pretraining_killed_mid_save_resumes_into_identical_logs(tmp_path) -> None:
    assert run_cli(["pretrain", str(mlm_config(tmp_path, "base"))]).returncode == 0
    config = mlm_config(tmp_path, "killed")
    assert run_cli(["pretrain", str(config)], kill="save-mid:2").returncode == -9
    resumed = run_cli(["pretrain", "--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert log_records(tmp_path / "killed") == log_records(tmp_path / "base")
    assert same_weights(tmp_path / "killed", tmp_path / "base")


BAD = {
    "mask probability 1.5": ("mlm.probability=1.5", "mlm.probability must be in (0, 1)"),
    "sequence above the positions": ("mlm.seq_len=64", "above the model's 32 positions"),
    "a GPT preset": ("model.preset=gpt2-tiny", "unknown BERT preset (objective mlm)"),
    "tokenizer without a mask token": ("tokenizer.path={tmp}/plain.json", "lacks [CLS], [SEP]"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_mlm_input_is_one_line_before_any_work(tmp_path, capsys, case) -> None:
    Tokenizer.train([corpus_text()], kind="bpe", vocab_size=280).save(tmp_path / "plain.json")
    config = mlm_config(tmp_path, "run")
    override, fragment = BAD[case]
    assert main(["pretrain", str(config), override.format(tmp=tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert "tokenizer:" not in out and not (tmp_path / "run").exists()


def test_the_shipped_bert_config_builds_its_model() -> None:
    from groundup.config import load_config
    from groundup.jobs.pretrain import PretrainConfig
    from groundup.jobs.pretrain_objectives import model_config

    cfg = load_config(PretrainConfig, ROOT / "configs" / "pretrain-bert-pydocs.yaml")
    bert = model_config(cfg.objective, cfg.model, cfg.tokenizer.vocab_size)
    assert cfg.objective == "mlm" and (bert.n_layer, bert.n_embd, bert.block_size) == (4, 256, 128)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_mlm_on_two_ranks_matches_one_process(tmp_path, strategy) -> None:
    from test_distributed import FSDP_ON_CPU, TOL, assert_close, losses, torchrun

    if strategy == "fsdp" and not FSDP_ON_CPU:
        pytest.skip("FSDP2 on CPUs needs torch >= 2.6")
    precise = {"precision": "fp64", "checkpoint_every": None}
    ref = mlm_config(tmp_path, "ref", **precise)
    assert run_cli(["pretrain", str(ref), "model.dropout=0.0"]).returncode == 0  # masks differ
    ddp = yaml.safe_load(mlm_config(tmp_path, "ddp", **precise).read_text())
    ddp["distributed"] = {"strategy": strategy}
    for cfg in (ddp,):
        cfg["model"]["dropout"] = 0.0
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(ddp), encoding="utf-8")
    done = torchrun(tmp_path, 2, ["pretrain", str(tmp_path / "ddp.yaml")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(losses(tmp_path / "ddp"), losses(tmp_path / "ref"), range(1, 17))
    want = json.loads((tmp_path / "ref" / "results.json").read_text())
    got = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert abs(got["final_val_loss"] - want["final_val_loss"]) < TOL
    assert got["final_val_accuracy"] == want["final_val_accuracy"]
    if strategy == "fsdp":  # the gathered model folder is the one-process model
        from safetensors.torch import load_file

        a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
        b = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
        assert sorted(a) == sorted(b)
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=TOL) for k in b)


def test_the_exported_tokenizer_gives_the_training_input_in_transformers(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from groundup.interop.hf_export import export_hf
    from groundup.jobs.pretrain_objectives import fill_mask
    from groundup.models.bert import BertConfig, BertForMaskedLM

    tok = Tokenizer.train(
        [corpus_text()], kind="bpe", vocab_size=300, special_tokens=BERT_SPECIAL_TOKENS
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig.from_name("bert-tiny", vocab_size=tok.vocab_size))
    export_hf(model, tmp_path / "hf", tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    theirs = hf_tok("the cat sat on the [MASK] mat")["input_ids"]
    ours = [
        tok.token_to_id("[CLS]"),
        *tok.encode("the cat sat on the[MASK] mat", allow_special=True),
        tok.token_to_id("[SEP]"),
    ]
    assert theirs == ours  # [CLS] ... [SEP], and [MASK] takes the space before it
    text = fill_mask(model, tok, "the cat sat on the [MASK] mat")
    assert text.startswith("the cat sat on the") and text.endswith(" mat")
