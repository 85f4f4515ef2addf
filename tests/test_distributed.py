"""Several ranks on the CPU (torchrun, gloo): DDP and FSDP2 give the single-process losses, a
2-rank checkpoint resumes on 1 and on 2 ranks, and bad set-ups fail with one clear message.

The reference is one process with the same global batch (8 sequences): the 2-rank runs use 4
per rank, slices of the same seeded draw, so every step sees the same windows and the per-step
losses must agree to TOL. The runs are in float64 (precision fp64), so only the order of the
gradient sums differs and the gap is ~1e-15, whatever the CPU (AMD or Intel with AMX), the
thread count or the torch version; a real bug (a loss normalized by the local instead of the
global item count) moves the losses by far more than TOL, and a test below checks that it is
caught. FSDP2 runs on CPUs with gloo from torch 2.6 (checked on 2.13); GPUs and bf16 are in
benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from groundup import distributed as du
from groundup.cli import main
from groundup.errors import ConfigError
from groundup.jobs.pretrain import PretrainConfig, split_global_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_pretrain import write_config  # noqa: E402

# Each rank skips the matmul peak measurement (only the logged MFU uses it) to save seconds.
# GROUNDUP_TEST_LOCAL_COUNT=1 breaks the loss normalization on purpose (each rank divides by
# its own item count): the equivalence tests must catch that.
LAUNCHER = (
    "import os, sys\n"
    "import groundup.train.hardware as h\n"
    "h.measured_peak_flops = lambda *a, **k: 1e12\n"
    "if os.environ.get('GROUNDUP_TEST_LOCAL_COUNT'):\n"
    "    import torch\n"
    "    import groundup.distributed.data_parallel as dp\n"
    "    dp.global_item_count = lambda counts, device: torch.as_tensor(sum(counts)).to(device)\n"
    "from groundup.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
STEPS, SAVE_AT = 6, 3
# float64 runs: reduction-order noise is ~1e-15; a broken normalization is ~1e-2
TOL = 1e-9
FSDP_ON_CPU = du.fsdp_unsupported(torch.device("cpu")) is None


# tiny matmuls: threads only contend on a shared machine (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(folder: Path, name: str, run: str, strategy: str = "auto", **extra) -> Path:
    path = write_config(
        folder,
        name=name,
        run_dir=str(folder / run),
        data={"source": str(folder / "corpus.txt"), "shards_dir": str(folder / "shards")},
        model={"preset": "gpt2-tiny", "block_size": 16},
        train={
            "max_steps": STEPS,
            "batch_size": 8,
            "eval_every": 100,
            "eval_batches": 3,
            "log_every": 1,
            "checkpoint_every": SAVE_AT,
            "keep_last": None,
            "precision": "fp64",
            "device": "cpu",
        },
        sample={"prompt": "the", "max_new_tokens": 5},
    )
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["distributed"] = {"strategy": strategy, **extra}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def torchrun(folder: Path, nproc: int, args: list[str], **env: str) -> subprocess.CompletedProcess:
    launcher = folder / "launch.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(launcher),
        *args,
    ]
    env_all = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(cmd, cwd=ROOT, env=env_all, capture_output=True, text=True, timeout=120)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("event") == "train"}


def assert_close(
    got: dict[int, float], want: dict[int, float], steps: range, tol: float = TOL
) -> None:
    assert sorted(got) == list(steps), got
    for step in steps:
        assert abs(got[step] - want[step]) < tol, (step, got[step], want[step])


def rewind_to(run: Path, copy: Path, step: int) -> Path:
    """A copy of `run` as if it had been killed right after its step-`step` checkpoint."""
    shutil.copytree(run, copy)
    folder = copy / "checkpoints"
    for child in folder.iterdir():
        if child.name.startswith("step-") and int(child.name[5:]) > step:
            shutil.rmtree(child)
    (folder / "latest").write_text(f"step-{step:08d}\n")
    # the copy is another run_dir: make the saved configs say so (resume compares them)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**saved, "run_dir": str(copy)}))
    state_file = folder / f"step-{step:08d}" / "state.json"
    state = json.loads(state_file.read_text())
    state["config"]["run_dir"] = str(copy)
    state_file.write_text(json.dumps(state))
    return copy


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The single-process reference, then the same config on 2 ranks with DDP and FSDP2."""
    folder = tmp_path_factory.mktemp("dist")
    ref = tiny_config(folder, "ref.yaml", "ref")
    assert main(["pretrain", str(ref)]) == 0
    out = {"folder": folder, "ref": folder / "ref"}
    for strategy in ("ddp", "fsdp") if FSDP_ON_CPU else ("ddp",):
        config = tiny_config(folder, f"{strategy}.yaml", strategy, strategy)
        if strategy == "ddp":  # through the CLI's own launcher: groundup pretrain --nproc 2
            cmd = [sys.executable, "-m", "groundup", "pretrain", str(config), "--nproc", "2"]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            done = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
        else:
            done = torchrun(folder, 2, ["pretrain", str(config)])
        assert done.returncode == 0, done.stderr[-3000:]
        out[strategy] = folder / strategy
    return out


def test_ddp_two_ranks_match_one_process(runs) -> None:
    ref = losses(runs["ref"])
    assert_close(losses(runs["ddp"]), ref, range(1, STEPS + 1))
    results = json.loads((runs["ddp"] / "results.json").read_text())
    assert results["world_size"] == 2 and results["tokens"] == STEPS * 8 * 16
    ref_results = json.loads((runs["ref"] / "results.json").read_text())
    assert abs(results["final_val_loss"] - ref_results["final_val_loss"]) < TOL
    assert abs(results["final_val_bpb"] - ref_results["final_val_bpb"]) < TOL  # sharded sums
    # rank 0 wrote the usual safetensors checkpoint, and the gathered final model
    assert (runs["ddp"] / "checkpoints" / f"step-{SAVE_AT:08d}" / "model.safetensors").is_file()
    assert (runs["ddp"] / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(not FSDP_ON_CPU, reason="FSDP2 on CPUs needs torch >= 2.6")
def test_fsdp_two_ranks_match_one_process(runs) -> None:
    assert_close(losses(runs["fsdp"]), losses(runs["ref"]), range(1, STEPS + 1))
    step_dir = runs["fsdp"] / "checkpoints" / f"step-{SAVE_AT:08d}"
    assert (step_dir / "dcp" / ".metadata").is_file() and (step_dir / "state.json").is_file()
    # the final model is one full safetensors file, equal to the one-process model
    from safetensors.torch import load_file

    got = load_file(str(runs["fsdp"] / "model" / "model.safetensors"))
    want = load_file(str(runs["ref"] / "model" / "model.safetensors"))
    assert sorted(got) == sorted(want)
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=TOL) for k in want)


def test_ddp_checkpoint_resumes_on_one_rank(runs) -> None:
    folder = runs["folder"]
    rewind_to(runs["ddp"], folder / "ddp-1", SAVE_AT)
    config = tiny_config(folder, "ddp1.yaml", "ddp-1", "ddp")
    assert main(["pretrain", str(config), "--resume"]) == 0
    assert_close(losses(folder / "ddp-1"), losses(runs["ref"]), range(1, STEPS + 1))


@pytest.mark.skipif(not FSDP_ON_CPU, reason="FSDP2 on CPUs needs torch >= 2.6")
def test_fsdp_checkpoint_resumes_on_one_and_on_two_ranks(runs) -> None:
    folder, ref = runs["folder"], losses(runs["ref"])
    # one plain process reads the 2-rank sharded checkpoint (DCP reshards)
    rewind_to(runs["fsdp"], folder / "fsdp-1", SAVE_AT)
    config = tiny_config(folder, "fsdp1.yaml", "fsdp-1", "fsdp")
    assert main(["pretrain", str(config), "--resume"]) == 0
    assert_close(losses(folder / "fsdp-1"), ref, range(1, STEPS + 1))
    # and 2 ranks again, with activation checkpointing switched on for the rest of the run
    rewind_to(runs["fsdp"], folder / "fsdp-2", SAVE_AT)
    config = tiny_config(folder, "fsdp2.yaml", "fsdp-2", "fsdp", activation_checkpointing=True)
    done = torchrun(folder, 2, ["pretrain", str(config), "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close(losses(folder / "fsdp-2"), ref, range(1, STEPS + 1))


# ---------------------------------------------------------------- bad set-ups
def test_a_rank_failing_at_start_ends_the_job_naming_it(tmp_path) -> None:
    config = tiny_config(tmp_path, "c.yaml", "run", "ddp")
    start = time.monotonic()
    done = torchrun(tmp_path, 2, ["pretrain", str(config)], GROUNDUP_TEST_FAIL_RANK="1")
    assert done.returncode != 0
    assert "error: rank 1: " in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - start < 60  # the other rank does not wait for the timeout


def test_a_global_batch_the_ranks_cannot_divide_is_refused() -> None:
    cfg = PretrainConfig()
    cfg.train.batch_size, cfg.train.grad_accum = 6, 1
    assert split_global_batch(cfg, 16, 1) == (6, 1)
    assert split_global_batch(cfg, 16, 2) == (3, 1)
    assert split_global_batch(cfg, 16, 6) == (1, 1)
    with pytest.raises(ConfigError, match="6 sequences .* cannot be split over 4 ranks"):
        split_global_batch(cfg, 16, 4)
    cfg.train.batch_size, cfg.train.grad_accum = 4, 4  # 16 sequences: 2 ranks x 4 x 2 steps
    assert split_global_batch(cfg, 16, 2) == (4, 2)
    cfg.train.tokens_per_step = 3 * 4 * 16
    assert split_global_batch(cfg, 16, 1) == (4, 3)
    with pytest.raises(ConfigError, match="cannot be split over 2 ranks"):
        split_global_batch(cfg, 16, 2)


def test_a_strategy_the_backend_lacks_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    assert "needs torch >= 2.6" in du.fsdp_unsupported(torch.device("cpu"))
    assert du.fsdp_unsupported(torch.device("cuda")) is None
    # nccl on a machine without GPUs: refused before any process group starts
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="nccl needs CUDA GPUs"):
            du.init_distributed("nccl", "auto")
    with pytest.raises(ConfigError, match="unknown distributed.strategy 'zero3'"):
        du.resolve_strategy("zero3", torch.nn.Linear(2, 2), torch.device("cpu"))


def test_unknown_strategy_in_a_config_is_one_line(tmp_path, capsys) -> None:
    config = tiny_config(tmp_path, "c.yaml", "run", "fsdpp")
    assert main(["pretrain", str(config)]) == 2
    assert "did you mean 'fsdp'" in capsys.readouterr().err


def test_launch_command_and_nproc_checks(monkeypatch) -> None:
    cmd = du.torchrun_command(["pretrain", "c.yaml", "--nproc", "4", "optim.lr=1e-3"], 4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "groundup", "pretrain", "c.yaml", "optim.lr=1e-3"]
    with pytest.raises(ConfigError, match="--nproc must be an integer >= 1"):
        du.launch_torchrun(["pretrain", "c.yaml"], 0)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="drop it when launching with torchrun"):
        du.launch_torchrun(["pretrain", "c.yaml"], 2)


def test_activation_checkpointing_keeps_names_and_gradients() -> None:
    from groundup.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(flavour="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=16)
    torch.manual_seed(0)
    plain = GPT(cfg)
    ckpt = GPT(cfg)
    ckpt.load_state_dict(plain.state_dict())
    assert du.apply_activation_checkpointing(ckpt) == 2
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    for model in (plain, ckpt):
        model(idx).float().pow(2).mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(ConfigError, match="needs a model with transformer blocks"):
        du.apply_activation_checkpointing(torch.nn.Linear(2, 2))


def test_rank_slices_of_random_windows_are_one_draw() -> None:
    from groundup.data.windows import RandomWindows

    tokens = torch.arange(5000).numpy()
    one = RandomWindows(tokens, 16, 8, seed=3, world_size=1)
    parts = [RandomWindows(tokens, 16, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x = next(one)[0]
        assert torch.equal(torch.cat([next(p)[0] for p in parts]), x)
    # resume a 2-rank state on 1 rank of batch 8: the same global draw, no warning
    state = json.loads(json.dumps(parts[0].state_dict()))
    again = RandomWindows(tokens, 16, 8, seed=3, world_size=1)
    again.load_state_dict(state)
    assert torch.equal(next(again)[0], next(one)[0])
    with pytest.raises(ConfigError, match="rank must be in 0..world_size-1"):
        RandomWindows(tokens, 16, 4, rank=2, world_size=2)


def test_config_yaml_has_the_distributed_section(runs) -> None:
    saved = yaml.safe_load((runs["ddp"] / "config.yaml").read_text())
    assert saved["distributed"]["strategy"] == "ddp"
