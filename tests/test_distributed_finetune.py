"""`groundup finetune` on several ranks (torchrun, gloo, CPU): the single-process losses.

The reference is one process with the same global batch (8 sequences); the 2-rank runs take 4
each, their parts of the same seeded permutation, so every step sees the same examples and the
per-step losses must agree to TOL (float64 runs: only the order of the gradient sums differs,
~1e-15 on any CPU; a loss normalized per rank instead of globally is caught, see below). The
training sets are ragged on purpose (30 and 36 examples): the last global batch is split 3 + 3
and 2 + 2 over the ranks, and the loss stays the one-process loss because it is normalized by
the global count of items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from groundup import distributed as du
from groundup.config import from_dict
from groundup.errors import ConfigError, DataError
from groundup.jobs.finetune import FinetuneConfig, _strategy, run_finetune, split_batch
from groundup.train.batches import TensorBatches

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_finetune  # noqa: E402
from test_distributed import TOL, assert_close, losses, torchrun  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
from test_finetune import labelled, sft_rows, write_csv, write_jsonl  # noqa: E402

base_gpt = test_finetune.base_gpt  # the tiny GPT base folder (a module fixture)
FSDP_ON_CPU = du.fsdp_unsupported(torch.device("cpu")) is None


def write_config(folder: Path, name: str, base: Path, **sections) -> Path:
    cfg = {
        "run_dir": str(folder / name),
        "base": {"path": str(base)},
        "optim": {"name": "adamw", "lr": 3e-3, "schedule": "constant"},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "log_every": 1,
            "device": "cpu",
            "precision": "fp64",
        },
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def epoch_values(run: Path, key: str) -> dict[int, float]:
    """`key` of each epoch record of metrics.jsonl (written by rank 0), by epoch."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["epoch"]: r[key] for r in rows if r.get("event") == "epoch"}


def one_process(config: Path) -> Path:
    cfg = yaml.safe_load(config.read_text())
    run_finetune(config, verbose=0)
    return Path(cfg["run_dir"])


@pytest.fixture(scope="module")
def sft(tmp_path_factory, base_gpt: Path) -> dict[str, Path]:
    """SFT in full: one process, then 2 ranks (DDP) through `groundup finetune --nproc 2`."""
    folder = tmp_path_factory.mktemp("sft")
    data = write_jsonl(folder / "train.jsonl", sft_rows(33))  # 30 train + 3 val examples
    sections = {"task": "sft", "data": {"train": str(data), "max_len": 64}}
    ref = one_process(write_config(folder, "ref", base_gpt, **sections))
    config = write_config(folder, "ddp", base_gpt, distributed={"strategy": "ddp"}, **sections)
    cmd = [sys.executable, "-m", "groundup", "finetune", str(config), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"ref": ref, "ddp": folder / "ddp"}


def test_a_loss_normalized_per_rank_is_caught(sft, tmp_path) -> None:
    """The power of the tests above: dividing each rank's loss by its own count of response
    tokens (the bug torchtune, torchtitan and transformers had) moves the losses past TOL."""
    config = yaml.safe_load((sft["ref"].parent / "ddp.yaml").read_text())
    config.update(run_dir=str(tmp_path / "broken"), train={**config["train"], "epochs": 1})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = torchrun(tmp_path, 2, ["finetune", str(path)], GROUNDUP_TEST_LOCAL_COUNT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    got, want = losses(tmp_path / "broken"), losses(sft["ref"])
    assert sorted(got) == [1, 2, 3, 4]
    assert max(abs(got[s] - want[s]) for s in got) > 1000 * TOL


def test_sft_on_two_ranks_matches_one_process(sft) -> None:
    ref, ddp = losses(sft["ref"]), losses(sft["ddp"])
    assert len(ref) == 8  # 2 epochs of 4 global batches (8, 8, 8 and the ragged 6)
    assert_close(ddp, ref, range(1, 9))
    got, want = results(sft["ddp"]), results(sft["ref"])
    assert got["world_size"] == 2 and got["steps"] == want["steps"] == 8
    assert abs(got["val_loss"] - want["val_loss"]) < TOL
    # rank 0 alone wrote the model folder, the same weights as the one-process run
    from safetensors.torch import load_file

    a = load_file(str(sft["ddp"] / "model" / "model.safetensors"))
    b = load_file(str(sft["ref"] / "model" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=TOL) for k in b)


def test_lora_classification_on_two_ranks_matches_one_process(tmp_path, base_gpt) -> None:
    train = write_csv(tmp_path / "train.csv", labelled(40))  # 36 train + 4 val
    test = write_csv(tmp_path / "test.csv", labelled(12, seed=1))
    sections = {
        "task": "classification",
        "method": "lora",
        "lora": {"dropout": 0.0},  # dropout masks differ between 1 and 2 processes
        "data": {"train": str(train), "test": str(test), "max_len": 16},
        "optim": {"lr": 2e-2},
    }
    ref = one_process(write_config(tmp_path, "ref", base_gpt, **sections))
    config = write_config(tmp_path, "ddp", base_gpt, **sections)  # strategy auto: DDP
    done = torchrun(tmp_path, 2, ["finetune", str(config)])
    assert done.returncode == 0, done.stderr[-3000:]
    # float64: ten steps of a large learning rate still agree to TOL (in float32 the gap was
    # 1.4e-5 with 16 threads on torch 2.11 and 6.4e-5 on an Intel CPU with AMX)
    assert_close(losses(tmp_path / "ddp"), losses(ref), range(1, 11))  # 2 x 5 steps
    got, want = results(tmp_path / "ddp"), results(ref)
    assert got["world_size"] == 2 and abs(got["val_loss"] - want["val_loss"]) < TOL
    assert got["test_accuracy"] == want["test_accuracy"]
    # the training accuracy of each epoch is over both ranks' examples (36), not rank 0's 18:
    # the metric states are combined at epoch end, so it is the one-process value
    got_acc, want_acc = epoch_values(tmp_path / "ddp", "accuracy"), epoch_values(ref, "accuracy")
    assert sorted(want_acc) == [0, 1] and sorted(got_acc) == [0, 1]
    for epoch, value in want_acc.items():
        assert abs(got_acc[epoch] - value) < 1e-9, (epoch, got_acc[epoch], value)
        assert abs(value * 36 - round(value * 36)) < 1e-9  # a count of 36 examples
    # LoRA folder (adapter + head) and the test report, written once by rank 0
    assert (tmp_path / "ddp" / "model" / "adapter.safetensors").is_file()
    assert (tmp_path / "ddp" / "confusion_matrix_test.csv").is_file()


# ---------------------------------------------------------------- batches and bad set-ups
def test_rank_parts_of_tensor_batches_are_one_permutation() -> None:
    x = torch.arange(23)
    one = TensorBatches(x, x * 2, batch_size=8, seed=5)
    parts = [TensorBatches(x, x * 2, batch_size=4, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(2):  # two epochs: the same permutation on each rank, a new one per epoch
        want = list(one)
        got = [list(p) for p in parts]
        assert len(got[0]) == len(got[1]) == len(want) == 3
        for i, batch in enumerate(want):
            assert torch.equal(torch.cat([g[i][0] for g in got]), batch[0])
            assert torch.equal(torch.cat([g[i][1] for g in got]), batch[1])
    assert [len(b[0]) for b in parts[0]] == [4, 4, 3]  # the ragged 7 split 3 + 4
    # resume: the state is unchanged for one process and counts global batches for N
    assert one.state_dict() == {"epoch": 2, "position": 0, "seed": 5}
    three = TensorBatches(torch.arange(10), batch_size=3, rank=2, world_size=3)
    assert len(three) == 1  # 10 = 9 + 1: a last batch of 1 cannot feed 3 ranks, dropped
    with pytest.raises(ConfigError, match="rank must be in 0..world_size-1"):
        TensorBatches(x, batch_size=4, rank=2, world_size=2)
    with pytest.raises(DataError, match="cannot give each of 4 ranks one"):
        TensorBatches(torch.arange(3), batch_size=1, world_size=4)


def test_a_global_batch_the_ranks_cannot_divide_is_refused(tmp_path, base_gpt) -> None:
    cfg = from_dict(FinetuneConfig, {"base": {"path": "x"}, "data": {"builtin": "stdlib-qa"}})
    cfg.train.batch_size, cfg.train.grad_accum = 6, 1
    assert split_batch(cfg.train, 1) == (6, 1)
    assert split_batch(cfg.train, 2) == (3, 1)
    cfg.train.batch_size, cfg.train.grad_accum = 4, 4  # 16 sequences: 2 ranks x 4 x 2 steps
    assert split_batch(cfg.train, 2) == (4, 2)
    with pytest.raises(ConfigError, match="16 sequences .* cannot be split over 3 ranks"):
        split_batch(cfg.train, 3)
    # LoRA shards nothing: auto means DDP, and FSDP2 is refused with the fix
    cfg.method = "lora"
    assert _strategy(cfg, 2) == "ddp"
    cfg.distributed.strategy = "fsdp"
    with pytest.raises(ConfigError, match="use distributed.strategy: ddp"):
        _strategy(cfg, 2)
    # and through torchrun: every rank stops with the one-line error before training
    data = write_jsonl(tmp_path / "train.jsonl", sft_rows(20))
    config = write_config(
        tmp_path, "odd", base_gpt, task="sft", data={"train": str(data)}, train={"batch_size": 3}
    )
    done = torchrun(tmp_path, 2, ["finetune", str(config)])
    assert done.returncode != 0
    assert "3 sequences (train.batch_size 3 x grad_accum 1) cannot be split" in done.stderr
    assert not (tmp_path / "odd").exists()  # refused before the run directory was made


@pytest.mark.skipif(not FSDP_ON_CPU, reason="FSDP2 on CPUs needs torch >= 2.6")
def test_sft_with_fsdp_matches_one_process_and_saves_full_weights(sft, tmp_path) -> None:
    config = yaml.safe_load((sft["ref"].parent / "ddp.yaml").read_text())
    config.update(run_dir=str(tmp_path / "fsdp"), distributed={"strategy": "fsdp"})
    config["sample"] = {"prompt": "add 1 and 2", "max_new_tokens": 3}
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = torchrun(tmp_path, 2, ["finetune", str(path)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(losses(tmp_path / "fsdp"), losses(sft["ref"]), range(1, 9))
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "fsdp" / "model" / "model.safetensors"))
    b = load_file(str(sft["ref"] / "model" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=TOL) for k in b)
    assert "--- sample ---" in done.stdout  # rank 0 generated from the gathered copy


def test_causal_lm_on_two_ranks_matches_one_process(tmp_path, base_gpt) -> None:
    text = tmp_path / "notes.txt"
    words = "the cat sat on the mat and the dog lay by the door".split()
    paragraphs = [" ".join(words[i % 7 :] + words[: i % 7]) for i in range(40)]
    text.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    sections = {
        "task": "causal_lm",
        "data": {"train": str(text), "max_len": 32},
        "train": {"max_steps": 4, "eval_batches": 2},
    }
    ref = one_process(write_config(tmp_path, "ref", base_gpt, **sections))
    config = write_config(tmp_path, "ddp", base_gpt, **sections)
    done = torchrun(tmp_path, 2, ["finetune", str(config)])  # rank 0 writes the token shards
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(losses(tmp_path / "ddp"), losses(ref), range(1, 5))
    got, want = results(tmp_path / "ddp"), results(ref)
    assert got["world_size"] == 2 and got["train_tokens"] == want["train_tokens"]
    assert abs(got["val_loss"] - want["val_loss"]) < TOL
