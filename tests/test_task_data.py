"""The task-data builders: `groundup finetune` and `groundup evaluate` encode a file alike."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from groundup.config import from_dict
from groundup.data.task_data import Part, load_data, pad_id_of, text_windows
from groundup.data.tokenizers import Tokenizer
from groundup.errors import ConfigError
from groundup.jobs.evaluate import run_evaluate
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.models.folders import load_base, save_model_dir
from groundup.models.gpt import GPT, GPTConfig
from groundup.train.trainer import Trainer


@pytest.fixture(scope="module")
def base_gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny groundup GPT folder with a bytes tokenizer (it has an end-of-text token)."""
    root = tmp_path_factory.mktemp("base")
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(0)
    cfg = GPTConfig(
        n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=tok.vocab_size, dropout=0.0
    )
    save_model_dir(root / "model", GPT(cfg), tok)
    return root


def finetune_config(tmp_path: Path, base: Path, task: str, data: dict) -> FinetuneConfig:
    return from_dict(
        FinetuneConfig,
        {
            "run_dir": str(tmp_path / "run"),
            "task": task,
            "base": {"path": str(base)},
            "data": data,
            "train": {"max_steps": 1, "batch_size": 4, "device": "cpu", "precision": "fp32"},
        },
    )


def evaluated_batches(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> list:
    """The batches `run_evaluate` scores, caught on their way into Trainer.evaluate."""
    seen: list = []
    original = Trainer.evaluate

    def catch(self: Trainer, data: object, *a: object, **k: object) -> object:
        seen.append(data)
        return original(self, data, *a, **k)

    monkeypatch.setattr(Trainer, "evaluate", catch)
    run_evaluate(*args, device="cpu", verbose=0, **kwargs)
    assert len(seen) == 1
    return list(seen[0])


def joined(batches: object) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(batches)  # type: ignore[call-overload]
    return torch.cat([b[0] for b in rows]), torch.cat([b[1] for b in rows])


def test_sft_validation_and_evaluate_are_the_same_rows(
    tmp_path: Path, base_gpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"prompt": f"add {a} and {a}", "response": str(2 * a)} for a in range(6)]
    rows.append({"prompt": "x" * 90, "response": "cut"})  # longer than the block: truncated
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    for path, part in ((train, rows[:4]), (val, rows[4:])):
        path.write_text("\n".join(json.dumps(r) for r in part) + "\n", encoding="utf-8")
    cfg = finetune_config(tmp_path, base_gpt, "sft", {"train": str(train), "val": str(val)})
    data = load_data(cfg, load_base(base_gpt), tmp_path, 0, Part(4))
    evaluated = evaluated_batches(monkeypatch, base_gpt, val, batch_size=2, task="sft")
    for ours, theirs in zip(joined(data.val), joined(evaluated), strict=True):
        assert torch.equal(ours, theirs)
    assert (joined(data.val)[1] != -100).any()  # response tokens are scored


def test_classification_test_split_and_evaluate_are_the_same_rows(
    tmp_path: Path, base_gpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(path: Path, n: int) -> Path:
        lines = ["text,label"] + [
            f'"{"ab" * (i + 1)}",{"yes" if i % 2 else "no"}' for i in range(n)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    train, test = write(tmp_path / "train.csv", 12), write(tmp_path / "test.csv", 5)
    data_cfg = {"train": str(train), "test": str(test), "max_len": 8}  # "abab..." gets cut
    cfg = finetune_config(tmp_path, base_gpt, "classification", data_cfg)
    run_finetune(None, config=cfg, verbose=0)
    data = load_data(cfg, load_base(base_gpt), tmp_path, 0, Part(4))
    assert data.info["truncated"]["test"] > 0
    evaluated = evaluated_batches(monkeypatch, cfg.run_dir, test, batch_size=3)
    for ours, theirs in zip(joined(data.test), joined(evaluated), strict=True):
        assert torch.equal(ours, theirs)


def test_the_pad_id_rule_and_its_error() -> None:
    def tok(pad_id: int | None, eot_id: int | None) -> SimpleNamespace:
        return SimpleNamespace(pad_id=pad_id, eot_id=eot_id)

    assert pad_id_of(tok(3, 7)) == 3
    assert pad_id_of(tok(None, 7)) == 7
    assert pad_id_of(tok(None, None), required=False) is None
    with pytest.raises(ConfigError, match="no padding or end-of-text token"):
        pad_id_of(tok(None, None))


def test_text_windows_score_every_token_once(tmp_path: Path) -> None:
    tok = Tokenizer.train(None, kind="bytes")
    text = tmp_path / "notes.txt"
    text.write_text("abcdefghij", encoding="utf-8")
    windows, n = text_windows(text, tok, "text", block=64, batch_size=2)
    assert n == 11  # ten bytes and the end of text
    x, y = joined(windows)
    assert x.shape[1] == 10  # the block shrinks to the text: every target is scored
    assert y[0, -1].item() == tok.eot_id
