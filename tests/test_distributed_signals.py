"""Several ranks on the CPU (gloo), the README's two remaining promises:

- Ctrl-C (SIGINT to the terminal's process group) or SIGTERM (to `groundup pretrain --nproc 2`
  alone, as `kill PID`, `timeout` or a container runtime send it): the ranks agree on a step,
  save one checkpoint together, and the command exits 130/143 with one line naming the
  resume command, no traceback. `--resume` on 2 ranks and on 1 gives the uninterrupted
  one-process losses (1e-5).
- Several nodes: two torchrun launchers (`--nnodes 2`, c10d rendezvous on a localhost port)
  stand in for two machines and give the one-process losses.

The interrupted runs sleep in each step (a test hook in the launcher script below, not in
the library) so the signal lands mid-run whatever the machine's speed; the reference and the
resumed runs do not sleep, and their losses do not depend on it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from groundup.checkpoint import find_latest
from groundup.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_distributed import LAUNCHER, assert_close, losses, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

STEPS = 40  # long enough that a signal after step 3 lands before the end (steps sleep)
SIGNAL_AFTER = 3
STEP_SLEEP = "0.05"  # seconds each step of an interrupted run sleeps
TIMEOUT = 90.0

# The rank script of the interrupted runs: skips the matmul peak measurement, sleeps in each
# step when SLOW_STEP is set, and makes `--nproc` start torchrun on this script (not on
# `-m groundup`) so the ranks get the same hooks. Everything else is the real CLI.
SLOW_LAUNCHER = (
    "import os, sys, time\n"
    "import groundup.train.hardware as h\n"
    "h.measured_peak_flops = lambda *a, **k: 1e12\n"
    "pause = float(os.environ.get('SLOW_STEP', '0'))\n"
    "if pause:\n"
    "    from groundup.train.trainer import Trainer\n"
    "    step = Trainer.train_step\n"
    "    def slow(self, micro):\n"
    "        time.sleep(pause)\n"
    "        return step(self, micro)\n"
    "    Trainer.train_step = slow\n"
    "import groundup.distributed as du\n"
    "command = du.torchrun_command\n"
    "def via_this_script(argv, nproc):\n"
    "    cmd = command(argv, nproc)\n"
    "    i = cmd.index('-m', 3)  # '-m groundup' after torchrun's own options\n"
    "    return [*cmd[:i], os.path.abspath(__file__), *cmd[i + 2 :]]\n"
    "du.torchrun_command = via_this_script\n"
    "from groundup.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def config(folder: Path, name: str) -> Path:
    """The DDP tiny config for STEPS steps, with no periodic checkpoint: the only checkpoint
    of an interrupted run is the one its signal made."""
    path = tiny_config(folder, f"{name}.yaml", name, "ddp")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["train"].update(max_steps=STEPS, checkpoint_every=None)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def start(cmd: list[str], **extra: str) -> subprocess.Popen:
    """A launcher in its own session, as a shell starts a foreground job."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun and its ranks run in sessions of their own, so
    killing the launcher's group does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """Clean-up after a failed test: SIGKILL the launcher and everything it started."""
    if proc.poll() is not None:
        return
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=30)


def train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record.get("event") == "train":
            steps.append(record["step"])
    return steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The uninterrupted one-process reference, then two interrupted 2-rank runs at once."""
    folder = tmp_path_factory.mktemp("signals")
    with pytest.MonkeyPatch.context() as mp:  # the logged MFU only: skip the measurement
        mp.setattr("groundup.train.hardware.measured_peak_flops", lambda *a, **k: 1e12)
        assert main(["pretrain", str(config(folder, "ref"))]) == 0
    launcher = folder / "slow_launch.py"
    launcher.write_text(SLOW_LAUNCHER, encoding="utf-8")
    (folder / "launch.py").write_text(LAUNCHER, encoding="utf-8")
    # SIGINT to the launcher's process group: what Ctrl-C in a terminal does. SIGTERM to the
    # launcher alone: what `kill PID`, `timeout` or a container runtime does.
    cases = {"sigint": (signal.SIGINT, True), "sigterm": (signal.SIGTERM, False)}
    procs: dict[str, subprocess.Popen] = {}
    out: dict = {"folder": folder, "ref": losses(folder / "ref")}
    try:
        for name in cases:
            cmd = [sys.executable, str(launcher), "pretrain", str(config(folder, name))]
            procs[name] = start([*cmd, "--nproc", "2"], SLOW_STEP=STEP_SLEEP)
        pending, deadline = dict(cases), time.monotonic() + TIMEOUT
        while pending:
            for name, (sig, group) in list(pending.items()):
                if max(train_steps(folder / name), default=0) >= SIGNAL_AFTER:
                    (os.killpg if group else os.kill)(procs[name].pid, sig)
                    del pending[name]
                else:
                    assert procs[name].poll() is None, procs[name].communicate()
            assert time.monotonic() < deadline, "no training steps logged in time"
            time.sleep(0.01)
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            out[name] = (proc.returncode, stderr)
    finally:
        for proc in procs.values():
            kill_tree(proc)
    return out


@pytest.mark.parametrize("name, code", [("sigint", 130), ("sigterm", 143)])
def test_a_signal_stops_the_ranks_at_one_step_with_one_checkpoint(setup, name, code) -> None:
    folder = setup["folder"]
    run = folder / name
    returncode, stderr = setup[name]
    assert returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]  # neither a rank's nor torchrun's
    found = re.search(r"interrupted at step (\d+)", stderr)
    assert found, stderr[-3000:]
    stop = int(found.group(1))
    assert SIGNAL_AFTER <= stop < STEPS
    step_dir = run / "checkpoints" / f"step-{stop:08d}"
    # every rank names the same step and the command that resumes
    for line in stderr.splitlines():
        if "interrupted at step" in line:
            assert line.endswith(
                f"interrupted at step {stop}; checkpoint saved in {step_dir}; "
                f"resume with: groundup pretrain --resume {run}"
            ), line
    # exactly one checkpoint, complete, for the stop step, and `latest` points to it
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", step_dir.name], names
    assert find_latest(run / "checkpoints") == step_dir
    assert json.loads((step_dir / "state.json").read_text())["step"] == stop
    assert (step_dir / "model.safetensors").is_file()
    # the steps before the stop were logged once each, with the one-process losses
    assert_close(losses(run), setup["ref"], range(1, stop + 1))
    assert not (run / "results.json").exists()  # stopped: no final results


def test_an_interrupted_run_resumes_on_two_ranks_and_on_one(setup) -> None:
    folder, ref = setup["folder"], setup["ref"]
    # the Ctrl-C run on 2 ranks (torchrun written out) while the SIGTERM run resumes here
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = start(
        [*cmd, str(folder / "launch.py"), "pretrain", str(folder / "sigint.yaml"), "--resume"]
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("groundup.train.hardware.measured_peak_flops", lambda *a, **k: 1e12)
            assert main(["pretrain", str(folder / "sigterm.yaml"), "--resume"]) == 0
        stdout, stderr = two.communicate(timeout=TIMEOUT)
        assert two.returncode == 0, stderr[-3000:]
    finally:
        kill_tree(two)
    for name in ("sigint", "sigterm"):
        assert_close(losses(folder / name), ref, range(1, STEPS + 1))
        assert json.loads((folder / name / "results.json").read_text())["steps"] == STEPS


def test_two_nodes_give_the_one_process_losses(setup) -> None:
    """`torchrun --nnodes 2 --nproc_per_node 1 --node_rank R --rdzv_backend c10d ...` twice on
    this machine: two nodes of one rank each."""
    folder = setup["folder"]
    config_file = config(folder, "nodes")
    endpoint, run_id = f"localhost:{free_port()}", uuid.uuid4().hex[:8]
    procs = []
    try:
        for node_rank in (0, 1):
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node_rank),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                endpoint,
                "--rdzv_id",
                run_id,
                str(folder / "launch.py"),
                "pretrain",
                str(config_file),
            ]
            procs.append(start(cmd))
        done = [(p.communicate(timeout=TIMEOUT)[1], p.returncode) for p in procs]
    finally:
        for proc in procs:
            kill_tree(proc)
    for stderr, returncode in done:
        assert returncode == 0, stderr[-3000:]
    assert_close(losses(folder / "nodes"), setup["ref"], range(1, STEPS + 1))
    results = json.loads((folder / "nodes" / "results.json").read_text())
    assert results["world_size"] == 2 and results["tokens"] == STEPS * 8 * 16
