"""The run lifecycle (groundup.runs): nothing is written before every check has passed,
--overwrite never loses the old run to a bad config, and a SIGKILL at any point of a
checkpoint save resumes into the uninterrupted run's weights and every log record, leaving
no debris. Kills go through a subprocess (a real SIGKILL, placed exactly by the
GROUNDUP_TEST_KILL hook of groundup.checkpoint.folders)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from groundup.cli import _resume_hint, build_parser, main
from groundup.errors import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_finetune  # noqa: E402
from test_pretrain import write_config  # noqa: E402
from test_reliability import LAUNCH, log_records, train_config  # noqa: E402

base_gpt = test_finetune.base_gpt  # the tiny GPT base folder (a module fixture)

TINY = {
    "max_steps": 12,
    "batch_size": 4,
    "eval_every": 4,
    "eval_batches": 2,
    "log_every": 1,
    "checkpoint_every": 2,
    "keep_last": 1,
    "precision": "fp32",
    "device": "cpu",
}


def pretrain_config(folder: Path, name: str, **train) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder,
        f"{name}.yaml",
        run_dir=str(folder / name),
        model={"preset": "gpt2-tiny", "block_size": 16, "dropout": 0.1},
        train={**TINY, **train},
        sample={"prompt": "the", "max_new_tokens": 3},
    )


def tree(path: Path) -> dict[str, str]:
    """Every file under `path` with the hash of its bytes (what 'unchanged' means)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("GROUNDUP_TEST_KILL", None)
    if kill:
        env["GROUNDUP_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def debris(run: Path) -> list[str]:
    folder = run / "checkpoints"
    found = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    found += [
        p.name
        for p in folder.glob("step-*")
        if not ((p / "state.json").is_file() and (p / "model.safetensors").is_file())
    ]
    return found


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = (
        load_file(str(a / "model" / "model.safetensors")),
        load_file(str(b / "model" / "model.safetensors")),
    )
    return sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A finished pretrain run and a finished train run, to be kept safe."""
    folder = tmp_path_factory.mktemp("kept")
    config = pretrain_config(folder, "gpt")
    assert main(["pretrain", str(config)]) == 0
    train = train_config(folder, "mlp")
    assert main(["train", str(train), "train.epochs=1"]) == 0
    return {"folder": folder, "gpt": config, "mlp": train}


# ---------------------------------------------------------------- nothing lost, nothing written
@pytest.mark.parametrize(
    ("job", "override", "fragment"),
    [
        ("gpt", "model.n_head=5", "not divisible by n_head 5"),
        ("gpt", "optim.name=lion", "unknown optimizer 'lion'"),
        ("gpt", "train.keep_last=0", "train.keep_last must be an integer >= 1"),
        ("mlp", "layers=[{type: Dense2, units: 3}]", "Dense2"),
        ("mlp", "optim.name=lion", "unknown optimizer 'lion'"),
        ("mlp", "metrics=[accuracy]", None),  # valid: the control (the run is replaced)
    ],
)
def test_overwrite_with_a_bad_config_keeps_the_old_run(finished, capsys, job, override, fragment):
    command = "pretrain" if job == "gpt" else "train"
    folder = finished["folder"] / job
    before = tree(folder)
    code = main([command, str(finished[job]), override, "--overwrite"])
    err = capsys.readouterr().err.strip()
    if fragment is None:
        assert code == 0 and not list(finished["folder"].glob(f".{job}.replaced-*"))
        return
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert tree(folder) == before  # not moved, not changed: every byte as it was
    assert not list(finished["folder"].glob(f".{job}.*"))


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_early(finished, tmp_path):
    from groundup.runs import Run, plan_run

    folder = finished["folder"] / "gpt"
    before = tree(folder)
    plan = plan_run(folder, {"seed": 1}, overwrite=True)
    assert plan.mode == "replace" and tree(folder) == before  # planning touches nothing
    with pytest.raises(RuntimeError, match="boom"), Run.begin(plan):
        assert not (folder / "model").exists()  # moved aside while the new run starts
        raise RuntimeError("boom")
    assert tree(folder) == before


def test_lora_targets_that_match_nothing_keep_the_old_run(tmp_path, capsys, base_gpt):
    base = base_gpt
    data = test_finetune.write_csv(tmp_path / "train.csv", test_finetune.labelled(16))
    cfg = {
        "run_dir": str(tmp_path / "ft"),
        "task": "classification",
        "method": "lora",
        "base": {"path": str(base)},
        "data": {"train": str(data), "max_len": 16},
        "train": {"max_steps": 2, "batch_size": 8, "device": "cpu", "precision": "fp32"},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["finetune", str(path)]) == 0
    before = tree(tmp_path / "ft")
    capsys.readouterr()
    assert main(["finetune", str(path), "lora.targets=[nothing.here]", "--overwrite"]) == 2
    assert "nothing.here" in capsys.readouterr().err
    assert tree(tmp_path / "ft") == before


def test_a_refused_start_writes_nothing_and_the_fixed_command_runs(tmp_path, capsys):
    config = pretrain_config(tmp_path, "run", max_steps=6, eval_every=3)
    assert main(["pretrain", str(config), "model.n_head=5"]) == 2
    assert not (tmp_path / "run").exists()  # no config.yaml to refuse the fixed command with
    assert main(["pretrain", str(config)]) == 0


def _corpus(folder: Path) -> None:
    (folder / "short.txt").write_text("tiny text\n", encoding="utf-8")


PRETRAIN_BAD = {
    "unknown optimizer": ("optim.name=lion", "unknown optimizer 'lion'"),
    "betas of one": ("optim.betas=[0.9]", "two numbers"),
    "betas out of range": ("optim.betas=[0.9,1.5]", "in [0, 1)"),
    "weight decay -1": ("optim.weight_decay=-1", "weight_decay must be >= 0"),
    "lr inf": ("optim.lr=.inf", "optim.lr must be > 0 and finite"),
    "clip -1": ("train.clip_grad_norm=-1", "clip_grad_norm must be > 0"),
    "keep_last 0": ("train.keep_last=0", "keep_last must be an integer >= 1"),
    "eval_batches 0": ("train.eval_batches=0", "eval_batches must be an integer >= 1"),
    "vocab below the tokenizer's": (
        "model.vocab_size=100",
        "is below the tokenizer's 4096 tokens",
    ),
    "tokens_per_step not a multiple": ("train.tokens_per_step=100", "not a multiple"),
    "corpus shorter than a window": ("data.source={tmp}/short.txt", "shorter than one window"),
    "warmup longer than the run": ("optim.warmup_steps=500", "warmup"),
    "unknown device": ("train.device=tpu", "train.device must be"),
}
if not torch.cuda.is_available():
    PRETRAIN_BAD["cuda without a GPU"] = ("train.device=cuda", "no CUDA GPU is available")


@pytest.mark.parametrize("case", list(PRETRAIN_BAD), ids=list(PRETRAIN_BAD))
def test_pretrain_checks_everything_before_the_tokenizer(tmp_path, capsys, case):
    _corpus(tmp_path)
    config = pretrain_config(tmp_path, "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["tokenizer"] = {"kind": "bpe", "vocab_size": 4096}
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    override, fragment = PRETRAIN_BAD[case]
    assert main(["pretrain", str(config), override.format(tmp=tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert fragment in err and len(err.strip().splitlines()) == 1, err
    assert "tokenizer:" not in out  # no tokenizer trained, no corpus encoded
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- kills at every save point
KILLS = ["save-mid:3", "save-done:3", "latest-done:4", "prune-mid:2"]


@pytest.fixture(scope="module")
def pretrain_base(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kills")
    done = run_cli(["pretrain", str(pretrain_config(folder, "base"))])
    assert done.returncode == 0, done.stderr
    return folder, folder / "base"


@pytest.mark.parametrize("kill", KILLS)
def test_pretrain_killed_at_a_save_point_resumes_into_identical_logs(pretrain_base, kill):
    folder, base = pretrain_base
    name = kill.replace(":", "-")
    config = pretrain_config(folder, name)
    killed = run_cli(["pretrain", str(config)], kill=kill)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(["pretrain", "--resume", str(folder / name)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout
    run = folder / name
    assert log_records(run) == log_records(base)
    assert same_weights(run, base)
    assert debris(run) == []


def test_train_killed_after_an_epoch_end_checkpoint_keeps_epoch_labels(tmp_path):
    base_cfg = train_config(tmp_path, "base")
    assert run_cli(["train", str(base_cfg), "train.epochs=3"]).returncode == 0
    config = train_config(tmp_path, "kill")
    # the 2nd save is the end-of-epoch-1 checkpoint (one at step 10, then the epoch's eval)
    killed = run_cli(["train", str(config), "train.epochs=3"], kill="save-done:3")
    assert killed.returncode == -9
    resumed = run_cli(["train", "--resume", str(tmp_path / "kill")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = log_records(tmp_path / "kill"), log_records(tmp_path / "base")
    assert got == want
    assert [r["epoch"] for r in got if r["event"] == "epoch"] == [0, 1, 2]
    assert all("loss" in r for r in got if r["event"] == "epoch")
    history = (tmp_path / "kill" / "history.csv").read_text()
    assert history == (tmp_path / "base" / "history.csv").read_text()
    assert same_weights(tmp_path / "kill", tmp_path / "base")


# ---------------------------------------------------------------- resume from anywhere
def test_a_moved_run_resumes_and_may_run_longer(finished, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(finished["folder"] / "gpt", moved)
    assert main(["pretrain", "--resume", str(moved), "train.max_steps=14"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 12" in out
    assert json.loads((moved / "results.json").read_text())["steps"] == 14
    assert yaml.safe_load((moved / "config.yaml").read_text())["run_dir"] == str(moved)


def test_a_corrupted_newest_state_falls_back_to_the_one_before(tmp_path, capsys):
    from groundup.checkpoint import find_latest
    from groundup.runs import plan_run

    config = pretrain_config(tmp_path, "run", keep_last=None)
    assert main(["pretrain", str(config)]) == 0
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step-00000012" / "state.json").write_text('{"step": 12, "tru', encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_latest(folder).name == "step-00000010"
        plan = plan_run(
            tmp_path / "run",
            yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()),
            resume=True,
        )
    assert plan.step == 10 and any("corrupted" in str(w.message) for w in caught)


def test_resume_arguments_and_hints(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml there" in capsys.readouterr().err
    assert main(["pretrain"]) == 2
    assert (
        "needs a config file: groundup pretrain CONFIG (or --resume RUN_DIR)"
        in capsys.readouterr().err
    )
    parser = build_parser()
    exc = TrainingInterrupted(7, tmp_path / "r" / "checkpoints" / "step-00000007", 2)
    args = parser.parse_args(["finetune", "c.yaml", "optim.lr=1"])
    assert _resume_hint(args, exc) == f"resume with: groundup finetune --resume {tmp_path / 'r'}"
    args = parser.parse_args(["quickstart", "--run-dir", "q"])
    assert _resume_hint(args, exc) == "resume with: groundup quickstart --resume --run-dir q"


def test_model_commands_on_a_train_run_say_what_it_is(finished, capsys):
    run = finished["folder"] / "mlp"
    for argv in (["generate", str(run)], ["export", str(run), "--out", str(run) + "-hf"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds a Sequential model (a groundup train run)" in err, err


def test_early_stopping_patience_and_best_come_back_exactly(tmp_path):
    es_config = "early_stopping={patience: 2, monitor: val_accuracy, restore_best_weights: true}"
    base_cfg = train_config(tmp_path, "base")
    assert run_cli(["train", str(base_cfg), "train.epochs=4", es_config]).returncode == 0
    config = train_config(tmp_path, "kill")
    killed = run_cli(["train", str(config), "train.epochs=4", es_config], kill="save-done:4")
    assert killed.returncode == -9
    resumed = run_cli(["train", "--resume", str(tmp_path / "kill")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert log_records(tmp_path / "kill") == log_records(tmp_path / "base")
    assert same_weights(tmp_path / "kill", tmp_path / "base")  # the best weights restored
    state = json.loads((tmp_path / "kill" / "checkpoints" / "best" / "state.json").read_text())[
        "callbacks"
    ]
    assert set(state["EarlyStopping"]) == {"best", "wait", "best_step", "stopped_epoch"}


def test_callback_state_round_trips_through_the_trainer(tmp_path):
    import groundup as gu

    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)
    es = gu.callbacks.EarlyStopping(patience=5)
    trainer = gu.Trainer(torch.nn.Linear(3, 1), device="cpu", verbose=0, callbacks=[es])
    val = gu.TensorBatches(x, y, batch_size=16, shuffle=False)
    trainer.fit(gu.TensorBatches(x, y, batch_size=16), val, epochs=3)
    saved = trainer.state()["callbacks"]["EarlyStopping"]
    fresh = gu.callbacks.EarlyStopping(patience=5)
    fresh.load_state_dict(json.loads(json.dumps(saved)))
    assert (fresh.tracker.best, fresh.wait, fresh.best_step) == (
        es.tracker.best,
        es.wait,
        es.best_step,
    )


def test_one_load_model_for_every_kind_of_folder(finished):
    import groundup as gu

    mlp = gu.load_model(finished["folder"] / "mlp")  # a groundup train run: its Sequential
    assert isinstance(mlp, gu.Sequential)
    gpt = gu.load_model(finished["folder"] / "gpt")  # a pretrain run: model + tokenizer
    assert isinstance(gpt.model, gu.GPT) and gpt.tokenizer is not None and gpt.task == "causal_lm"


# ---------------------------------------------------------------- review: the edges
def test_overwrite_wins_over_resume_auto(finished):
    from groundup.runs import plan_run

    saved = yaml.safe_load((finished["folder"] / "gpt" / "config.yaml").read_text())
    plan = plan_run(finished["folder"] / "gpt", {**saved, "resume": "auto"}, overwrite=True)
    assert plan.mode == "replace"


def test_a_folder_with_checkpoints_but_no_config_starts_over_not_mixed(tmp_path):
    from groundup.checkpoint import save_step_checkpoint
    from groundup.runs import Run, plan_run

    save_step_checkpoint(tmp_path / "checkpoints", 30, torch.nn.Linear(2, 1), None, {"step": 30})
    plan = plan_run(tmp_path, {"seed": 0})
    assert plan.mode == "restart"
    with Run.begin(plan):
        pass
    assert (tmp_path / "checkpoints.previous" / "step-00000030").is_dir()
    assert not (tmp_path / "checkpoints").exists()


def test_only_input_errors_remove_a_new_folder(tmp_path):
    from groundup.errors import DataError
    from groundup.runs import Run, plan_run

    for name, error, kept in (
        ("data", DataError("a JSONL row without 'text'"), False),
        ("interrupted", TrainingInterrupted(3, None, 2), True),
    ):
        plan = plan_run(tmp_path / name, {"seed": 0})
        with pytest.raises(type(error)), Run.begin(plan):
            (tmp_path / name / "metrics.jsonl").write_text("{}\n")
            raise error
        assert (tmp_path / name).exists() == kept, name


def test_a_run_stopped_by_a_callback_stays_stopped_on_resume(tmp_path):
    import groundup as gu

    class StopAt4(gu.callbacks.Callback):
        def on_step_end(self, trainer, step):
            if step == 4:
                trainer.stop_training = True

    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)

    def trainer() -> gu.Trainer:
        return gu.Trainer(
            torch.nn.Linear(3, 1), device="cpu", verbose=0, run_dir=tmp_path, callbacks=[StopAt4()]
        )

    first = trainer()
    first.fit(gu.TensorBatches(x, y, batch_size=8), epochs=3, checkpoint_every=2)
    assert first.step == 4
    again = trainer()
    again.fit(gu.TensorBatches(x, y, batch_size=8), epochs=3, resume_from=tmp_path / "checkpoints")
    assert again.step == 4 and [r["step"] for r in log_records(tmp_path)] == [4]


def test_a_second_fit_after_a_mid_epoch_stop_starts_a_whole_epoch():
    import groundup as gu

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    trainer = gu.Trainer(
        torch.nn.Linear(3, 2),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        device="cpu",
        verbose=0,
    )
    trainer.fit(gu.TensorBatches(x, y, batch_size=8), max_steps=3)
    history = trainer.fit(gu.TensorBatches(x, y, batch_size=8), epochs=1)
    assert trainer.step == 8 and trainer.epoch == 2 and history.epoch[-1] == 1


def test_resume_run_dir_names_that_yaml_would_misread(finished, tmp_path, capsys):
    for name in ("2024-01-01", "run #2"):
        moved = tmp_path / name
        shutil.copytree(finished["folder"] / "gpt", moved)
        assert main(["pretrain", "--resume", str(moved), "train.max_steps=13"]) == 0
        assert yaml.safe_load((moved / "config.yaml").read_text())["run_dir"] == str(moved)
    assert "resumed from step 12" in capsys.readouterr().out


def test_loggers_are_not_part_of_what_a_resume_compares() -> None:
    """Where a run reports is not what it computes: a resume may add TensorBoard."""
    from groundup.runs.plan import comparable

    base = {"run_dir": "a", "train": {"max_steps": 10, "loggers": []}, "optim": {"lr": 1e-3}}
    logged = {**base, "train": {"max_steps": 10, "loggers": ["tensorboard"]}}
    assert comparable(base) == comparable(logged)
    assert comparable(base) != comparable({**base, "optim": {"lr": 2e-3}})
