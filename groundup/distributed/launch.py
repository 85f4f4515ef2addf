"""`--nproc N`: the command re-runs itself under torchrun (the only launcher)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from groundup.distributed.process_group import (
    launched,
)
from groundup.errors import ConfigError
from groundup.train.stop_signals import (
    HANGUP_SIGNALS,
    STOP_SIGNALS,
    install_stop_handlers,
    restore_handlers,
)


# ---------------------------------------------------------------- launching
def strip_nproc(argv: Sequence[str]) -> list[str]:
    """argv without `--nproc N` / `--nproc=N` (the re-run under torchrun must not relaunch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """The torchrun command line that runs `groundup ARGV` in `nproc` processes on this node."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "groundup",
        *strip_nproc(argv),
    ]


# torchrun answers SIGINT/SIGTERM by forwarding it to its ranks (which save and exit), then
# raises SignalException: a launcher traceback and exit code 1. This runs torchrun's own main
# and turns that into the shell's 128 + N, the code one interrupted process exits with.
_TORCHRUN_MAIN = (
    "import sys\n"
    "from torch.distributed.elastic.multiprocessing.api import SignalException\n"
    "from torch.distributed.run import main\n"
    "try:\n"
    "    main()\n"
    "except SignalException as exc:\n"
    "    sys.exit(128 + int(exc.sigval))\n"
)


def launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run `groundup ARGV` under torchrun with `nproc` processes on this machine; returns
    the exit code (torchrun's: non-zero when any rank failed, and its summary names the rank;
    130/143 after Ctrl-C/SIGTERM, once the ranks have saved).

    torchrun runs in its own session and this parent forwards the first SIGINT/SIGTERM/SIGHUP
    to it, whether the signal came from the terminal (Ctrl-C reaches the foreground group) or
    from `kill PID` or a scheduler: torchrun then gets it exactly once. Trap: a second copy
    would interrupt torchrun while it waits for the ranks' checkpoint.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be an integer >= 1, got {nproc!r}")
    if launched():
        raise ConfigError("--nproc starts torchrun itself; drop it when launching with torchrun")
    # More processes than GPUs is checked by each rank (init_distributed), which knows the
    # config's train.device: N CPU processes on a machine with fewer GPUs are fine.
    cmd = torchrun_command(argv, nproc)
    cmd[1:3] = ["-c", _TORCHRUN_MAIN]  # the same torchrun, without a traceback on a signal
    started: list[subprocess.Popen] = []
    signalled: list[int] = []  # the first signal, and whether torchrun got it
    sent: list[bool] = []

    def send(signum: int) -> None:
        sent.append(True)
        with contextlib.suppress(ProcessLookupError):
            started[0].send_signal(signum)

    def forward(signum: int, frame: Any) -> None:
        if signalled:  # a later signal: the ranks are saving already, let them finish
            return
        signalled.append(signum)
        if started:
            send(signum)

    previous = install_stop_handlers(forward, (*STOP_SIGNALS, *HANGUP_SIGNALS))
    try:
        started.append(subprocess.Popen(cmd, start_new_session=True))
        if signalled and not sent:  # it came while torchrun was starting
            send(signalled[0])
        code = started[0].wait()  # a handler that returns does not end the wait (PEP 475)
    finally:
        restore_handlers(previous)
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N
