"""The `groundup` command: a real run of `train`, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from groundup.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_train_digits_config_end_to_end(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    code = main(["train", str(CONFIGS / "digits-mlp.yaml"), f"run_dir={run_dir}", "train.epochs=3"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"] > 0.85
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "history.csv",
        "preprocessing.json",
        "model/model.safetensors",
        "model/architecture.json",
        "checkpoints/best/model.safetensors",
    ):
        assert (run_dir / name).exists(), name
    saved = (run_dir / "config.yaml").read_text()
    assert "epochs: 3" in saved  # the resolved config, overrides applied
    # the same command again is harmless; a different config in the same folder is refused
    assert (
        main(["train", str(CONFIGS / "digits-mlp.yaml"), f"run_dir={run_dir}", "train.epochs=3"])
        == 0
    )
    capsys.readouterr()
    code = main(["train", str(CONFIGS / "digits-mlp.yaml"), f"run_dir={run_dir}", "train.epochs=4"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a different run" in err and "--overwrite" in err


def test_train_from_a_user_csv(tmp_path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["a,b,color,label"]
    for i in range(120):
        a, b = rng.normal(size=2)
        color = "red" if a > 0 else "blue"
        rows.append(
            f"{a:.3f},{'' if i % 17 == 0 else f'{b:.3f}'},{color},{'yes' if a + b > 0 else 'no'}"
        )
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"data: {{path: {csv_path}, target: label, val_size: 0.0}}\n"
        "layers:\n  - {type: Dense, units: 8, activation: relu}\n"
        "  - {type: Dense, units: 2, activation: softmax}\n"
        "train: {epochs: 20, batch_size: 16}\n"
        "optim: {lr: 0.01}\n"
    )
    assert main(["train", str(config)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_accuracy"] > 0.7


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    cfg = str(CONFIGS / "digits-mlp.yaml")
    err = _one_line_error(capsys, ["train", cfg, "optim.lrr=0.1"])
    assert "unknown config key 'optim.lrr' (did you mean 'lr'?)" in err
    err = _one_line_error(capsys, ["train", cfg, "train.epochs=ten"])
    assert "'train.epochs' must be an integer" in err
    err = _one_line_error(capsys, ["train", cfg, "optim.lr=-1"])
    assert "optim.lr must be > 0" in err
    err = _one_line_error(capsys, ["train", cfg, "loss=msee", f"run_dir={tmp_path / 'a'}"])
    assert "unknown loss 'msee'" in err and "valid names" in err
    err = _one_line_error(capsys, ["train", str(tmp_path / "missing.yaml")])
    assert "config file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [\n")
    err = _one_line_error(capsys, ["train", str(bad)])
    assert "malformed YAML" in err
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("x,y\n1,2\n3,4\n")
    err = _one_line_error(
        capsys,
        [
            "train",
            cfg,
            f"data.path={csv_path}",
            "data.dataset=null",
            "data.target=labl",
            f"run_dir={tmp_path / 'b'}",
        ],
    )
    assert "labl" in err and "did you mean 'x'" not in err


def test_console_script_and_module_entry_points() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "groundup", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("groundup ")
    out = subprocess.run(
        [sys.executable, "-m", "groundup", "train"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "config" in out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["quickstart", "--help"]])
def test_help(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "groundup" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_nproc_re_runs_the_given_command_under_torchrun(monkeypatch, command) -> None:
    from groundup import distributed

    seen = []
    monkeypatch.setattr(distributed, "launch_torchrun", lambda argv, n: seen.append((argv, n)) or 7)
    argv = [command, "c.yaml", "--nproc", "2", "optim.lr=1e-3"]
    assert main(argv) == 7  # torchrun's exit code is the command's
    assert seen == [(argv, 2)]  # the arguments given to main, not the test runner's sys.argv
