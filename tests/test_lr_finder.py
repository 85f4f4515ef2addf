"""The LR range test: the curve, the suggestion, that it leaves the trainer as it found it
(a fit after it is the fit without it), that it uses the trainer's own step, the
`groundup lr-find` job in its own folder beside an untouched run, and 2 CPU ranks (gloo)
giving the curve and suggestion of one process on the same global batch.

Exactness checks run in float64, so they hold whatever the CPU or thread count.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import groundup as gu
from groundup.errors import ConfigError
from groundup.jobs.lr_find import run_lr_find
from groundup.train.lr_finder import LRFindResult, lr_find, suggest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
sys.path.insert(0, str(ROOT / "tests"))
from test_pretrain import write_config  # noqa: E402

# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def regression(seed: int = 0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 1, generator=g, dtype=torch.float64) + 0.5
    return x, y


def trainer(optimizer: str = "adam", grad_accum: int = 1, seed: int = 0) -> gu.Trainer:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return gu.Trainer(
        model,
        loss="mse",
        optimizer=optimizer,
        lr=1e-2,
        grad_accum=grad_accum,
        precision="fp64",
        device="cpu",
        verbose=0,
    )


# ---------------------------------------------------------------- the curve and suggestion
def test_curve_is_exponential_and_stops_at_divergence() -> None:
    x, y = regression()
    t = trainer("sgd")
    result = lr_find(t, gu.TensorBatches(x, y, batch_size=32), min_lr=1e-5, max_lr=100.0)
    ratios = np.diff(np.log(result.lrs))
    assert result.lrs[0] == pytest.approx(1e-5)
    assert np.allclose(ratios, math.log(100.0 / 1e-5) / 99)  # one geometric step each
    # plain SGD at lr 100 on this least-squares problem blows up long before step 100
    assert result.diverged and len(result.lrs) < 100
    assert len(result.losses) == len(result.smoothed) == len(result.lrs)
    best = int(np.nanargmin(result.smoothed))
    assert result.suggestion is not None
    assert result.suggestion_index <= best  # the steepest descent comes before the minimum
    assert result.override() == f"optim.lr={result.suggestion:.1e}"
    data = json.loads(json.dumps(result.to_json()))  # plain JSON, non-finite losses as null
    assert data["steps_taken"] == len(result.lrs) and data["suggestion"] == result.suggestion


def test_suggestion_is_the_steepest_descent_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 61))
    centre = 1e-3  # a curve falling fastest at 1e-3, lowest at 1e-1, then rising
    smoothed = [
        2.0 - math.tanh(3 * (math.log10(lr) - math.log10(centre))) + max(0.0, math.log10(lr) + 1)
        for lr in lrs
    ]
    assert suggest(lrs, smoothed) == pytest.approx(centre)
    assert suggest(lrs, sorted(smoothed)) is None  # a loss that only rises: no suggestion
    assert suggest(lrs[:2], smoothed[:2]) is None


def test_fit_after_lr_find_is_the_fit_without_it() -> None:
    """Weights, optimizer state and LR, RNG, data position and counters all come back."""
    x, y = regression()
    runs = []
    for with_finder in (True, False):
        t = trainer("adam")
        data = gu.TensorBatches(x, y, batch_size=32, seed=3)
        t.fit(data, epochs=1)  # the optimizer has state, the data an epoch behind it
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        step, lr = t.step, t.optimizer.param_groups[0]["lr"]
        if with_finder:
            result = lr_find(t, data, num_steps=30, max_lr=1.0)
            assert len(result.lrs) == 30
            assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())
            assert t.step == step and t.optimizer.param_groups[0]["lr"] == lr
            assert t.nan_policy == "stop" and t.skipped_steps == 0
        rng = torch.rand(3)
        history = t.fit(data, epochs=2)
        runs.append((rng, history.history["loss"], t.model.state_dict()))
    (rng_a, loss_a, w_a), (rng_b, loss_b, w_b) = runs
    assert torch.equal(rng_a, rng_b)
    assert np.allclose(loss_a, loss_b, rtol=0, atol=1e-12)
    assert all(torch.allclose(w_a[k], w_b[k], rtol=0, atol=1e-12) for k in w_b)


class CountingBatches:
    """A re-iterable of batches that counts what it served."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size, self.served = x, y, batch_size, 0

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self):
        for i in range(len(self)):
            self.served += 1
            lo = i * self.batch_size
            yield self.x[lo : lo + self.batch_size], self.y[lo : lo + self.batch_size]


def test_uses_the_trainers_grad_accum_and_runs_past_an_epoch() -> None:
    x, y = regression(n=64)
    t = trainer("sgd", grad_accum=3)
    data = CountingBatches(x, y, batch_size=8)  # 8 batches a pass: 24 steps need 9 passes
    result = lr_find(t, data, min_lr=1e-6, max_lr=1e-3, num_steps=24)
    assert len(result.lrs) == 24 and not result.diverged
    assert data.served >= 24 * 3  # three micro-batches per step, over several passes
    # one step of k micro-batches is the step of one batch of k*b: the first loss is the mean
    # over the first 24 samples under the initial weights
    t0 = trainer("sgd")
    with torch.no_grad():
        want = torch.mean((t0.model(x[:24]) - y[:24]) ** 2).item()
    assert result.losses[0] == pytest.approx(want, rel=1e-12)


def test_bad_settings_are_one_line_errors(tmp_path) -> None:
    t = trainer()
    x, y = regression(n=32)
    data = gu.TensorBatches(x, y, batch_size=8)
    for kwargs, match in [
        ({"min_lr": 1e-2, "max_lr": 1e-3}, "max_lr must be a number above min_lr"),
        ({"min_lr": 0.0}, "min_lr must be a number > 0"),
        ({"num_steps": 2}, "num_steps >= 5"),
        ({"smooth": 1.0}, r"smooth must be in \[0, 1\)"),
        ({"diverge_factor": 1.0}, "diverge_factor must be > 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            lr_find(t, data, **kwargs)
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="max_lr"):
        run_lr_find(CONFIGS / "digits-mlp.yaml", [f"run_dir={run_dir}"], min_lr=1.0, max_lr=0.1)
    assert not run_dir.exists()  # refused before any work


def test_plot_writes_a_png(tmp_path) -> None:
    result = LRFindResult(
        lrs=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
        losses=[2.0, 1.9, 1.2, 0.9, math.inf],
        smoothed=[2.0, 1.95, 1.6, 1.3, math.nan],
        suggestion=1e-2,
        diverged=True,
        min_lr=1e-4,
        max_lr=10.0,
        num_steps=6,
    )
    path = result.plot(tmp_path / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.to_json()["losses"][-1] is None


# ---------------------------------------------------------------- the job
def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "lr_find" not in p.parts and p.name != "lr_find.json"
    }


def test_job_runs_in_its_own_folder_and_keeps_the_run(tmp_path, capsys) -> None:
    run_dir = tmp_path / "digits"
    overrides = [f"run_dir={run_dir}", "train.epochs=2"]
    assert gu.cli.main(["train", str(CONFIGS / "digits-mlp.yaml"), *overrides]) == 0
    before = digest(run_dir)
    capsys.readouterr()
    result = run_lr_find(CONFIGS / "digits-mlp.yaml", overrides, num_steps=40, verbose=0)
    assert digest(run_dir) == before  # the run is untouched, byte for byte
    folder = run_dir / "lr_find"
    saved = json.loads((folder / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion and saved["steps_taken"] == len(result.lrs)
    assert json.loads((run_dir / "lr_find.json").read_text()) == saved  # for the run's report
    assert (folder / "lr_find.png").is_file()
    assert not (folder / "results.json").exists() and not (folder / "model").exists()
    # the run still resumes and extends as before: lr-find left nothing it would mistake
    assert (
        gu.cli.main(
            [
                "train",
                str(CONFIGS / "digits-mlp.yaml"),
                *overrides[:1],
                "train.epochs=3",
                "--resume",
            ]
        )
        == 0
    )
    # a second lr-find replaces the first; one that finds a real run there refuses it
    run_lr_find(CONFIGS / "digits-mlp.yaml", overrides, num_steps=20, verbose=1)
    assert "use optim.lr=" in capsys.readouterr().out or result.suggestion is None
    assert json.loads((folder / "lr_find.json").read_text())["num_steps"] == 20
    (folder / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a run"):
        run_lr_find(CONFIGS / "digits-mlp.yaml", overrides, num_steps=20, verbose=0)


def test_job_without_a_validation_split_still_runs_the_test(tmp_path) -> None:
    overrides = [f"run_dir={tmp_path / 'noval'}", "data.val_size=0", "early_stopping=null"]
    result = run_lr_find(CONFIGS / "digits-mlp.yaml", overrides, num_steps=10, verbose=0)
    assert len(result.lrs) == 10


# ---------------------------------------------------------------- several ranks
LAUNCHER = (
    "import sys, json\n"
    "import groundup.train.hardware as h\n"
    "h.measured_peak_flops = lambda *a, **k: 1e12\n"
    "from groundup.jobs.lr_find import run_lr_find\n"
    "run_lr_find(sys.argv[1], [], num_steps=int(sys.argv[2]), min_lr=1e-4, max_lr=1.0,"
    " verbose=0)\n"
)
RANK_STEPS = 16


def tiny_lm(folder: Path, name: str, strategy: str) -> Path:
    path = write_config(
        folder,
        name=name,
        run_dir=str(folder / name.removesuffix(".yaml")),
        data={"source": str(folder / "corpus.txt"), "shards_dir": str(folder / "shards")},
        model={"preset": "gpt2-tiny", "block_size": 16},
        train={
            "max_steps": 50,
            "batch_size": 8,
            "eval_every": 100,
            "log_every": 5,
            "precision": "fp64",
            "device": "cpu",
        },
    )
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["distributed"] = {"strategy": strategy}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_ranks_give_the_curve_and_suggestion_of_one_process(tmp_path) -> None:
    """Global batch 8 sequences: one process draws 8 windows a step, each of 2 ranks its 4 of
    the same draw (groundup.data.windows)."""
    one = run_lr_find(
        tiny_lm(tmp_path, "one.yaml", "auto"),
        num_steps=RANK_STEPS,
        min_lr=1e-4,
        max_lr=1.0,
        verbose=0,
    )
    config = tiny_lm(tmp_path, "two.yaml", "ddp")
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(launcher),
        str(config),
        str(RANK_STEPS),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "lr_find" / "lr_find.json").read_text())
    assert two["lrs"] == pytest.approx(one.lrs, rel=1e-15)
    assert np.allclose(two["losses"], one.losses, rtol=0, atol=1e-9)
    assert one.suggestion is not None and two["suggestion"] == one.suggestion
