"""`groundup tokenizer`, `prepare`, `pretrain` and `generate`, called in-process through the CLI.

Tiny runs (a 2-layer, 32-wide GPT on a few hundred lines of repetitive English, CPU, fp32) that
check what a user relies on: the run directory's files, a loss that falls, exact resume, shard
reuse, reproducible greedy generation, and one-line errors (exit code 2) for bad input.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from groundup.checkpoint import find_latest
from groundup.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird"]
VERBS = ["sat on", "looked at", "ran to", "walked past", "jumped over"]
OBJECTS = ["the mat", "the red door", "a tall tree", "the river", "the garden wall"]


# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(n)]


def write_config(folder: Path, name: str = "pretrain.yaml", **changes) -> Path:
    """A tiny pretraining config in `folder` (corpus.txt written beside it); `changes` replace
    whole sections or top-level keys."""
    corpus = folder / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("\n".join(sentences(300)) + "\n", encoding="utf-8")
    cfg = {
        "run_dir": str(folder / "run"),
        "seed": 0,
        "data": {"source": str(corpus), "val_fraction": 0.1},
        "tokenizer": {"kind": "char"},
        "model": {"preset": "gpt2-tiny", "block_size": 32},
        "optim": {
            "name": "adamw",
            "lr": 3e-3,
            "weight_decay": 0.1,
            "schedule": "cosine",
            "warmup_steps": 5,
            "min_lr_ratio": 0.1,
        },
        "train": {
            "max_steps": 40,
            "batch_size": 8,
            "eval_every": 10,
            "eval_batches": 4,
            "log_every": 5,
            "precision": "fp32",
            "device": "cpu",
        },
        "sample": {"prompt": "the cat", "max_new_tokens": 20},
    }
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def error_line(capsys) -> str:
    """The last stderr line, which must be the one-line error (progress may come before)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert err[-1].startswith("error: "), err
    return err[-1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[int, Path]:
    """One 40-step run shared by the end-to-end and generate tests."""
    folder = tmp_path_factory.mktemp("e2e")
    config = write_config(folder)
    code = main(["pretrain", str(config)])
    return code, folder / "run"


# ---------------------------------------------------------------- end to end
def test_pretrain_end_to_end(trained_run) -> None:
    code, run = trained_run
    assert code == 0
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "tokenizer.json",
        "checkpoints/latest",
        "checkpoints/best/model.safetensors",
        "checkpoints/best/state.json",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "data/index.json",
    ):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 40

    rows = read_metrics(run)
    train = [r for r in rows if r["event"] == "train"]
    evals = [r for r in rows if r["event"] == "eval"]
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    for r in train:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
        assert math.isfinite(r["loss"]) and r["lr"] > 0
    for r in evals:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))

    vocab = json.loads((run / "model" / "config.json").read_text())["vocab_size"]
    assert 20 < vocab < 40  # the corpus's characters + specials, not the preset's 96
    # a repetitive corpus is learned quickly: well below the uniform guess ln(vocab)
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 40
    assert results["tokens"] == 40 * 8 * 32
    assert results["final_val_loss"] < math.log(vocab) - 0.5
    # char-level text with one byte per character (no specials in val): bpb = loss / ln 2
    assert results["final_val_bpb"] == pytest.approx(results["final_val_loss"] / math.log(2))
    assert all("val_bpb" in r for r in evals)
    assert results["tokens_per_s"] > 0 and results["mfu"] > 0
    # the saved model folder holds the final weights, the checkpoint the step-40 ones
    final = load_file(str(run / "model" / "model.safetensors"))
    newest = find_latest(run / "checkpoints")
    last = load_file(str(newest / "model.safetensors"))
    assert final.keys() == last.keys()
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert json.loads((newest / "state.json").read_text())["step"] == 40


# ---------------------------------------------------------------- generate
def test_generate_from_the_run_dir(trained_run, capsys) -> None:
    from groundup.models.folders import load_model_dir

    code, run = trained_run
    assert code == 0
    argv = ["--prompt", "the cat", "--max-new-tokens", "20", "--temperature", "0"]
    capsys.readouterr()
    assert main(["generate", str(run), *argv, "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(run / "model"), *argv, "--device", "cpu"]) == 0
    second = capsys.readouterr().out
    assert first.startswith("the cat")
    assert first == second  # greedy: the same text from the run and from its model/ folder

    # greedy decoding by hand with plain forward passes: the CLI's text must be the same
    model, tokenizer = load_model_dir(run)
    ids = tokenizer.encode("the cat")
    with torch.no_grad():
        for _ in range(20):
            next_id = int(model(torch.tensor([ids[-32:]]))[0, -1].argmax())
            if next_id == tokenizer.eot_id:
                break
            ids.append(next_id)
    assert first.rstrip("\n") == tokenizer.decode(ids)

    # sampling with a seed is reproducible too
    sample = ["--prompt", "the", "--max-new-tokens", "30", "--temperature", "1.0", "--seed", "3"]
    outs = []
    for _ in range(2):
        assert main(["generate", str(run), *sample, "--device", "cpu"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0].startswith("the") and outs[0] == outs[1]


# ---------------------------------------------------------------- tokenizer, prepare, reuse
def test_tokenizer_and_prepare_then_pretrain_reuses_the_shards(tmp_path, capsys) -> None:
    from groundup.data.tokenizers import Tokenizer

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(sentences(200, seed=1)) + "\n", encoding="utf-8")
    rows = [json.dumps({"text": s}) for s in sentences(60, seed=2)]
    (corpus / "b.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = write_config(
        tmp_path,
        data={"source": str(corpus)},
        tokenizer={"kind": "bpe", "vocab_size": 300},
    )
    run = tmp_path / "run"

    assert main(["tokenizer", "train", str(config)]) == 0
    assert Tokenizer.load(run / "tokenizer.json").vocab_size == 300
    assert main(["tokenizer", "train", str(config), "--out", str(tmp_path / "tok.json")]) == 0
    assert (tmp_path / "tok.json").read_text() == (run / "tokenizer.json").read_text()

    assert main(["prepare", str(config)]) == 0
    out = capsys.readouterr().out
    assert "token shards in" in out
    index = json.loads((run / "data" / "index.json").read_text())
    assert index["documents"]["total"] == 1 + 60  # the .txt file is one document
    assert index["vocab_size"] == 300
    assert (run / "data" / "tokenizer.json").is_file()

    code = main(
        ["pretrain", str(config), "train.max_steps=4", "train.eval_every=2", "optim.warmup_steps=0"]
    )
    assert code == 0
    assert "token shards: reusing" in capsys.readouterr().out
    # the BPE vocabulary (300) is padded to a multiple of 64 in the model
    assert json.loads((run / "model" / "config.json").read_text())["vocab_size"] == 320

    # sampling never picks a padding id (it has no text): even when those logits win
    from groundup.generate import SampleConfig, sample_text
    from groundup.models.folders import load_model_dir

    model, tokenizer = load_model_dir(run)
    boost = torch.zeros(320)
    boost[300:] = 100.0
    model.register_forward_hook(lambda module, args, logits: logits + boost)
    with torch.no_grad():
        assert int(model(torch.tensor([tokenizer.encode("the")]))[0, -1].argmax()) >= 300
    text = sample_text(
        model, tokenizer, SampleConfig(prompt="the", max_new_tokens=8, temperature=0)
    )
    assert isinstance(text, str) and len(text) > 0


def test_shards_of_another_corpus_are_not_reused(tmp_path, capsys) -> None:
    # a bytes tokenizer is the same for every corpus: the shards must also match the source
    other = tmp_path / "other.txt"
    other.write_text("\n".join(sentences(100, seed=5)).upper() + "\n", encoding="utf-8")
    shards = tmp_path / "shards"
    config = write_config(tmp_path, tokenizer={"kind": "bytes"})
    assert main(["prepare", str(config), f"data.shards_dir={shards}"]) == 0
    assert main(["prepare", str(config), f"data.shards_dir={shards}"]) == 0
    assert "reusing" in capsys.readouterr().out  # same corpus: reused
    assert main(["prepare", str(config), f"data.shards_dir={shards}", f"data.source={other}"]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert json.loads((shards / "index.json").read_text())["source"] == str(other.resolve())
    assert main(["prepare", str(config), f"data.shards_dir={shards}", "data.val_fraction=0.2"]) == 0
    assert "reusing" not in capsys.readouterr().out


# ---------------------------------------------------------------- resume
def interrupt_at(monkeypatch, step: int) -> None:
    """Make the trainer raise KeyboardInterrupt (Ctrl-C) once `step` steps are done."""
    from groundup.train.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, micro):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self, micro)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_resume_continues_exactly(tmp_path, monkeypatch, capsys) -> None:
    from groundup.train.hardware import measured_peak_flops

    # dropout makes the RNG state part of what must be restored; log every step
    changes = {
        "model": {"preset": "gpt2-tiny", "block_size": 32, "dropout": 0.1},
        "train": {"log_every": 1, "eval_every": 15, "checkpoint_every": 10},
    }
    config_a = write_config(tmp_path, "a.yaml", run_dir=str(tmp_path / "a"), **changes)
    config_b = write_config(tmp_path, "b.yaml", run_dir=str(tmp_path / "b"), **changes)
    # The first peak measurement of a process draws random matrices: it must not shift the
    # seeded stream, so run A pays for a fresh measurement and run B gets the cached one.
    measured_peak_flops.cache_clear()
    assert main(["pretrain", str(config_a)]) == 0

    with monkeypatch.context() as m:
        interrupt_at(m, 23)  # checkpoint_every=10: the newest checkpoint holds step 20
        assert main(["pretrain", str(config_b)]) == 130
    assert "interrupted" in capsys.readouterr().err
    newest = find_latest(tmp_path / "b" / "checkpoints")
    state = json.loads((newest / "state.json").read_text())
    assert state["step"] == 20
    assert [r["step"] for r in read_metrics(tmp_path / "b") if r["event"] == "train"][-1] == 23

    assert main(["pretrain", str(config_b), "--resume"]) == 0

    def curve(run: str) -> list[tuple]:
        return [
            (r["event"], r["step"], r.get("loss"), r.get("lr"), r.get("val_loss"))
            for r in read_metrics(tmp_path / run)
            if r["event"] in ("train", "eval")
        ]

    a, b = curve("a"), curve("b")
    # steps 21-23 of the interrupted run are not left in metrics.jsonl twice
    assert [r[1] for r in b if r[0] == "train"] == list(range(1, 41))
    assert [r[1] for r in b if r[0] == "eval"] == [15, 30, 40]
    assert b == a  # exact: CPU, fp32, same windows, same dropout masks, same schedule
    results_a = json.loads((tmp_path / "a" / "results.json").read_text())
    results_b = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("steps", "tokens", "final_val_loss"):
        assert results_b[key] == results_a[key], key
    weights_a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    weights_b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_keeps_the_best_checkpoint(tmp_path, monkeypatch) -> None:
    from groundup.train.trainer import Trainer

    config = write_config(tmp_path, train={"max_steps": 20, "eval_every": 5})
    with monkeypatch.context() as m:
        interrupt_at(m, 12)  # evals at 5 and 10 (the better one): best/ and last/ at step 10
        assert main(["pretrain", str(config)]) == 130
    best = tmp_path / "run" / "checkpoints" / "best" / "state.json"
    assert json.loads(best.read_text())["step"] == 10

    # after the resume every evaluation is worse than step 10's: best/ must stay at step 10
    evaluate = Trainer.evaluate

    def worse(self, data, max_batches=None, prefix=""):
        logs = evaluate(self, data, max_batches=max_batches, prefix=prefix)
        logs["val_loss"] += 10.0
        return logs

    monkeypatch.setattr(Trainer, "evaluate", worse)
    assert main(["pretrain", str(config), "--resume"]) == 0
    assert json.loads(best.read_text())["step"] == 10


# ---------------------------------------------------------------- bad input
BAD_INPUT = {
    "empty corpus": (["data.source={tmp}/empty.txt"], "is empty"),
    "missing corpus": (["data.source={tmp}/nope.txt"], "not found"),
    "model vocab too small": (["model.vocab_size=10"], "set model.vocab_size >="),
    "block_size over the val split": (["model.block_size=4096"], "val split"),
    "missing tokenizer": (["tokenizer.path=/nope/tokenizer.json"], "tokenizer file"),
    "tokens_per_step": (["train.tokens_per_step=1000"], "not a multiple of batch_size"),
    "unknown preset": (["model.preset=gpt2-tiyn"], "did you mean 'gpt2-tiny'"),
    "unknown model key": (["model.n_layers=2"], "did you mean 'n_layer'"),
    "resume without checkpoint": (["--resume"], "nothing to resume"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_pretrain_input_is_one_line_exit_2(case, tmp_path, capsys) -> None:
    (tmp_path / "empty.txt").write_text("  \n\n\t \n", encoding="utf-8")
    config = write_config(tmp_path)
    args, fragment = BAD_INPUT[case]
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["pretrain", str(config), *args]) == 2
    assert fragment in error_line(capsys)


def test_generate_without_a_model_is_one_line_exit_2(tmp_path, capsys) -> None:
    assert main(["generate", str(tmp_path), "--prompt", "x", "--device", "cpu"]) == 2
    assert "no config.json in" in error_line(capsys)


def test_a_run_dir_holding_another_run_is_refused(tmp_path, capsys) -> None:
    config = write_config(
        tmp_path, train={"max_steps": 2, "eval_every": 2}, optim={"warmup_steps": 0}
    )
    assert main(["pretrain", str(config)]) == 0
    capsys.readouterr()
    assert main(["pretrain", str(config), "train.max_steps=3"]) == 2
    line = error_line(capsys)
    assert "already holds a different run" in line and "--overwrite" in line
    # --resume with a changed config is refused as well, naming the field ...
    assert main(["pretrain", str(config), "optim.lr=0.5", "--resume"]) == 2
    line = error_line(capsys)
    assert "--resume needs the config the run started with" in line and "optim.lr" in line
    # ... but a longer run is the one change a resume takes: it goes on from step 2
    assert main(["pretrain", str(config), "train.max_steps=3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 2" in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 3
    assert "max_steps: 3" in (tmp_path / "run" / "config.yaml").read_text()
    assert main(["pretrain", str(config), "train.max_steps=4", "--overwrite"]) == 0


# ---------------------------------------------------------------- shipped configs
def test_shipped_configs_load_and_build_their_model() -> None:
    from groundup.config import load_config
    from groundup.jobs.pretrain import PretrainConfig
    from groundup.jobs.pretrain_objectives import model_config

    pydocs = load_config(PretrainConfig, CONFIGS / "pretrain-pydocs.yaml")
    assert pydocs.data.source == "stdlib-docs" and pydocs.tokenizer.kind == "bpe"
    assert pydocs.train.eval_tasks == ["stdlib-describe", "stdlib-cloze"]
    gpt = model_config("clm", pydocs.model, pydocs.tokenizer.vocab_size)
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd, gpt.block_size) == (4, 4, 256, 128)
    assert gpt.vocab_size == 4096 and gpt.dropout == 0.2

    # the corpus is not shipped: only the config and the model it describes
    shakespeare = load_config(PretrainConfig, CONFIGS / "pretrain-shakespeare-char.yaml")
    assert shakespeare.tokenizer.kind == "char"
    gpt = model_config("clm", shakespeare.model, 67)  # 65 characters + 2 special tokens
    assert (gpt.n_layer, gpt.n_head, gpt.n_embd, gpt.block_size) == (4, 4, 128, 64)
    assert gpt.vocab_size == 67 and gpt.bias is False
    assert shakespeare.train.batch_size == 12 and shakespeare.optim.lr == 1e-3
